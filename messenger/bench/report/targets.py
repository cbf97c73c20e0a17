"""Each figure of a bench result beside its target (the issue's, for a 2-core machine).

evaluate() reads the keys each scenario writes (messenger.bench.scenarios) and those
of stats.distribution; it is a pure function, so a saved JSON can be judged again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SCENARIO_ORDER = ("idle", "wake", "send", "fanout", "catchup", "history")

# µs of gunicorn worker CPU per poll answered (its re-poll included): the cost
# that bounds wake latency and fan-out time on a 2-core machine (issue #13).
DELIVERY_CPU_US_MAX = 300

# kind of a row: "timing" targets are reported (MISS fails only with --strict);
# "check" rows are correctness (errors, lost or unverified messages) and fail the run.
TIMING = "timing"
CHECK = "check"
INFO = "info"


@dataclass(frozen=True)
class Row:
    """One figure beside its target."""

    scenario: str
    metric: str
    value: float | None
    unit: str
    target: str = ""
    passed: bool | None = None  # None: nothing to compare with
    kind: str = INFO

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return ""
        return "PASS" if self.passed else ("FAIL" if self.kind == CHECK else "MISS")


def _at_most(
    scenario: str,
    metric: str,
    value: float | None,
    unit: str,
    limit: float,
    kind: str = TIMING,
) -> Row:
    passed = value is not None and value <= limit
    return Row(
        scenario,
        metric,
        value,
        unit,
        f"≤ {number(limit)} {unit}".strip(),
        passed,
        kind,
    )


def _at_least(
    scenario: str, metric: str, value: float | None, unit: str, limit: float
) -> Row:
    passed = value is not None and value >= limit
    return Row(
        scenario,
        metric,
        value,
        unit,
        f"≥ {number(limit)} {unit}".strip(),
        passed,
        TIMING,
    )


def _zero(scenario: str, metric: str, value: float | None) -> Row:
    """A count that must be zero; no verdict when the figure is absent."""
    return Row(
        scenario, metric, value, "", "= 0", None if value is None else value == 0, CHECK
    )


def _info(scenario: str, metric: str, value: float | None, unit: str) -> Row:
    return Row(scenario, metric, value, unit)


# A table cell holds this much of an error; the JSON and the HTML have all of it.
ERROR_CELL_CHARS = 70


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ERROR_CELL_CHARS else line[: ERROR_CELL_CHARS - 1] + "…"


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _idle_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    levels = r.get("levels", [])
    for i, level in enumerate(levels):
        n = level["polls"]
        rows.append(
            _zero("idle", f"errors opening {n:,} polls", level["errors_opening"])
        )
        rows.append(
            _zero(
                "idle",
                f"errors holding {n:,} polls (1 worker)",
                level["errors_holding"],
            )
        )
        per_poll = _get(level, "rss_per_poll_kb")
        cpu = _get(level, "server_cpu_pct")
        if i == len(levels) - 1:
            rows.append(
                _at_most(
                    "idle", f"server RSS per held poll at {n:,}", per_poll, "KB", 24
                )
            )
            rows.append(
                _at_most("idle", f"server CPU holding {n:,} polls", cpu, "%", 3)
            )
        else:
            rows.append(
                _info("idle", f"server RSS per held poll at {n:,}", per_poll, "KB")
            )
            rows.append(_info("idle", f"server CPU holding {n:,} polls", cpu, "%"))
    return rows


def _wake_rows(r: dict[str, Any]) -> list[Row]:
    lat = r.get("latency_ms", {})
    return [
        _at_most("wake", "send → poll answer p50", lat.get("p50"), "ms", 3),
        _info("wake", "send → poll answer p90", lat.get("p90"), "ms"),
        _at_most("wake", "send → poll answer p99", lat.get("p99"), "ms", 10),
        _info("wake", "send → poll answer max", lat.get("max"), "ms"),
        _info("wake", "messages sent per second", r.get("achieved_rate_per_sec"), "/s"),
        _info(
            "wake",
            "worker CPU per delivery, its send included",
            r.get("worker_cpu_us_per_delivery"),
            "µs",
        ),
        _zero("wake", "messages not delivered", r.get("lost")),
        _zero("wake", "errors opening polls", _get(r, "settling", "errors_opening")),
        _zero(
            "wake",
            "send and poll errors",
            (r.get("send_errors") or 0) + (r.get("poll_errors") or 0),
        ),
    ]


def _send_rows(r: dict[str, Any]) -> list[Row]:
    lat = r.get("latency_ms", {})
    verify = r.get("verify", {})
    extra = verify.get("seq_extra", 0) - verify.get("seq_extra_allowed", 0)
    return [
        _at_least(
            "send",
            f"durable messages/s ({r.get('senders')} senders)",
            r.get("durable_per_sec"),
            "msg/s",
            1500,
        ),
        _info("send", "request latency p50", lat.get("p50"), "ms"),
        _info("send", "worker CPU per send", r.get("worker_cpu_us_per_send"), "µs"),
        _at_most("send", "request latency p99", lat.get("p99"), "ms", 100),
        _zero(
            "send", "failed sends", (r.get("errors") or 0) + (r.get("uncertain") or 0)
        ),
        _zero(
            "send",
            f"201s not read back ({verify.get('checked', 0)} checked)",
            verify.get("failed"),
        ),
        _zero("send", "acknowledged but missing from seq", verify.get("seq_shortfall")),
        _zero("send", "stored without a 201 (beyond lost answers)", max(0, extra)),
    ]


def _fanout_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for size in r.get("sizes", []):
        n = size["members"]
        lat = size.get("all_have_it_ms", {})
        limit = 50 if n <= 100 else 250
        rows.append(
            _info("fanout", f"{n} members: all have it p50", lat.get("p50"), "ms")
        )
        rows.append(
            _at_most(
                "fanout", f"{n} members: all have it p99", lat.get("p99"), "ms", limit
            )
        )
        rows.append(
            _at_most(
                "fanout",
                f"{n} members: worker CPU per delivery",
                size.get("worker_cpu_us_per_delivery"),
                "µs",
                DELIVERY_CPU_US_MAX,
            )
        )
        rows.append(
            _zero("fanout", f"{n} members: deliveries missing", size.get("missing"))
        )
        rows.append(
            _zero(
                "fanout",
                f"{n} members: errors opening and during",
                (_get(size, "settling", "errors_opening") or 0)
                + (size.get("poll_errors") or 0),
            )
        )
        rows.append(
            _info(
                "fanout",
                f"{n} members: poll answers before quiet (presence)",
                _get(size, "settling", "answers_while_settling"),
                "",
            )
        )
    return rows


def _catchup_rows(r: dict[str, Any]) -> list[Row]:
    backlog = r.get("backlog")
    return [
        _at_least(
            "catchup",
            f"events/s draining {backlog or 0:,}",
            r.get("events_per_sec"),
            "ev/s",
            20_000,
        ),
        _zero(
            "catchup",
            "backlog events not drained",
            None if backlog is None else backlog - (r.get("drained") or 0),
        ),
    ]


def _history_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    sizes = r.get("sizes", [])
    for size in sizes:
        n = size["messages"]
        rows.append(
            _info(
                "history",
                f"{n:,} msgs: newest page p50",
                _get(size, "newest_ms", "p50"),
                "ms",
            )
        )
        rows.append(
            _at_most(
                "history",
                f"{n:,} msgs: newest page p99",
                _get(size, "newest_ms", "p99"),
                "ms",
                5,
            )
        )
        rows.append(
            _info(
                "history",
                f"{n:,} msgs: deep page p99",
                _get(size, "deep_ms", "p99"),
                "ms",
            )
        )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        for kind in ("newest", "deep"):
            low = _get(small, f"{kind}_ms", "p50")
            high = _get(large, f"{kind}_ms", "p50")
            ratio = round(high / low, 3) if low and high else None
            rows.append(
                Row(
                    "history",
                    f"{kind} page p50, {large['messages']:,} vs "
                    f"{small['messages']:,} msgs",
                    ratio,
                    "×",
                    "≤ 1.2 ×",
                    ratio is not None and ratio <= 1.2,
                    TIMING,
                )
            )
    return rows


ROW_BUILDERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "idle": _idle_rows,
    "wake": _wake_rows,
    "send": _send_rows,
    "fanout": _fanout_rows,
    "catchup": _catchup_rows,
    "history": _history_rows,
}


def evaluate(results: dict[str, Any]) -> list[Row]:
    """Every figure of every scenario in results, beside its target."""
    rows: list[Row] = []
    for name in SCENARIO_ORDER:
        if name not in results:
            continue
        data = results[name]
        if "error" in data:
            rows.append(
                Row(
                    name,
                    _short(f"error: {data['error']}"),
                    None,
                    "",
                    "runs",
                    False,
                    CHECK,
                )
            )
            continue
        rows.extend(ROW_BUILDERS[name](data))
        if name == "wake":
            rows.append(_wake_delivery_row(data, results.get("send", {})))
    if isinstance(results.get("nchan"), dict):
        rows.extend(_nchan_rows(results, results["nchan"]))
    return rows


# `--compare nchan`: our figure over Nchan's, measured in the same run with the
# same client (issue #13's ratio targets).
NCHAN_WAKE_P99_RATIO = 5
NCHAN_FANOUT_P99_RATIO = 2
NCHAN_IDLE_CPU_RATIO = 4
# CPU percentages are read to 0.1: an idle Nchan at "0.0 %" counts as this much.
CPU_PCT_RESOLUTION = 0.1


def _ratio_row(
    metric: str, ours: float | None, theirs: float | None, unit: str, limit: float
) -> Row:
    ratio = round(ours / theirs, 2) if ours is not None and theirs else None
    return Row(
        "nchan",
        f"{metric}: ours {number(ours)} {unit}, Nchan {number(theirs)} {unit}",
        ratio,
        "×",
        f"≤ {number(limit)} ×",
        ratio is not None and ratio <= limit,
        TIMING,
    )


def _nchan_rows(results: dict[str, Any], nchan: dict[str, Any]) -> list[Row]:
    if "error" in nchan:
        return [Row("nchan", _short(f"error: {nchan['error']}"), None, "", "runs")]
    rows = []
    if "wake" in nchan and "wake" in results:
        rows.append(
            _ratio_row(
                "wake p99",
                _get(results, "wake", "latency_ms", "p99"),
                _get(nchan, "wake", "latency_ms", "p99"),
                "ms",
                NCHAN_WAKE_P99_RATIO,
            )
        )
        rows.append(_zero("nchan", "Nchan wake: not delivered", nchan["wake"]["lost"]))
    ours_fanout = {s["members"]: s for s in _get(results, "fanout", "sizes") or []}
    for size in _get(nchan, "fanout", "sizes") or []:
        n = size["members"]
        rows.append(
            _ratio_row(
                f"fanout {n} all have it p99",
                _get(ours_fanout.get(n, {}), "all_have_it_ms", "p99"),
                _get(size, "all_have_it_ms", "p99"),
                "ms",
                NCHAN_FANOUT_P99_RATIO,
            )
        )
    if "idle" in nchan and _get(results, "idle", "levels"):
        ours_level = results["idle"]["levels"][-1]
        theirs = nchan["idle"].get("server_cpu_pct")
        rows.append(
            _ratio_row(
                f"idle CPU at {nchan['idle']['polls']:,} polls",
                ours_level.get("server_cpu_pct"),
                None if theirs is None else max(theirs, CPU_PCT_RESOLUTION),
                "%",
                NCHAN_IDLE_CPU_RATIO,
            )
        )
    return rows


def wake_delivery_cpu_us(wake: dict[str, Any], send: dict[str, Any]) -> float | None:
    """Worker CPU per wake delivery without its send: the wake phase's worker CPU
    less its sends at the send scenario's CPU per send, over its answers."""
    cpu_secs = _get(wake, "cpu", "workers_cpu_secs")
    per_send_us = send.get("worker_cpu_us_per_send")
    answered = wake.get("polls_answered")
    sends = wake.get("sends_measured")
    if cpu_secs is None or per_send_us is None or not answered or sends is None:
        return None
    return round(max(0.0, cpu_secs * 1e6 - sends * per_send_us) / answered, 1)


def _wake_delivery_row(wake: dict[str, Any], send: dict[str, Any]) -> Row:
    return _at_most(
        "wake",
        "worker CPU per delivery (less the send scenario's CPU per send)",
        wake_delivery_cpu_us(wake, send),
        "µs",
        DELIVERY_CPU_US_MAX,
    )


def failed_checks(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.kind == CHECK and r.passed is False]


def missed_targets(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.kind == TIMING and r.passed is False]


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or (abs(value) >= 100 and value == int(value)):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"
