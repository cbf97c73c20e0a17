"""Turn bench results into a table, JSON and a self-contained HTML page with SVG charts.

Pure functions of the results dict (scenarios.py writes it; the keys it reads are those
of each run_* function and stats.distribution): a saved JSON can be rendered again,
and tests need no server. Targets are the issue's, for a 2-core machine.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

SCENARIO_ORDER = ("idle", "wake", "send", "fanout", "catchup", "history")

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
        f"≤ {_number(limit)} {unit}".strip(),
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
        f"≥ {_number(limit)} {unit}".strip(),
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
    return rows


def failed_checks(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.kind == CHECK and r.passed is False]


def missed_targets(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.kind == TIMING and r.passed is False]


# -- text ------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or (abs(value) >= 100 and value == int(value)):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _value_text(row: Row) -> str:
    text = _number(row.value)
    return f"{text} {row.unit}".strip() if row.value is not None else text


def _columns(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)
    ]
    out = []
    for i, line in enumerate([header, *lines]):
        out.append(
            "  ".join(
                str(c).ljust(w) for c, w in zip(line, widths, strict=True)
            ).rstrip()
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_table(rows: Sequence[Row]) -> str:
    """scenario | metric | value | target | PASS/MISS, as aligned plain text."""
    return _columns(
        ("scenario", "metric", "value", "target", "result"),
        [(r.scenario, r.metric, _value_text(r), r.target, r.verdict) for r in rows],
    )


def cpu_entries(results: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, cpu dict) for each measured phase, in scenario order."""
    entries = []
    for name in SCENARIO_ORDER:
        data = results.get(name)
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("cpu"), dict):
            entries.append((name, data["cpu"]))
        for level in data.get("levels", []):
            if isinstance(level.get("cpu"), dict):
                entries.append((f"{name} {level['polls']:,} polls", level["cpu"]))
        for size in data.get("sizes", []):
            if isinstance(size.get("cpu"), dict):
                entries.append((f"{name} {size['members']} members", size["cpu"]))
    return entries


# cpu dict keys (procs.CpuMeter.percent, Bench.measured) and their column titles.
CPU_COLUMNS = {
    "client": "client %",
    "server": "server %",
    "postgres": "postgres %",
    "redis": "redis %",
    "other": "other %",
    "machine": "machine %",
    "wall_secs": "secs",
    "client_lag_max_ms": "client lag max ms",
}


def format_cpu_table(results: dict[str, Any]) -> str:
    """Who was busy: CPU of the load client and of each server process group."""
    lines = [
        (label, *(_number(cpu.get(c)) for c in CPU_COLUMNS))
        for label, cpu in cpu_entries(results)
    ]
    return _columns(("phase", *CPU_COLUMNS.values()), lines)


# Programs outside the bench using more than this (percent of one core) in a phase
# make its timings suspect; the table says so.
DISTURBED_OTHER_PCT = 25.0


def disturbed_phases(results: dict[str, Any]) -> list[str]:
    """Phases during which other programs used a noticeable share of the CPUs."""
    return [
        f"{label} ({cpu['other']:.0f} %)"
        for label, cpu in cpu_entries(results)
        if (cpu.get("other") or 0) > DISTURBED_OTHER_PCT
    ]


def disturbance_warning(results: dict[str, Any]) -> str:
    """One sentence naming the phases other programs disturbed, or ""."""
    disturbed = disturbed_phases(results)
    if not disturbed:
        return ""
    return (
        f"WARNING: other programs were busy during {', '.join(disturbed)}: "
        "these timings are disturbed."
    )


def format_text(results: dict[str, Any], rows: Sequence[Row]) -> str:
    meta = results.get("meta", {})
    mode = "quick (small N: timings are indicative only)"
    if not meta.get("quick"):
        mode = "full"
    lines = [
        f"messenger bench, {mode}, {meta.get('cpus', '?')} CPUs, "
        f"git {meta.get('git_sha') or 'unknown'}",
        "",
        format_table(rows),
        "",
        "CPU in percent of one core (the client is one process: 100 % = saturated; "
        "other = programs outside the bench; machine = all cores)",
        format_cpu_table(results),
    ]
    if warning := disturbance_warning(results):
        lines.append(warning)
    return "\n".join(lines)


def to_json(results: dict[str, Any], rows: Sequence[Row]) -> str:
    """The raw results plus the evaluated rows under "checks"."""
    return json.dumps(
        {**results, "checks": [{**asdict(r), "result": r.verdict} for r in rows]},
        indent=1,
    )


# -- SVG charts ------------------------------------------------------------------------

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#17becf",
    "#7f7f7f",
)
CHART_W, CHART_H = 640, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 28, 46

Series = tuple[str, Sequence[tuple[float, float]]]


@dataclass(frozen=True)
class Axis:
    low: float
    high: float
    is_log: bool

    @classmethod
    def fit(cls, values: Sequence[float], is_log: bool, zero: bool = False) -> Axis:
        if is_log:
            positive = [v for v in values if v > 0] or [1.0]
            low, high = min(positive), max(positive)
            low = 10 ** math.floor(math.log10(low))
            high = 10 ** math.ceil(math.log10(high)) if high > low else low * 10
            return cls(low, high, True)
        low = 0.0 if zero else min(values, default=0.0)
        high = max(values, default=1.0)
        if high <= low:
            high = low + 1.0
        step = _nice_step((high - low) / 5)
        return cls(math.floor(low / step) * step, math.ceil(high / step) * step, False)

    def position(self, value: float, start: float, end: float) -> float:
        if self.is_log:
            value = max(value, self.low)
            fraction = math.log(value / self.low) / math.log(self.high / self.low)
        else:
            fraction = (value - self.low) / (self.high - self.low)
        return start + (end - start) * fraction

    def ticks(self) -> list[float]:
        if self.is_log:
            ticks: list[float] = []
            decade = self.low
            while decade <= self.high * 1.0001:
                ticks.extend(decade * m for m in (1, 2, 5) if decade * m <= self.high)
                decade *= 10
            return ticks
        step = _nice_step((self.high - self.low) / 5)
        count = int(round((self.high - self.low) / step))
        return [self.low + i * step for i in range(count + 1)]


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _frame(title: str, x: Axis, y: Axis, x_label: str, y_label: str) -> list[str]:
    left, right = MARGIN_L, CHART_W - MARGIN_R
    top, bottom = MARGIN_T, CHART_H - MARGIN_B
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" '
        f'height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="{CHART_W / 2}" y="17" text-anchor="middle" class="t">'
        f"{html.escape(title)}</text>",
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>',
    ]
    for tick in x.ticks():
        px = x.position(tick, left, right)
        parts.append(
            f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" class="g"/>'
        )
        parts.append(
            f'<text x="{px:.1f}" y="{bottom + 14}" text-anchor="middle">'
            f"{_tick_label(tick)}</text>"
        )
    for tick in y.ticks():
        py = y.position(tick, bottom, top)
        parts.append(
            f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" class="g"/>'
        )
        parts.append(
            f'<text x="{left - 5}" y="{py + 4:.1f}" text-anchor="end">'
            f"{_tick_label(tick)}</text>"
        )
    parts.append(
        f'<text x="{(left + right) / 2}" y="{CHART_H - 8}" '
        f'text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{(top + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + bottom) / 2})">'
        f"{html.escape(y_label)}</text>"
    )
    return parts


def _legend(labels: Sequence[str]) -> list[str]:
    parts = []
    for i, label in enumerate(labels):
        y = MARGIN_T + 14 + 15 * i
        x = MARGIN_L + 10
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="12" height="3" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
        )
        parts.append(f'<text x="{x + 17}" y="{y - 4}">{html.escape(label)}</text>')
    return parts


def line_chart(
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    *,
    log_x: bool = False,
    markers: bool = False,
) -> str:
    """An SVG line chart of one or more (label, [(x, y), ...]) series."""
    series = [(label, points) for label, points in series if points]
    if not series:
        return ""
    xs = [p[0] for _, points in series for p in points]
    ys = [p[1] for _, points in series for p in points]
    x = Axis.fit(xs, log_x, zero=not log_x)
    y = Axis.fit(ys, False, zero=True)
    left, right = MARGIN_L, CHART_W - MARGIN_R
    top, bottom = MARGIN_T, CHART_H - MARGIN_B
    parts = _frame(title, x, y, x_label, y_label)
    for i, (_, points) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        coords = [
            (x.position(px, left, right), y.position(py, bottom, top))
            for px, py in points
        ]
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>'
        )
        if markers:
            parts.extend(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{color}"/>'
                for cx, cy in coords
            )
    if len(series) > 1 or series[0][0]:
        parts.extend(_legend([label for label, _ in series]))
    parts.append("</svg>")
    return "\n".join(parts)


def histogram_chart(title: str, hist: dict[str, Any], x_label: str) -> str:
    """Bars of a log-binned histogram (stats.histogram)."""
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    if not counts:
        return ""
    x = Axis.fit(edges, True)
    y = Axis.fit([float(c) for c in counts], False, zero=True)
    left, right = MARGIN_L, CHART_W - MARGIN_R
    top, bottom = MARGIN_T, CHART_H - MARGIN_B
    parts = _frame(title, x, y, x_label, "requests")
    for low, high, count in zip(edges, edges[1:], counts, strict=False):
        x0, x1 = x.position(low, left, right), x.position(high, left, right)
        y0 = y.position(count, bottom, top)
        parts.append(
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
            f'height="{bottom - y0:.1f}" fill="{PALETTE[0]}"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def cdf_series(label: str, dist: dict[str, Any] | None) -> Series:
    points = [(float(v), float(p)) for p, v in (dist or {}).get("cdf", [])]
    return (label, points)


def cdf_chart(title: str, series: Sequence[Series]) -> str:
    return line_chart(
        title, series, "latency (ms, log scale)", "percentile", log_x=True
    )


# -- HTML ------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1340px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;text-align:left;
border-bottom:1px solid #eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.PASS{color:#176f2c;font-weight:600}.MISS{color:#b35c00;font-weight:600}
.FAIL{color:#b00020;font-weight:700}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fff;border:1px solid #e5e5e5}svg text{font-size:11px;fill:#333}
svg text.t{font-size:13px;font-weight:600}svg line.g{stroke:#eee}
.err{color:#b00020}code{background:#f4f4f4;padding:1px 4px}
"""


def _html_rows_table(rows: Sequence[Row]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(r.scenario)}</td><td>{html.escape(r.metric)}</td>"
        f'<td class="n">{html.escape(_value_text(r))}</td>'
        f"<td>{html.escape(r.target)}</td>"
        f'<td class="{r.verdict}">{r.verdict}</td></tr>'
        for r in rows
    )
    return (
        "<table><tr><th>scenario</th><th>metric</th><th>value</th><th>target</th>"
        f"<th>result</th></tr>{body}</table>"
    )


def _html_cpu_table(results: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f'<td class="n">{_number(cpu.get(c))}</td>' for c in CPU_COLUMNS)
        + "</tr>"
        for label, cpu in cpu_entries(results)
    )
    head = "".join(f"<th>{c}</th>" for c in ("phase", *CPU_COLUMNS.values()))
    return f"<table><tr>{head}</tr>{body}</table>"


def _charts(results: dict[str, Any]) -> dict[str, list[str]]:
    charts: dict[str, list[str]] = {name: [] for name in SCENARIO_ORDER}
    idle = results.get("idle") or {}
    if idle.get("ramp"):
        charts["idle"].append(
            line_chart(
                "Worker RSS against held polls",
                [("", [(float(n), kb / 1024) for n, kb in idle["ramp"]])],
                "held polls",
                "RSS (MiB)",
                markers=True,
            )
        )
    if len(idle.get("levels", [])) > 1:
        charts["idle"].append(
            line_chart(
                "RSS per held poll",
                [
                    (
                        "",
                        [
                            (float(lv["polls"]), float(lv["rss_per_poll_kb"]))
                            for lv in idle["levels"]
                        ],
                    )
                ],
                "held polls",
                "KB per poll",
                markers=True,
            )
        )
    wake = results.get("wake") or {}
    if wake.get("latency_ms"):
        charts["wake"].append(
            cdf_chart(
                "Wake latency (send start → poll answer)",
                [
                    cdf_series("poll answer", wake["latency_ms"]),
                    cdf_series("send request", wake.get("send_latency_ms")),
                ],
            )
        )
        charts["wake"].append(
            histogram_chart(
                "Wake latency histogram",
                wake["latency_ms"].get("histogram", {}),
                "latency (ms, log scale)",
            )
        )
    send = results.get("send") or {}
    if send.get("latency_ms"):
        charts["send"].append(
            cdf_chart(
                "Send request latency", [cdf_series("POST message", send["latency_ms"])]
            )
        )
        charts["send"].append(
            histogram_chart(
                "Send latency histogram",
                send["latency_ms"].get("histogram", {}),
                "latency (ms, log scale)",
            )
        )
    if send.get("per_second"):
        charts["send"].append(
            line_chart(
                "Durable messages per second",
                [
                    (
                        "",
                        [
                            (float(i), float(n))
                            for i, n in enumerate(send["per_second"])
                        ],
                    )
                ],
                "second",
                "messages/s",
            )
        )
    fanout = results.get("fanout") or {}
    if fanout.get("sizes"):
        series = []
        for size in fanout["sizes"]:
            series.append(
                cdf_series(
                    f"{size['members']}: all have it", size.get("all_have_it_ms")
                )
            )
            series.append(
                cdf_series(f"{size['members']}: each member", size.get("delivery_ms"))
            )
        charts["fanout"].append(cdf_chart("Fan-out latency", series))
    catchup = results.get("catchup") or {}
    if catchup.get("page_ms"):
        charts["catchup"].append(
            cdf_chart(
                "Catch-up page latency (500 events a page)",
                [cdf_series("page", catchup["page_ms"])],
            )
        )
    history = results.get("history") or {}
    if history.get("sizes"):
        series = []
        for size in history["sizes"]:
            series.append(
                cdf_series(f"{size['messages']:,}: newest", size.get("newest_ms"))
            )
            series.append(
                cdf_series(f"{size['messages']:,}: deep", size.get("deep_ms"))
            )
        charts["history"].append(cdf_chart("History page latency", series))
    return charts


def _scalars(data: dict[str, Any]) -> str:
    return "; ".join(
        f"<code>{html.escape(key)}</code> = {html.escape(str(value))[:300]}"
        for key, value in data.items()
        if isinstance(value, bool | int | float | str) or value is None
    )


def _scenario_facts(data: dict[str, Any]) -> str:
    """Scalar figures of a scenario and of each of its sizes, minus the bulky ones."""
    facts = [f"<p>{_scalars(data)}</p>"]
    for entry in data.get("sizes", []):
        if isinstance(entry, dict):
            facts.append(f"<p>{_scalars(entry)}</p>")
    return "".join(facts)


def to_html(
    results: dict[str, Any], rows: Sequence[Row], profiles: dict[str, str] | None = None
) -> str:
    """The whole report as one HTML page, charts inline as SVG, no scripts.

    Args:
        profiles: phase → flame graph path, relative to where the page is written.
    """
    meta = results.get("meta", {})
    charts = _charts(results)
    sections = []
    for name in SCENARIO_ORDER:
        data = results.get(name)
        if not isinstance(data, dict):
            continue
        if "error" in data:
            sections.append(
                f'<h2>{name}</h2><p class="err">Error: '
                f"{html.escape(str(data['error']))}</p>"
            )
            continue
        sections.append(
            f"<h2>{name}</h2>{_scenario_facts(data)}"
            f'<div class="charts">{"".join(c for c in charts[name] if c)}</div>'
        )
    profile_items = "".join(
        f'<li><a href="{html.escape(path)}">{html.escape(phase)}</a></li>'
        for phase, path in (profiles or {}).items()
    )
    meta_items = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))[:400]}</td></tr>"
        for k, v in meta.items()
        if not isinstance(v, dict)
    )
    verdict = (
        "<p class='FAIL'>Correctness checks failed.</p>" if failed_checks(rows) else ""
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>messenger bench {html.escape(str(meta.get('date', '')))}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>messenger bench ({'quick' if meta.get('quick') else 'full'})</h1>",
            verdict,
            _html_rows_table(rows),
            "<h2>CPU</h2><p>Percent of one core. The load client is one process, so "
            "100 % means it was the bottleneck. <i>other</i> is CPU used by programs "
            "outside the bench (figures taken beside it are disturbed); "
            "<i>machine</i> is all cores together. <i>client lag</i> is how late the "
            "client's event loop woke at worst.</p>",
            _html_cpu_table(results),
            f'<p class="MISS">{html.escape(disturbance_warning(results))}</p>',
            *sections,
            (
                "<h2>Profiles</h2><p>py-spy flame graphs of the server during:</p>"
                f"<ul>{profile_items}</ul>"
                if profile_items
                else ""
            ),
            f"<h2>Run</h2><table>{meta_items}</table>",
            "</body></html>",
        ]
    )
