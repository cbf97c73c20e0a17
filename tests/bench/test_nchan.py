"""`--compare nchan`: the ratio rows, the missing-install message, and (where
nginx with Nchan is installed) a tiny run against it."""

import dataclasses
from typing import Any

import pytest

from messenger.bench import nchan, report, runner
from messenger.bench.scenarios.harness import QUICK
from tests.bench.test_bench_report import fake_results, row


def test_ratios_beside_nchan_are_judged_against_their_targets() -> None:
    results = fake_results()  # ours: wake p99 ≈ 3.97 ms, idle 1.5 %, fanout 20 p99 6.98
    results["nchan"] = {
        "wake": {"latency_ms": {"p99": 1.0}, "lost": 0},
        "fanout": {"sizes": [{"members": 20, "all_have_it_ms": {"p99": 2.0}}]},
        "idle": {"polls": 200, "server_cpu_pct": 0.0},
    }
    rows = report.evaluate(results)

    wake = row(rows, "nchan", "wake p99")
    assert wake.verdict == "PASS" and wake.target == "≤ 5 ×" and 3 < wake.value < 5
    assert row(rows, "nchan", "fanout 20 all have it p99").value == 3.49
    assert row(rows, "nchan", "fanout 20 all have it p99").verdict == "MISS"
    idle = row(rows, "nchan", "idle CPU at 200 polls")
    assert idle.value == 15.0 and idle.verdict == "MISS"  # 0.0 % read as 0.1 %
    assert "Nchan 1.00 ms" in wake.metric
    results["nchan"]["wake"]["lost"] = 1
    assert report.failed_checks(report.evaluate(results))


def test_compare_without_nchan_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(nchan, "find_nginx", lambda: None)

    assert runner.main(["--quick", "--compare", "nchan"]) == 2
    assert "apt-get install nginx libnginx-mod-nchan" in capsys.readouterr().err


@pytest.mark.system
@pytest.mark.skipif(nchan.find_nginx() is None, reason=nchan.INSTALL_HINT)
def test_a_tiny_run_against_nchan_delivers_everything() -> None:
    plan = dataclasses.replace(
        QUICK,
        wake_users=10,
        wake_secs=1,
        idle_levels=(20,),
        idle_cpu_window_secs=0.5,
        idle_settle_secs=0.2,
        fanout_sizes=(5,),
        fanout_messages=2,
    )
    said: list[str] = []
    results = nchan.run_all(plan, ["idle", "wake", "fanout"], "test", 1, said.append)

    assert results["idle"]["held"] == 20 and results["idle"]["errors"] == 0
    assert results["wake"]["delivered"] == results["wake"]["sent"] == 50
    assert results["fanout"]["sizes"][0]["missing"] == 0
    assert results["fanout"]["sizes"][0]["all_have_it_ms"]["count"] == 2
    assert any("Nchan on 127.0.0.1" in line for line in said)
