"""`python -m messenger.bench`: start a stack, run the scenarios, report, stop.

Exit status: 0 when the figures were produced (targets missed or not), 1 when the
stack failed, a scenario could not run or a correctness check failed (lost or
unverified messages, errors), 2 for bad arguments, 3 with --strict when a timing
target was missed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from messenger.bench import nchan, report
from messenger.bench.client import raise_open_file_limit
from messenger.bench.profiling import Profiler
from messenger.bench.scenarios import SCENARIOS
from messenger.bench.scenarios.harness import FULL, QUICK, Bench
from messenger.bench.stack import REPO_ROOT, Stack, StackError

RESULTS_DIR = REPO_ROOT / "bench-results"
# Sockets the client may hold beyond the largest idle level: pools, setup, slack.
SPARE_FILES = 1_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m messenger.bench",
        description="Benchmark the messenger on a fresh stack of its own.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the ~1 minute smoke run (tiny N; timings indicative)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="raw figures as JSON (default bench-results/bench[-quick].json)",
    )
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="HTML report with charts (default beside the JSON)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy flame graphs of the server next to the "
        "HTML report (figures of such a run are skewed)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 when a timing target is missed"
    )
    parser.add_argument(
        "--compare",
        choices=["nchan"],
        help="also run the wake, fanout and idle scenarios against Nchan (nginx's "
        f"long-poll module; needs `{nchan.INSTALL_HINT}`) and print the ratios",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=64,
        help="MESSENGER_SHARDS of the server (default 64)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the data folder (server log) after the run",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    # Always in the canonical order: idle runs first, while its users still share
    # no conversation, so no presence announcement wakes its held polls.
    args.scenario_names = [n for n in SCENARIOS if n in names]
    stem = "bench-quick" if args.quick else "bench"
    if args.json is None:
        args.json = (
            args.html.with_suffix(".json")
            if args.html
            else RESULTS_DIR / f"{stem}.json"
        )
    if args.html is None:
        args.html = args.json.with_suffix(".html")
    return args


class Output:
    """Progress lines on stderr, each with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        print(f"{time.monotonic() - self.t0:7.1f}s {line}", file=sys.stderr, flush=True)


def git_sha() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    # psutil does not name the CPU model; /proc/cpuinfo does.
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": psutil.virtual_memory().total // (1024 * 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    say = Output()
    if args.compare == "nchan" and nchan.find_nginx() is None:
        print(
            "--compare nchan needs nginx with the nchan module, which the bench "
            f"does not install: {nchan.INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    open_files = raise_open_file_limit()
    needed_files = max(plan.idle_levels) + SPARE_FILES
    if "idle" in args.scenario_names and open_files < needed_files:
        say(
            f"[bench] warning: open-file limit {open_files} is below {needed_files}; "
            "idle will count errors"
        )
    signal.signal(signal.SIGTERM, _terminate)
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "quick": plan.quick,
            "git_sha": git_sha(),
            **machine(),
            "open_file_limit": open_files,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "scenarios": args.scenario_names,
            "command": " ".join(["python -m messenger.bench", *(argv or sys.argv[1:])]),
            "plan": plan.as_dict(),
        }
    }
    stack = Stack(say, shards=args.shards, keep_data=args.keep)
    try:
        profiler = Profiler(args.profile, args.html.parent, stack.master_pid, say)
    except RuntimeError as exc:
        print(f"messenger.bench: {exc}", file=sys.stderr)
        return 2
    exit_code = 0
    t0 = time.monotonic()
    try:
        stack.start(workers=2)
        bench = Bench(stack, plan, profiler, say)
        try:
            for name in args.scenario_names:
                say(f"[{name}] starting")
                t_scenario = time.monotonic()
                try:
                    results[name] = SCENARIOS[name](bench)
                except StackError:
                    raise
                except Exception as exc:
                    say(f"[{name}] failed: {exc}")
                    traceback.print_exc(file=sys.stderr)
                    results[name] = {"error": str(exc)[:2000]}
                    exit_code = 1
                    if not stack.is_alive():
                        raise StackError("gunicorn died during " + name) from exc
                results[name]["wall_secs"] = round(time.monotonic() - t_scenario, 1)
                say(f"[{name}] done in {results[name]['wall_secs']} s")
        finally:
            bench.close()
    except StackError as exc:
        say(f"[stack] failed: {exc}")
        results["meta"]["stack_error"] = str(exc)[:4000]
        exit_code = 1
    except (KeyboardInterrupt, SystemExit) as exc:
        say("[bench] interrupted; stopping the stack")
        results["meta"]["interrupted"] = True
        exit_code = (
            exc.code
            if isinstance(exc, SystemExit) and isinstance(exc.code, int)
            else 130
        )
    finally:
        # A second Ctrl-C must not leave PostgreSQL or gunicorn behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("[stack] stopping")
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    compared = [n for n in args.scenario_names if n in ("wake", "fanout", "idle")]
    if args.compare == "nchan" and compared and exit_code in (0, 1):
        say("[nchan] starting: " + ", ".join(compared))
        try:
            results["nchan"] = nchan.run_all(
                plan, compared, format(int(time.time()), "x")[-6:], 2, say
            )
        except Exception as exc:
            say(f"[nchan] failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            results["nchan"] = {"error": str(exc)[:2000]}
            exit_code = exit_code or 1
    results["meta"]["duration_secs"] = round(time.monotonic() - t0, 1)
    results["meta"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if profiler.files:
        results["meta"]["profiles"] = profiler.files
    if profiler.errors:
        results["meta"]["profile_errors"] = profiler.errors
    rows = report.evaluate(results)
    write_reports(results, rows, args.json, args.html, profiler.files)
    print(report.format_text(results, rows))
    print(f"\nJSON: {args.json}\nHTML: {args.html}")
    failed = report.failed_checks(rows)
    missed = report.missed_targets(rows)
    if failed:
        print(
            f"{len(failed)} correctness check(s) failed: "
            + "; ".join(f"{r.scenario} {r.metric}" for r in failed)
        )
        exit_code = exit_code or 1
    if missed:
        print(
            f"{len(missed)} timing target(s) missed"
            + (" (a quick run's timings are only indicative)" if plan.quick else "")
        )
        if args.strict:
            exit_code = exit_code or 3
    return exit_code


def write_reports(
    results: dict[str, Any],
    rows: list[report.Row],
    json_path: Path,
    html_path: Path,
    profiles: dict[str, str],
) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(report.to_json(results, rows))
    relative = {
        phase: os.path.relpath(path, html_path.parent)
        for phase, path in profiles.items()
    }
    html_path.write_text(report.to_html(results, rows, relative))
