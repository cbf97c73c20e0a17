"""The HTML report: one self-contained page of tables and inline SVG charts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from messenger.bench.report.svg import (
    cdf_chart,
    cdf_series,
    histogram_chart,
    line_chart,
)
from messenger.bench.report.targets import SCENARIO_ORDER, Row, failed_checks
from messenger.bench.report.text import (
    CPU_COLUMNS,
    cpu_entries,
    disturbance_warning,
    number,
    value_text,
)

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
        f'<td class="n">{html.escape(value_text(r))}</td>'
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
        + "".join(f'<td class="n">{number(cpu.get(c))}</td>' for c in CPU_COLUMNS)
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
