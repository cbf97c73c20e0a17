"""Running PostgreSQL's programs as an unprivileged system user when we are root.

PostgreSQL refuses to run as root. As root we run initdb, pg_ctl and the server as
the `postgres` system user, creating that user on a machine that has none (a fresh
machine with no PostgreSQL package).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; as root we run it as this system user.
PG_SYSTEM_USER = "postgres"


@dataclass(frozen=True)
class Account:
    """The system user PostgreSQL runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _create_system_user(name: str) -> None:
    """Create a system user with no login and no home (what a package would do)."""
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    logger.warning("creating the system user %r to run PostgreSQL as", name)
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "PostgreSQL (created by messenger)",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode not in (0, 9):  # 9: the user appeared meanwhile
        raise RuntimeError(
            f"PostgreSQL refuses to run as root and there is no '{name}' system "
            f"user; creating it failed ({result.stderr.strip()}): run "
            f"`useradd --system {name}`, or run as a non-root user."
        )


def postgres_account() -> Account | None:
    """The account to run PostgreSQL as: None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        _create_system_user(PG_SYSTEM_USER)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def clean_env(account: Account | None) -> dict[str, str]:
    """Our environment without PG* variables, with the account's HOME and USER."""
    # PGDATA, PGPORT, PGOPTIONS... from the caller's shell must not steer our tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    return env


def run_as(
    account: Account | None,
    args: Sequence[str],
    *,
    cwd: Path,
    timeout_secs: float,
) -> subprocess.CompletedProcess[str]:
    """Run a program as account (as ourselves when None), capturing its output.

    Equivalent to `runuser -u postgres -- ...` without needing runuser.
    """
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=clean_env(account),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=max(timeout_secs, 1.0),
        check=False,
        user=None if account is None else account.uid,
        group=None if account is None else account.gid,
        extra_groups=None if account is None else list(account.groups),
    )


def can_enter(account: Account, folder: Path) -> bool:
    """Whether account can reach folder: it and every parent must be enterable."""
    result = run_as(
        account, ["test", "-x", str(folder)], cwd=Path("/"), timeout_secs=10
    )
    return result.returncode == 0
