"""Shared fixtures: real PostgreSQL (two physical databases) and real Redis,
started once per test session under /var/tmp, and the app built on them.

Nothing outlives the run: the servers are stopped and their folder removed when the
session ends, fails, errors in a fixture or is interrupted (Ctrl-C, SIGTERM); a
folder left by a run that was killed outright is cleaned up by the next run."""

from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import redis as redis_lib  # noqa: E402

from messenger.embedded import (  # noqa: E402
    EmbeddedPostgres,
    EmbeddedRedis,
    LocalServers,
    free_port,
    is_process_running,
)
from messenger.settings import Settings, load  # noqa: E402

# Tests use few shards (fast migrations) spread over two physical databases, so
# cross-database routing is exercised everywhere.
TEST_SHARDS = 8


@dataclass
class Services:
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        """MESSENGER_* variables pointing at the test services."""
        env = {
            "MESSENGER_SHARDS": str(TEST_SHARDS),
            "MESSENGER_SHARD_MAP": (
                f"0-3={self.pg.dsn('m1')};4-{TEST_SHARDS - 1}={self.pg.dsn('m2')}"
            ),
            "MESSENGER_DIRECTORY_URL": self.pg.dsn("m1"),
            # m3 holds no shard until a test moves one there (tests/storage/
            # test_moves.py), on the same server: logical replication between
            # databases of one server works with a slot made separately.
            "MESSENGER_DATABASES": ";".join(
                f"{name}={self.pg.dsn(name)}" for name in ("m1", "m2", "m3")
            ),
            "MESSENGER_REDIS_URL": self.redis.url,
            "MESSENGER_RATE_LIMITS": "off",
            "MESSENGER_PUSH_ALLOW_PRIVATE": "1",
            "MESSENGER_LOG_LEVEL": "WARNING",
            "MESSENGER_SWEEPER_INTERVAL_SECS": "0.5",
            "MESSENGER_DB_POOL_SIZE": "20",
            # Attachments (and any other data) inside the run's folder.
            "MESSENGER_DATA_DIR": str(self.root / "data"),
        }
        env.update(extra)
        return env


# Each test run's servers live in a folder named with this prefix, with the pid of
# the pytest process that owns it in OWNER_FILE.
RUN_FOLDER_PREFIX = "messenger-test-"
OWNER_FILE = "owner.pid"


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # pytest tears fixtures down on KeyboardInterrupt, not on SIGTERM's default
    # (an immediate exit that would leave the servers running).
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what tests/system holds, so `make test-fast` can leave it out."""
    tests_dir = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(tests_dir / "system"):
            item.add_marker(pytest.mark.system)
        if item.path.name == "test_browser.py":
            item.add_marker(pytest.mark.browser)


def remove_abandoned_runs(parent: Path = Path("/var/tmp")) -> list[Path]:
    """Stop the servers of earlier runs whose pytest died (kill -9) and delete
    their folders; return the folders removed."""
    removed = []
    for folder in parent.glob(f"{RUN_FOLDER_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up by a live run
        if is_process_running(owner):
            continue
        # The session's servers, and any a test started in a folder of its own
        # inside the run's folder (tests/system/test_outages.py).
        for inner in [p for p in folder.iterdir() if p.is_dir()]:
            if (inner / "postgres").is_dir() or (inner / "redis").is_dir():
                LocalServers(inner, pg_port=0, redis_port=0).stop()
        LocalServers(folder, pg_port=0, redis_port=0, remove_on_stop=True).stop()
        removed.append(folder)
    return removed


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    remove_abandoned_runs()
    root = Path(tempfile.mkdtemp(prefix=RUN_FOLDER_PREFIX, dir="/var/tmp"))
    root.chmod(0o755)
    (root / OWNER_FILE).write_text(str(os.getpid()))
    servers = LocalServers(
        root,
        pg_port=free_port(),
        redis_port=free_port(),
        databases=("m1", "m2", "m3"),
        persistent=False,
        remove_on_stop=True,
    )
    with servers:
        yield Services(servers.pg, servers.redis, root)


@pytest.fixture(scope="session", autouse=True)
def production_password_hasher() -> Iterator[Any]:
    """Sets the production Argon2id hasher aside (and yields it) while the
    in-process app hashes at the lowest cost: each test user costs two hashes.
    gunicorn (tests/system) runs the production cost."""
    from argon2 import PasswordHasher

    from messenger.services import accounts

    production = accounts.PASSWORD_HASHER
    patch = pytest.MonkeyPatch()
    patch.setattr(
        accounts,
        "PASSWORD_HASHER",
        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )
    yield production
    patch.undo()


@pytest.fixture(scope="session")
def settings(services: Services) -> Settings:
    from messenger.cli import cmd_migrate

    settings = load(services.env())
    cmd_migrate(settings)
    return settings


def settle_fanouts(timeout: float = 10.0) -> None:
    """Wait (bounded) until the fan-outs this worker runs behind answers (their
    parts on other databases: services/fanout.start_fan_out) have finished."""
    from messenger import runtime

    fanouts = runtime.get().background_fanouts
    assert fanouts.join(timeout=timeout), "background fan-outs never finished"


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Any]:
    from flask.testing import FlaskClient

    from messenger import bootstrap, create_app

    class SettlingClient(FlaskClient):
        """The in-process app's client: it returns an answer once the fan-outs
        its request left running behind it have finished too, so the test's
        next step sees every member's events and lists, as a client a moment
        later would. Members on the session's second database are fanned out
        that way; that answers do not wait for them is tested against gunicorn
        (tests/system/test_outages.py)."""

        def open(self, *args: Any, **kwargs: Any) -> Any:
            response = super().open(*args, **kwargs)
            settle_fanouts()
            return response

    app = create_app(settings)
    app.test_client_class = SettlingClient
    rt = app.extensions["messenger"]
    background = bootstrap.start(rt)
    # For tests that must pause this worker's background work (its sweeper
    # would fan out, with this shard map, outboxes of a rig using another).
    app.extensions["messenger.background"] = background
    yield app
    background.stop()
    rt.close()


@pytest.fixture(scope="module")
def in_process_sweeper_paused(app: Any) -> Iterator[None]:
    """Stop the in-process worker's outbox sweeper for a module, then start a
    new one: a gunicorn rig sharing a database but mapping shards elsewhere
    (tests/system/test_outages.py) must be the only one to sweep it."""
    import gevent

    from messenger.workers.sweeper import SweepLoop

    background = app.extensions["messenger.background"]
    background.sweeper.stop()
    yield
    background.sweeper = SweepLoop(background.rt)
    background.greenlets.append(gevent.spawn(background.sweeper.run))


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def redis(services: Services, app: Any) -> Iterator[redis_lib.Redis]:
    """A client of the test Redis, emptied (FLUSHDB) before the test.

    The in-process worker forgets which polls it had registered there, so it
    registers them again, and drops pushes it held for Redis; the push worker
    rebuilds device flags it finds missing.
    """
    from messenger import runtime
    from messenger.services import push

    client = redis_lib.Redis.from_url(services.redis.url)
    client.flushdb()
    runtime.get().registry.forget_all()
    push.held.clear()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def shards(app: Any) -> Any:
    """The shard router of the running app."""
    from messenger import runtime

    return runtime.get().router


def require_program(program: str, package: str) -> str:
    """The path of a program a test needs, else skip naming the package to install.

    CI installs every such package, so there (CI=true) a missing one fails instead.
    """
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        reason = f"{program} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must install it: see .ci/run")
        pytest.skip(reason)
    return path


def png_bytes(width: int = 4, height: int = 3, color: str = "red") -> bytes:
    """A small PNG made with Pillow (test data made here, not shipped)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


_handles = itertools.count(1)


def unique_handle(prefix: str = "u") -> str:
    return f"{prefix}{next(_handles)}_{secrets.token_hex(3)}"


@dataclass
class TestUser:
    id: int
    handle: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_user(client: Any) -> Any:
    """Register and log in a fresh user through the API."""

    def make(prefix: str = "u", display_name: str | None = None) -> TestUser:
        handle = unique_handle(prefix)
        password = "correct horse"
        body: dict[str, Any] = {"handle": handle, "password": password}
        if display_name:
            body["display_name"] = display_name
        created = client.post("/v1/users", json=body)
        assert created.status_code == 201, created.get_json()
        login = client.post(
            "/v1/sessions", json={"handle": handle, "password": password}
        )
        assert login.status_code == 201, login.get_json()
        return TestUser(
            created.get_json()["user"]["id"],
            handle,
            password,
            login.get_json()["token"],
        )

    return make


def auth_headers(user: TestUser) -> dict[str, str]:
    return user.headers


@pytest.fixture
def chat(client: Any) -> Any:
    """Helpers for conversations and messages through the API."""

    class Chat:
        def direct(self, a: TestUser, b: TestUser) -> int:
            r = client.post(
                "/v1/conversations",
                headers=a.headers,
                json={"kind": "direct", "user_id": b.id},
            )
            assert r.status_code in (200, 201), r.get_json()
            return int(r.get_json()["conversation"]["id"])

        def group(
            self, owner: TestUser, members: list[TestUser], title: str = "group"
        ) -> int:
            r = client.post(
                "/v1/conversations",
                headers=owner.headers,
                json={
                    "kind": "group",
                    "title": title,
                    "member_ids": [m.id for m in members],
                },
            )
            assert r.status_code == 201, r.get_json()
            return int(r.get_json()["conversation"]["id"])

        def send(
            self,
            user: TestUser,
            conversation_id: int,
            body: str = "hi",
            client_msg_id: str | None = None,
        ) -> dict[str, Any]:
            r = client.post(
                f"/v1/conversations/{conversation_id}/messages",
                headers=user.headers,
                json={
                    "client_msg_id": client_msg_id or secrets.token_hex(8),
                    "body": body,
                },
            )
            assert r.status_code in (200, 201), r.get_json()
            return r.get_json()["message"]  # type: ignore[no-any-return]

        def head(self, user: TestUser) -> str:
            r = client.get("/v1/events", headers=user.headers)
            assert r.status_code == 200, r.get_json()
            return r.get_json()["cursor"]  # type: ignore[no-any-return]

        def poll(
            self,
            user: TestUser,
            cursor: str,
            timeout: float = 0,
            limit: int | None = None,
        ) -> dict[str, Any]:
            url = f"/v1/events?after={cursor}&timeout={timeout}"
            if limit:
                url += f"&limit={limit}"
            r = client.get(url, headers=user.headers)
            assert r.status_code == 200, r.get_json()
            return r.get_json()  # type: ignore[no-any-return]

        def drain(
            self, user: TestUser, cursor: str
        ) -> tuple[list[dict[str, Any]], str]:
            """Every stored event after cursor (several polls), and the new cursor."""
            events: list[dict[str, Any]] = []
            for _ in range(1000):
                page = self.poll(user, cursor, limit=500)
                events.extend(page["events"])
                cursor = page["cursor"]
                if not page["more"]:
                    return events, cursor
            raise AssertionError("event stream did not end")

    return Chat()


def stored_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored events of a poll answer (ephemeral ones, e.g. a peer's presence
    announced while the poll read, have no id)."""
    return [e for e in events if "id" in e]


def wait_until_held(user_id: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until this worker's hub holds a poll of user_id."""
    import time

    import gevent

    from messenger import runtime

    hub = runtime.get().hub
    deadline = time.monotonic() + timeout
    while not hub.is_holding(user_id):
        assert time.monotonic() < deadline, "poll was never held"
        gevent.sleep(0.005)


def settle_presence(timeout: float = 5.0) -> None:
    """Wait (bounded) until this worker's presence tracker has written its notes
    and finished its announcements, so no presence event is still on its way."""
    import time

    import gevent

    from messenger.services import presence

    tracker = presence.tracker()
    assert tracker is not None
    deadline = time.monotonic() + timeout
    while not tracker.is_idle():
        assert time.monotonic() < deadline, "presence never settled"
        gevent.sleep(0.01)


@pytest.fixture
def override_settings(app: Any) -> Iterator[Any]:
    """Change runtime settings for one test: override_settings(rate_limits="on").

    Services read runtime.get().settings at call time; the original settings are
    restored after the test.
    """
    import dataclasses

    from messenger import runtime

    rt = runtime.get()
    original = rt.settings

    def override(**changes: Any) -> Settings:
        rt.settings = dataclasses.replace(rt.settings, **changes)
        return rt.settings

    try:
        yield override
    finally:
        rt.settings = original
