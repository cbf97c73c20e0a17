"""Flame graphs of the server while a scenario runs (`--profile`), with py-spy.

py-spy samples the gunicorn master and all its workers (--subprocesses) from outside,
so the server runs unchanged; it needs ptrace rights (root, or CAP_SYS_PTRACE).
Sampling is non-blocking to disturb the figures less; still, figures from a profiled
run are not the ones to compare with the targets.
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
from gevent import subprocess

SAMPLES_PER_SEC = 250
# py-spy writes the SVG when interrupted; a large profile takes a moment.
WRITE_TIMEOUT_SECS = 30


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """Records one flame graph per named phase into out_dir when enabled.

    Args:
        master_pid: returns the gunicorn master's pid at the time a phase starts.
    """

    def __init__(
        self,
        enabled: bool,
        out_dir: Path,
        master_pid: Callable[[], int | None],
        say: Callable[[str], None],
    ) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self._master_pid = master_pid
        self._say = say
        self.files: dict[str, str] = {}  # phase → SVG path
        self.errors: dict[str, str] = {}
        self._py_spy = find_py_spy() if enabled else None
        if enabled and self._py_spy is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")

    @contextmanager
    def record(self, phase: str) -> Iterator[None]:
        """Profile the server for the duration of the with block."""
        pid = self._master_pid() if self.enabled else None
        if not self.enabled or pid is None or self._py_spy is None:
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        svg = self.out_dir / f"profile-{phase}.svg"
        log = self.out_dir / f"profile-{phase}.log"
        with open(log, "wb") as log_file:
            spy = subprocess.Popen(
                [
                    self._py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--rate",
                    str(SAMPLES_PER_SEC),
                    "--format",
                    "flamegraph",
                    "--output",
                    str(svg),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        gevent.sleep(0.5)  # let it attach before the phase starts
        try:
            yield
        finally:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=WRITE_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=5)
            if svg.exists():
                self.files[phase] = str(svg)
                self._say(f"[profile] {phase}: {svg}")
            else:
                message = log.read_text(errors="replace").strip()[-500:]
                self.errors[phase] = message or f"py-spy exited {spy.returncode}"
                self._say(f"[profile] {phase}: no flame graph ({self.errors[phase]})")


_FRAME = re.compile(
    r"<title>(?P<name>[^<]*?) \((?P<where>[^()]*)\) "
    r"\(\d[\d,]* samples?, [^)]*\)</title>"
    r'<rect[^>]*?y="(?P<y>[\d.]+)"[^>]*?fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)


def top_frames(svg: Path, count: int = 12) -> list[tuple[str, float, float]]:
    """The functions a py-spy flame graph spent most samples in: (function,
    self %, total %) by self time, summed over the function's lines.

    `python -m messenger.bench.profiling FILE.svg` prints them.
    """
    frames = []
    for m in _FRAME.finditer(svg.read_text(errors="replace")):
        where = m["where"].rsplit(":", 1)[0]
        frames.append(
            (f"{m['name']} ({where})", float(m["y"]), int(m["x"]), int(m["w"]))
        )
    if not frames:
        return []
    total = max(x + w for _, _, x, w in frames)
    rows_by_y: dict[float, list[tuple[int, int]]] = {}
    for _, y, x, w in frames:
        rows_by_y.setdefault(y, []).append((x, w))
    steps = sorted(rows_by_y)
    step = min((b - a for a, b in zip(steps, steps[1:], strict=False)), default=16.0)
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    for name, y, x, w in frames:
        children = sum(cw for cx, cw in rows_by_y.get(y + step, ()) if x <= cx < x + w)
        own[name] = own.get(name, 0) + w - children
        inclusive[name] = inclusive.get(name, 0) + w
    ranked = sorted(own, key=lambda n: own[n], reverse=True)[:count]
    return [
        (n, round(100 * own[n] / total, 1), round(100 * inclusive[n] / total, 1))
        for n in ranked
    ]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(path)
        for name, self_pct, total_pct in top_frames(Path(path)):
            print(f"  {self_pct:5.1f} % self {total_pct:5.1f} % total  {name}")
