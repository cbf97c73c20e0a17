"""Describing a database for logs and /readyz without its credentials."""

import pytest

from messenger.settings import load
from messenger.storage.pools import describe_dsn


@pytest.mark.parametrize(
    ("dsn", "described"),
    [
        ("postgresql://u:pw@db1:5433/m", "db1:5433/m"),
        ("postgresql://u@db1/m", "db1:5432/m"),
        (
            "postgresql://u:pw@a:5432,b:5433/m?target_session_attrs=read-write",
            "a:5432,b:5433/m",
        ),
        ("postgresql://u@[::1]:5440,b/m", "::1:5440,b:5432/m"),
    ],
)
def test_describe_dsn_names_hosts_without_credentials(dsn: str, described: str) -> None:
    assert describe_dsn(dsn) == described
    assert "pw" not in describe_dsn(dsn)


def test_multi_host_dsn_is_accepted_at_start() -> None:
    dsn = "postgresql://u@a:5432,b:5432/m?target_session_attrs=read-write"
    settings = load({"MESSENGER_DATABASE_URL": dsn, "MESSENGER_SHARDS": "2"})
    assert describe_dsn(settings.resolved_directory_url()) == "a:5432,b:5432/m"
