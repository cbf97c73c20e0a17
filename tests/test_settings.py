"""Settings: one declaration gives the loader, its checks and the README's table."""

import dataclasses
import math
import re
from pathlib import Path

import pytest

from messenger import settings as settings_module
from messenger.settings import (
    TABLES,
    ConfigError,
    Settings,
    load,
    markdown_table,
    variable,
)

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_readme_tables_are_the_declared_settings(table: str) -> None:
    marked = re.compile(rf"<!-- {table}:start[^>]*-->\n(.*?)<!-- {table}:end -->", re.S)
    match = marked.search(README.read_text())
    assert match, f"README.md has no table between the {table} markers"
    assert match[1] == TABLES[table](), (
        f"README's {table} table differs from messenger/settings.py: paste the "
        f"output of `python -m messenger.settings --markdown {table}` between the "
        "markers"
    )


def test_table_lists_every_field_with_its_default() -> None:
    table = markdown_table()
    for f in dataclasses.fields(Settings):
        assert f"| `{variable(f.name)}` |" in table
    assert "| `MESSENGER_SHARDS` | `64` |" in table
    assert "| `MESSENGER_PUSH_ALLOW_PRIVATE` | `0` |" in table
    assert "| `MESSENGER_DB_CHECKOUT_TIMEOUT_SECS` | `2` |" in table


def test_unset_variables_give_the_declared_defaults() -> None:
    loaded = load({})
    for f in dataclasses.fields(Settings):
        if f.name != "secret_key":
            assert getattr(loaded, f.name) == f.default, f.name
    assert len(loaded.secret_key) >= 16


def _bounded() -> list[tuple[str, float]]:
    """(field, a value above its bound) for every number with a fixed bound."""
    found = []
    for f in dataclasses.fields(Settings):
        spec = f.metadata["setting"]
        if isinstance(spec.hi, int | float):
            found.append((f.name, spec.hi + 1))
    return found


@pytest.mark.parametrize(("name", "value"), _bounded())
def test_a_number_out_of_bounds_stops_start_up_naming_the_variable(
    name: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=f"^{variable(name)} must be between "):
        load({variable(name): str(value)})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_a_float_that_is_not_finite_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="^MESSENGER_PUSH_TIMEOUT_SECS "):
        load({"MESSENGER_PUSH_TIMEOUT_SECS": raw})
    assert math.isfinite(load({}).push_timeout_secs)


def test_the_poll_default_is_bounded_by_the_configured_maximum() -> None:
    assert (
        load({"MESSENGER_POLL_TIMEOUT_MAX_SECS": "10"}).poll_timeout_default_secs == 10
    )
    with pytest.raises(
        ConfigError,
        match="^MESSENGER_POLL_TIMEOUT_DEFAULT_SECS must be between 0 and 10, not 11.",
    ):
        load(
            {
                "MESSENGER_POLL_TIMEOUT_MAX_SECS": "10",
                "MESSENGER_POLL_TIMEOUT_DEFAULT_SECS": "11",
            }
        )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MESSENGER_SHARDS": "x"},
            "MESSENGER_SHARDS must be a whole number, not 'x'.",
        ),
        ({"MESSENGER_LOG_JSON": "maybe"}, "MESSENGER_LOG_JSON must be 1 or 0"),
        (
            {"MESSENGER_LOG_LEVEL": "loud"},
            "MESSENGER_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR.",
        ),
        (
            {"MESSENGER_SECRET_KEY": "short"},
            "MESSENGER_SECRET_KEY must be at least 16 characters.",
        ),
        (
            {"MESSENGER_METRICS_TOKEN": "short"},
            "MESSENGER_METRICS_TOKEN must be at least 16 characters.",
        ),
        ({"MESSENGER_REDIS_URL": "http://x"}, "MESSENGER_REDIS_URL must be a redis://"),
        (
            {"MESSENGER_DATABASE_URL": "mysql://x"},
            "MESSENGER_DATABASE_URL must be a postgresql:// URL",
        ),
        (
            {"MESSENGER_SHARDS": "4", "MESSENGER_SHARD_MAP": "0-2=postgresql://a/b"},
            "MESSENGER_SHARD_MAP must cover shards 0..3",
        ),
        ({"MESSENGER_RATE_LIMITS": "send=x"}, "MESSENGER_RATE_LIMITS: send must"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load(env)
    assert str(raised.value).startswith(message)


def test_values_are_parsed_by_their_declared_type() -> None:
    loaded = load(
        {
            "MESSENGER_SHARDS": "4",
            "MESSENGER_SHARD_MAP": "0-1=postgresql://a/b;2-3=postgresql://c/d",
            "MESSENGER_PUSH_ALLOW_PRIVATE": "yes",
            "MESSENGER_DATA_DIR": "/srv/m",
            "MESSENGER_LOG_LEVEL": "debug",
            "MESSENGER_CORS_ORIGINS": "https://a.example/, http://b:3000",
            "MESSENGER_PUSH_COALESCE_SECS": "0.5",
        }
    )
    assert [r.dsn for r in loaded.shard_map] == ["postgresql://a/b", "postgresql://c/d"]
    assert loaded.push_allow_private is True
    assert loaded.data_dir == Path("/srv/m")
    assert loaded.log_level == "DEBUG"
    assert loaded.cors_origins == ("https://a.example", "http://b:3000")
    assert loaded.push_coalesce_secs == 0.5


def test_every_field_is_declared_with_setting() -> None:
    for f in dataclasses.fields(Settings):
        assert isinstance(f.metadata.get("setting"), settings_module.Spec), f.name
