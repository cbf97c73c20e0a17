"""`python -m messenger` → the messenger command."""

from messenger.cli import main

raise SystemExit(main())
