"""The plain-text report (figures, CPU, disturbance warning) and the JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from messenger.bench.report.targets import SCENARIO_ORDER, Row, number


def value_text(row: Row) -> str:
    text = number(row.value)
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
        [(r.scenario, r.metric, value_text(r), r.target, r.verdict) for r in rows],
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
    "workers": "workers %",
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
        (label, *(number(cpu.get(c)) for c in CPU_COLUMNS))
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
