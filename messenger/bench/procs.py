"""Resident memory and CPU time of processes and of the machine, through psutil.

Every function answers for processes that may exit at any moment: a process gone
reads as absent (None, or left out of a list), never as an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import psutil

# What a process that exits, or that we may not inspect, raises on any read.
GONE = (psutil.NoSuchProcess, psutil.AccessDenied)
# CpuMeter groups that are part of another group ("workers": the gunicorn workers,
# inside "server"), with their exact CPU seconds (the per-delivery figure).
NESTED_GROUPS = frozenset({"workers"})


def process_tree(root_pid: int) -> list[int]:
    """The root and all its descendants that are alive now."""
    try:
        root = psutil.Process(root_pid)
        return [root_pid, *(p.pid for p in root.children(recursive=True))]
    except GONE:
        return []


def child_pids(parent_pid: int) -> list[int]:
    """The direct children of a process."""
    try:
        return sorted(p.pid for p in psutil.Process(parent_pid).children())
    except GONE:
        return []


def cmdline(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except GONE:
        return []


def rss_kb(pid: int) -> int | None:
    """Resident set size in KiB; None when the process is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except GONE:
        return None


def cpu_secs_by_pid(pids: Iterable[int]) -> dict[int, float]:
    """User plus system CPU seconds of each process still alive."""
    used = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except GONE:
            continue
        used[pid] = times.user + times.system
    return used


def machine_busy_secs() -> float:
    """CPU seconds all cores spent not idle since boot (idle and iowait are idle)."""
    times = psutil.cpu_times()  # the Linux fields: the bench runs on Linux only
    return float(
        times.user + times.nice + times.system + times.irq + times.softirq + times.steal
    )


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    self_secs: float
    groups: Mapping[str, Mapping[int, float]]  # group → pid → CPU seconds
    machine_secs: float


class CpuMeter:
    """CPU used by this process and by named groups of processes between two points.

    Args:
        groups: called at each snapshot; returns group name → pids (e.g. "server" →
            the gunicorn master and its workers). Processes that exit between two
            snapshots lose their last seconds; ones that appear count in full.
            Groups named in NESTED_GROUPS are part of another group (the gunicorn
            workers, inside "server"): reported, but not added up twice.
    """

    def __init__(self, groups: Callable[[], Mapping[str, Iterable[int]]]) -> None:
        self._groups = groups

    def snapshot(self) -> CpuSnapshot:
        times = os.times()
        return CpuSnapshot(
            wall=time.monotonic(),
            self_secs=times.user + times.system,
            groups={
                name: cpu_secs_by_pid(pids) for name, pids in self._groups().items()
            },
            machine_secs=machine_busy_secs(),
        )

    @staticmethod
    def percent(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """CPU in percent of one core for "client" and each group over the interval.

        "machine" is every core's busy time (200 % = two cores saturated) and "other"
        what of it none of ours used: another program competing for the CPUs.
        """
        wall = max(end.wall - start.wall, 1e-6)
        usage = {"client": round(100.0 * (end.self_secs - start.self_secs) / wall, 1)}
        nested: dict[str, float] = {}
        for name, after in end.groups.items():
            before = start.groups.get(name, {})
            secs = sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())
            usage[name] = round(100.0 * secs / wall, 1)
            if name in NESTED_GROUPS:
                nested[f"{name}_cpu_secs"] = round(secs, 4)
        machine = 100.0 * (end.machine_secs - start.machine_secs)
        usage["machine"] = round(machine / wall, 1)
        ours = sum(
            v for k, v in usage.items() if k != "machine" and k not in NESTED_GROUPS
        )
        usage["other"] = round(max(0.0, usage["machine"] - ours), 1)
        usage["wall_secs"] = round(wall, 2)
        usage.update(nested)
        return usage
