"""Percentiles and distributions of latency samples, as plain JSON-ready dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Percentiles kept for the CDF charts: every whole percent, plus the far tail.
CDF_PERCENTS: tuple[float, ...] = (*range(0, 100), 99.5, 99.9, 100)
HISTOGRAM_BINS = 30
# Raw samples are kept in the JSON when there are this few of them.
MAX_RAW_SAMPLES = 2000


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """The percent-th percentile of already sorted values (linear interpolation).

    Raises:
        ValueError: no values.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = (len(sorted_values) - 1) * percent / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (
        rank - low
    )


def histogram(
    sorted_values: Sequence[float], bins: int = HISTOGRAM_BINS
) -> dict[str, list[float] | list[int]]:
    """Counts in log-spaced bins between the smallest and largest value."""
    if not sorted_values:
        return {"edges": [], "counts": []}
    low = max(sorted_values[0], 1e-3)
    high = max(sorted_values[-1], low * 1.001)
    ratio = (high / low) ** (1.0 / bins)
    edges = [low * ratio**i for i in range(bins + 1)]
    counts = [0] * bins
    for value in sorted_values:
        index = 0 if value <= low else int(math.log(value / low) / math.log(ratio))
        counts[min(index, bins - 1)] += 1
    return {"edges": [round(e, 4) for e in edges], "counts": counts}


def distribution(samples_ms: Sequence[float]) -> dict[str, object]:
    """Summary, CDF points and histogram of latency samples in milliseconds.

    The keys (count, min, mean, p50, p90, p99, max, cdf, histogram, samples) are read
    by report.py; update it when one is added.
    """
    values = sorted(samples_ms)
    if not values:
        return {"count": 0}
    summary: dict[str, object] = {
        "count": len(values),
        "min": round(values[0], 3),
        "mean": round(sum(values) / len(values), 3),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(values[-1], 3),
        "cdf": [[p, round(percentile(values, p), 3)] for p in CDF_PERCENTS],
        "histogram": histogram(values),
    }
    if len(values) <= MAX_RAW_SAMPLES:
        summary["samples"] = [round(v, 3) for v in samples_ms]
    return summary
