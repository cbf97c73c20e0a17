"""`python -m messenger.bench [--quick] ...`: see messenger.bench.runner."""

import sys

from messenger.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
