"""The bench's report: figures beside targets, JSON and HTML, from a fake result."""

from __future__ import annotations

import json
import re
from typing import Any

from messenger.bench import report
from messenger.bench.stats import distribution, percentile


def fake_results(**overrides: Any) -> dict[str, Any]:
    cpu = {
        "client": 12.0,
        "server": 80.5,
        "postgres": 40.0,
        "redis": 3.1,
        "wall_secs": 20.0,
    }
    results: dict[str, Any] = {
        "meta": {
            "date": "2026-11-26T21:47:42Z",
            "quick": True,
            "cpus": 2,
            "git_sha": "abc1234",
            "plan": {"wake_users": 100},
        },
        "idle": {
            "baseline_rss_kb": 60_000,
            "ramp": [[0, 60_000], [100, 61_000], [200, 63_000]],
            "levels": [
                {
                    "polls": 200,
                    "held": 200,
                    "rss_kb": 63_000,
                    "rss_per_poll_kb": 15.0,
                    "server_cpu_pct": 1.5,
                    "errors_opening": 0,
                    "errors_holding": 0,
                    "cpu": cpu,
                }
            ],
        },
        "wake": {
            "latency_ms": distribution([1.0 + i / 100 for i in range(300)]),
            "send_latency_ms": distribution([2.0, 3.0, 4.0]),
            "sent": 250,
            "delivered": 250,
            "lost": 0,
            "send_errors": 0,
            "poll_errors": 0,
            "settling": {"errors_opening": 0, "answers_while_settling": 3},
            "cpu": cpu,
        },
        "send": {
            "senders": 50,
            "durable_per_sec": 900.0,
            "ok": 4500,
            "errors": 0,
            "uncertain": 0,
            "latency_ms": distribution([10.0, 20.0, 150.0]),
            "per_second": [800, 900, 1000],
            "verify": {
                "checked": 100,
                "failed": 0,
                "seq_shortfall": 0,
                "seq_extra": 0,
                "seq_extra_allowed": 0,
            },
            "cpu": cpu,
        },
        "fanout": {
            "sizes": [
                {
                    "members": 20,
                    "missing": 0,
                    "cpu": cpu,
                    "all_have_it_ms": distribution([5.0, 6.0, 7.0]),
                    "delivery_ms": distribution([1.0, 2.0, 7.0]),
                }
            ]
        },
        "catchup": {
            "backlog": 1000,
            "drained": 1000,
            "events_per_sec": 25_000.0,
            "page_ms": distribution([3.0, 4.0]),
            "cpu": cpu,
        },
        "history": {
            "sizes": [
                {
                    "messages": 1000,
                    "newest_ms": distribution([1.0, 2.0, 3.0]),
                    "deep_ms": distribution([1.0, 2.0]),
                },
                {
                    "messages": 5000,
                    "newest_ms": distribution([1.1, 2.1, 3.1]),
                    "deep_ms": distribution([1.0, 4.0]),
                },
            ],
            "cpu": cpu,
        },
    }
    results.update(overrides)
    return results


def row(rows: list[report.Row], scenario: str, metric_start: str) -> report.Row:
    return next(
        r for r in rows if r.scenario == scenario and r.metric.startswith(metric_start)
    )


def test_each_figure_is_judged_against_its_target() -> None:
    rows = report.evaluate(fake_results())

    assert row(rows, "wake", "send → poll answer p50").verdict == "PASS"  # 2.5 ≤ 3
    assert row(rows, "send", "durable messages/s").verdict == "MISS"  # 900 < 1,500
    assert row(rows, "send", "request latency p99").verdict == "MISS"
    assert row(rows, "catchup", "events/s").verdict == "PASS"
    assert row(rows, "idle", "server RSS per held poll at 200").verdict == "PASS"
    assert row(rows, "history", "newest page p50, 5,000 vs 1,000").value == 1.05
    assert report.failed_checks(rows) == []


def test_lost_message_fails_the_run_but_a_slow_one_only_misses() -> None:
    results = fake_results()
    results["wake"]["lost"] = 2
    rows = report.evaluate(results)

    assert row(rows, "wake", "messages not delivered").verdict == "FAIL"
    assert [r.metric for r in report.failed_checks(rows)] == ["messages not delivered"]
    assert "send" in {r.scenario for r in report.missed_targets(rows)}


def test_scenario_that_raised_is_a_failed_check() -> None:
    rows = report.evaluate(fake_results(send={"error": "POST answered 500"}))

    failed = report.failed_checks(rows)
    assert len(failed) == 1
    assert failed[0].scenario == "send" and "500" in failed[0].metric
    long_error = fake_results(send={"error": "503 " + "busy " * 100})
    assert all(len(r.metric) <= 70 for r in report.evaluate(long_error))


def test_table_prints_value_target_and_verdict_on_one_line() -> None:
    results = fake_results()
    text = report.format_text(results, report.evaluate(results))

    line = next(ln for ln in text.splitlines() if "send → poll answer p99" in ln)
    assert re.search(r"\d+\.\d+ ms\s+≤ 10 ms\s+PASS$", line)
    assert "client %" in text and "wake" in report.format_cpu_table(results)


def test_json_keeps_raw_figures_and_adds_checks() -> None:
    results = fake_results()
    decoded = json.loads(report.to_json(results, report.evaluate(results)))

    assert decoded["wake"]["latency_ms"]["count"] == 300
    assert decoded["meta"]["git_sha"] == "abc1234"
    assert {"scenario", "metric", "value", "target", "result"} <= set(
        decoded["checks"][0]
    )


def test_html_is_one_file_with_inline_svg_and_no_script() -> None:
    results = fake_results()
    page = report.to_html(
        results, report.evaluate(results), {"send": "profile-send.svg"}
    )

    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<svg") >= 8
    assert "<script" not in page and "src=" not in page
    external = set(re.findall(r"https?://[^\s\"'<]+", page))
    assert external <= {"http://www.w3.org/2000/svg"}
    assert 'href="profile-send.svg"' in page
    assert "Worker RSS against held polls" in page


def test_html_names_a_failed_scenario() -> None:
    results = fake_results(fanout={"error": "only 3/20 polls held"})
    page = report.to_html(results, report.evaluate(results))

    assert "only 3/20 polls held" in page and "Correctness checks failed" in page


def test_distribution_percentiles_interpolate() -> None:
    dist = distribution([float(v) for v in range(1, 101)])

    assert dist["p50"] == 50.5 and dist["max"] == 100.0 and dist["count"] == 100
    assert percentile([1.0, 3.0], 50) == 2.0
    histogram = dist["histogram"]
    assert isinstance(histogram, dict) and sum(histogram["counts"]) == 100


def test_busy_machine_is_flagged_beside_the_figures() -> None:
    results = fake_results()
    results["send"]["cpu"] = {**results["send"]["cpu"], "other": 150.0}
    rows = report.evaluate(results)

    assert "WARNING: other programs were busy during send (150 %)" in (
        report.format_text(results, rows)
    )
    assert "busy during send" in report.to_html(results, rows)
    assert "WARNING" not in report.format_text(fake_results(), rows)


def test_worker_cpu_per_delivery_is_judged_in_fanout_and_wake() -> None:
    results = fake_results()
    results["fanout"]["sizes"][0]["worker_cpu_us_per_delivery"] = 450.0
    # 2 s of worker CPU for 1,000 answers and 1,000 sends at 1,500 µs each.
    results["wake"].update(polls_answered=1000, sends_measured=1000)
    results["wake"]["cpu"] = {**results["wake"]["cpu"], "workers_cpu_secs": 2.0}
    results["send"]["worker_cpu_us_per_send"] = 1500.0
    rows = report.evaluate(results)

    fanout = row(rows, "fanout", "20 members: worker CPU per delivery")
    assert fanout.verdict == "MISS" and fanout.target == "≤ 300 µs"
    wake = row(rows, "wake", "worker CPU per delivery (less")
    assert wake.value == 500.0 and wake.verdict == "MISS"
    results["send"]["worker_cpu_us_per_send"] = 1800.0
    assert report.wake_delivery_cpu_us(results["wake"], results["send"]) == 200.0
    assert "worker CPU per delivery" in report.format_text(results, rows)
