"""Inline SVG charts for the HTML report: line charts, log-binned histograms, CDFs."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
