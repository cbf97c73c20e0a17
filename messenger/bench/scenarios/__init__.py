"""The scenarios of the benchmark; each returns a JSON-ready dict of its figures.

harness holds what they share (the plan, the Bench, held-poll loops); each other
module is one scenario. SCENARIOS is their canonical order: idle runs first, while its
users still share no conversation.
"""

from collections.abc import Callable
from typing import Any

from messenger.bench.scenarios.catchup import run_catchup
from messenger.bench.scenarios.fanout import run_fanout
from messenger.bench.scenarios.harness import Bench
from messenger.bench.scenarios.history import run_history
from messenger.bench.scenarios.idle import run_idle
from messenger.bench.scenarios.send import run_send
from messenger.bench.scenarios.wake import run_wake

SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "idle": run_idle,
    "wake": run_wake,
    "send": run_send,
    "fanout": run_fanout,
    "catchup": run_catchup,
    "history": run_history,
}
