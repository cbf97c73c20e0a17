"""The bench's report: figures beside targets, as a table, JSON and an HTML page.

Pure functions of the results dict the scenarios write: a saved JSON can be rendered
again, and tests need no server.

Modules: targets (each figure beside its target, the verdicts), text (the tables and
the JSON), svg (charts), page (the HTML page).
"""

from messenger.bench.report.page import to_html
from messenger.bench.report.targets import (
    Row,
    evaluate,
    failed_checks,
    missed_targets,
    wake_delivery_cpu_us,
)
from messenger.bench.report.text import format_cpu_table, format_text, to_json

__all__ = [
    "Row",
    "evaluate",
    "wake_delivery_cpu_us",
    "failed_checks",
    "format_cpu_table",
    "format_text",
    "missed_targets",
    "to_html",
    "to_json",
]
