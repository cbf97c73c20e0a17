"""Resident memory and CPU time of processes, read from /proc (Linux only).

No psutil: the figures needed are two fields of /proc/<pid>/stat and one line of
/proc/<pid>/status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

CLOCK_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime


def read_stat(pid: int) -> ProcStat | None:
    """The parent and CPU ticks of a process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = raw[raw.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return ProcStat(pid, int(fields[1]), int(fields[11]) + int(fields[12]))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_tree(root_pid: int) -> list[int]:
    """The root and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None:
            children.setdefault(stat.ppid, []).append(pid)
    if read_stat(root_pid) is None:
        return []
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def child_pids(parent_pid: int) -> list[int]:
    """The direct children of a process."""
    found = []
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None and stat.ppid == parent_pid:
            found.append(pid)
    return sorted(found)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def find_pids(predicate: Callable[[list[str]], bool]) -> list[int]:
    """Processes whose command line satisfies the predicate."""
    return [pid for pid in all_pids() if predicate(cmdline(pid))]


def rss_kb(pid: int) -> int | None:
    """Resident set size in KiB (VmRSS); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks_by_pid(pids: Iterable[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            ticks[pid] = stat.cpu_ticks
    return ticks


def machine_busy_ticks() -> int:
    """CPU ticks all cores spent not idle since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0
    # user nice system idle iowait irq softirq steal ...: idle and iowait are idle.
    return sum(fields[:8]) - fields[3] - fields[4]


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    self_secs: float
    groups: Mapping[str, Mapping[int, int]]  # group → pid → CPU ticks
    machine_ticks: int


class CpuMeter:
    """CPU used by this process and by named groups of processes between two points.

    Args:
        groups: called at each snapshot; returns group name → pids (e.g. "server" →
            the gunicorn master and its workers). Processes that exit between two
            snapshots lose their last ticks; ones that appear count in full.
    """

    def __init__(self, groups: Callable[[], Mapping[str, Iterable[int]]]) -> None:
        self._groups = groups

    def snapshot(self) -> CpuSnapshot:
        times = os.times()
        return CpuSnapshot(
            wall=time.monotonic(),
            self_secs=times.user + times.system,
            groups={
                name: cpu_ticks_by_pid(pids) for name, pids in self._groups().items()
            },
            machine_ticks=machine_busy_ticks(),
        )

    @staticmethod
    def percent(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
        """CPU in percent of one core for "client" and each group over the interval.

        "machine" is every core's busy time (200 % = two cores saturated) and "other"
        what of it none of ours used: another program competing for the CPUs.
        """
        wall = max(end.wall - start.wall, 1e-6)
        usage = {"client": round(100.0 * (end.self_secs - start.self_secs) / wall, 1)}
        for name, after in end.groups.items():
            before = start.groups.get(name, {})
            ticks = sum(max(0, t - before.get(pid, 0)) for pid, t in after.items())
            usage[name] = round(100.0 * ticks / CLOCK_TICKS_PER_SEC / wall, 1)
        machine = 100.0 * (end.machine_ticks - start.machine_ticks)
        usage["machine"] = round(machine / CLOCK_TICKS_PER_SEC / wall, 1)
        ours = sum(v for k, v in usage.items() if k != "machine")
        usage["other"] = round(max(0.0, usage["machine"] - ours), 1)
        usage["wall_secs"] = round(wall, 2)
        return usage
