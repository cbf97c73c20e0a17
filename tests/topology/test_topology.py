"""Several machines: two hosts behind nginx, a Redis Cluster, three PostgreSQL
servers (`make cluster`'s topology, tests/topology/conftest.py).

Each scenario prints its numbers (messages sent, delivered exactly once, lost,
time taken) for the CI log.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from typing import Any

import psutil
import pytest
import requests

from messenger.embedded.topology import REDIS_SLOTS
from tests.topology.conftest import (
    Api,
    Listener,
    Topology,
    User,
    assert_exactly_once,
    finish_all,
    processes_of_server,
    report,
    signal_all,
    slot_of,
    wait_for,
)

# A wake that works answers a held poll within this; a lost one would leave the
# poll held to its timeout (POLL_SECS), far longer.
WAKE_SECS = 3.0
# With the dispatcher's 5 s block on a node that lost the slot, a wake across a
# slot move may wait for that block to end once.
SLOT_MOVE_WAKE_SECS = 8.0
# A send answers once its own transaction commits, whatever the other servers
# do: milliseconds; one that waited on the stopped server's part of its
# fan-out took a second or more. Generous for a loaded machine.
SEND_SECS_MAX = 0.5


def users_on(api: Api, server: int, count: int) -> list[User]:
    """Users whose shard lives on PostgreSQL server 1 or 2 (bounded tries)."""
    found: list[User] = []
    for _ in range(count * 12):
        user = api.user()
        if user.server == server:
            found.append(user)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} users on pg{server}")


def group_on_server(api: Api, owner: User, members: list[User], server: int) -> int:
    """A group whose conversation shard lives on the given server."""
    for _ in range(40):
        cid = api.group(owner, members)
        if (1 if cid % 16 < 8 else 2) == server:
            return cid
    raise AssertionError(f"no conversation on pg{server}")


def test_poll_held_on_host1_is_woken_by_a_send_through_host2(
    topology: Topology,
) -> None:
    started = time.monotonic()
    proxy, host1, host2 = (
        Api(topology.url),
        Api(topology.host("host1")),
        Api(topology.host("host2")),
    )
    alice, bob, carol = proxy.user(), proxy.user(), proxy.user()
    cid = proxy.group(alice, [bob, carol])
    # Bob's poll is held on host 1 itself; Carol's through nginx.
    listeners = [
        Listener(host1, bob, host1.head(bob)).start(),
        Listener(proxy, carol, proxy.head(carol)).start(),
    ]
    time.sleep(0.5)  # the polls are held
    sent_at = time.monotonic()
    assert host2.send(alice, cid, "across hosts").status_code == 201
    try:
        for listener in listeners:
            wait_for(
                lambda li=listener: bool(li.messages(cid)), WAKE_SECS, "woken by host 2"
            )
            arrival = listener.arrival(cid, 1)
            assert arrival is not None and arrival - sent_at < WAKE_SECS
    finally:
        finish_all(listeners)
    for listener in listeners:
        assert_exactly_once(listener, cid, [1])
    report(
        "cross-host wake",
        sent=1,
        delivered_exactly_once=2,
        lost=0,
        secs=round(time.monotonic() - started, 1),
    )


def test_kill_9_of_host1_while_polls_are_held_loses_nothing(
    topology: Topology,
) -> None:
    started = time.monotonic()
    proxy, host2 = Api(topology.url), Api(topology.host("host2"))
    sender = proxy.user()
    members = [proxy.user() for _ in range(6)]
    cid = proxy.group(sender, members)
    listeners = [Listener(proxy, m, proxy.head(m)).start() for m in members]
    # Polls held on both hosts (nginx spreads them), as host 1's /metrics says.
    wait_for(lambda: _held_polls(topology, "host1") > 0, 5, "polls on host 1")
    host1_pid = topology.state.host_pids["host1"]
    sent: list[int] = []
    for n in range(30):
        if n == 10:
            os.killpg(host1_pid, signal.SIGKILL)  # the whole host: master and workers
        r = host2.send(sender, cid, f"m{n}")
        assert r.status_code == 201, r.text
        sent.append(r.json()["message"]["seq"])
        time.sleep(0.05)
    try:
        for listener in listeners:
            wait_for(
                lambda li=listener: len(li.messages(cid)) >= len(sent),
                30,
                f"user {listener.user.id} got every message",
            )
    finally:
        finish_all(listeners)
    for listener in listeners:
        assert_exactly_once(listener, cid, sent)
    # The supervisor starts host 1 again; the next scenarios have both hosts.
    wait_for(
        lambda: _host_ready(topology, "host1", host1_pid), 60, "host 1 back", step=0.5
    )
    report(
        "kill -9 of host 1",
        sent=len(sent),
        recipients=len(listeners),
        delivered_exactly_once=len(sent) * len(listeners),
        lost=0,
        client_retries=sum(li.errors for li in listeners),
        secs=round(time.monotonic() - started, 1),
    )


def _held_polls(topology: Topology, name: str) -> float:
    r = requests.get(
        topology.host(name) + "/metrics",
        headers={"Authorization": f"Bearer {topology.state.metrics_token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith("messenger_held_polls "):
            return float(line.split()[1])
    return 0.0


def _host_ready(topology: Topology, name: str, old_pid: int) -> bool:
    topology.refresh()
    if topology.state.host_pids[name] == old_pid:
        return False
    try:
        url = topology.host(name) + "/readyz"
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _spread_over_nodes(topology: Topology, users: list[User]) -> int:
    """How many Redis nodes hold these users' `conn:` keys."""
    nodes = topology.redis_nodes()
    try:
        slots = nodes[0].execute_command("CLUSTER", "SLOTS")
    finally:
        for node in nodes:
            node.close()
    owners = set()
    for user in users:
        slot = slot_of(f"conn:{user.id}")
        for first, last, primary, *_ in slots:
            if first <= slot <= last:
                owners.add(int(primary[1]))
    return len(owners)


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_presence_typing_rate_limits_and_push_across_hash_slots(
    topology: Topology,
) -> None:
    started = time.monotonic()
    proxy = Api(topology.url)
    users = [proxy.user() for _ in range(6)]
    assert _spread_over_nodes(topology, users) >= 2
    owner, *others = users
    cid = proxy.group(owner, others)
    # Added by the owner, the others hold a message request: their presence is
    # shown once they accept it (API.md, "Who sees whose presence").
    for user in others:
        r = requests.post(
            f"{proxy.url}/v1/conversations/{cid}/accept",
            headers=user.headers,
            timeout=10,
        )
        assert r.status_code == 204, r.text
    listeners = [Listener(proxy, u, proxy.head(u)).start() for u in users[:4]]
    try:
        time.sleep(1.0)
        # Presence: read across slots (one GET per user, no cross-slot MGET).
        r = requests.get(
            proxy.url + "/v1/presence",
            params={"user_ids": ",".join(str(u.id) for u in users)},
            headers=owner.headers,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        presence = r.json()["presence"]
        assert {presence[str(u.id)]["status"] for u in users[:4]} == {"online"}
        assert {presence[str(u.id)]["status"] for u in users[4:]} == {"offline"}

        # Typing from users in different slots reaches the held polls; a
        # second indicator at once is limited (its window key is per user and
        # conversation, one slot per script call).
        for typer in users[:3]:
            first = requests.post(
                f"{proxy.url}/v1/conversations/{cid}/typing",
                headers=typer.headers,
                timeout=10,
            )
            assert first.status_code == 204, first.text
            again = requests.post(
                f"{proxy.url}/v1/conversations/{cid}/typing",
                headers=typer.headers,
                timeout=10,
            )
            assert again.status_code == 429 and again.headers["Retry-After"]

        def typers_seen() -> set[int]:
            return {
                e["user_id"] for _, e in listeners[3].events if e["type"] == "typing"
            }

        wait_for(
            lambda: typers_seen() >= {u.id for u in users[:3]},
            WAKE_SECS,
            "typing from three slots",
        )

        # Push: the offline members have webhooks; a message reaches them.
        _Hooks.received = []
        hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
        hook_thread = threading.Thread(target=hooks.serve_forever, daemon=True)
        hook_thread.start()
        try:
            for offline in users[4:]:
                r = requests.post(
                    proxy.url + "/v1/devices",
                    headers=offline.headers,
                    json={
                        "kind": "webhook",
                        "url": f"http://127.0.0.1:{hooks.server_port}/u{offline.id}",
                    },
                    timeout=10,
                )
                assert r.status_code == 201, r.text
            # The users' last polls are older than the grace window only after
            # 30 s; these two never polled, so they are offline already.
            assert proxy.send(owner, cid, "push me").status_code == 201
            wait_for(lambda: len(_Hooks.received) >= 2, 20, "two pushes", step=0.2)
        finally:
            hooks.shutdown()
            hooks.server_close()
            hook_thread.join(timeout=5)
    finally:
        finish_all(listeners)
    pushed_to = {p.get("user_id") for p in _Hooks.received}
    assert pushed_to >= {u.id for u in users[4:]}, _Hooks.received
    report(
        "presence, typing, rate limits, push across slots",
        users=len(users),
        redis_nodes_used=_spread_over_nodes(topology, users),
        pushes=len(_Hooks.received),
        lost=0,
        secs=round(time.monotonic() - started, 1),
    )


def _move_slot(topology: Topology, slot: int) -> tuple[int, int]:
    """Move one hash slot to another master, keys and all (what `redis-cli
    --cluster reshard` does for one slot); returns (from port, to port)."""
    nodes = topology.redis_nodes()
    try:
        ids = [n.execute_command("CLUSTER", "MYID") for n in nodes]
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
        slots = nodes[0].execute_command("CLUSTER", "SLOTS")
        source_port = next(
            int(p[1]) for first, last, p, *_ in slots if first <= slot <= last
        )
        ports = topology.state.redis_ports
        src = ports.index(source_port)
        dst = (src + 1) % len(ports)
        nodes[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
        nodes[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        for _ in range(1000):
            batch = nodes[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not batch:
                break
            # The nodes share one password (requirepass): MIGRATE needs it too.
            password = nodes[dst].connection_pool.connection_kwargs["password"]
            nodes[src].execute_command(
                "MIGRATE", "127.0.0.1", ports[dst], "", 0, 5000,
                "AUTH", password, "KEYS", *batch,
            )  # fmt: skip
        for node in nodes:
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        return source_port, ports[dst]
    finally:
        for node in nodes:
            node.close()


def test_slot_moved_mid_stream_loses_no_wake(topology: Topology) -> None:
    started = time.monotonic()
    proxy, host2 = Api(topology.url), Api(topology.host("host2"))
    sender, reader = proxy.user(), proxy.user()
    cid = proxy.group(sender, [reader])
    listener = Listener(proxy, reader, proxy.head(reader)).start()
    time.sleep(1.0)
    # The slots of the reader's registration and of the wake lists of the
    # workers holding its polls.
    nodes = topology.redis_nodes()
    try:
        workers: set[str] = set()
        for node in nodes:
            try:
                found = node.zrange(f"conn:{reader.id}", 0, -1)
            except Exception:  # noqa: BLE001 - MOVED from the nodes not holding it
                continue
            workers |= {w.decode() for w in found}
    finally:
        for node in nodes:
            node.close()
    assert workers, "the reader's poll is registered"
    slots = {slot_of(f"conn:{reader.id}")} | {slot_of(f"wake:{w}") for w in workers}
    assert all(0 <= s < REDIS_SLOTS for s in slots)
    sent_at: dict[int, float] = {}
    moves = []
    try:
        for n in range(20):
            if n == 8:
                moves = [_move_slot(topology, s) for s in sorted(slots)]
            r = host2.send(sender, cid, f"s{n}")
            assert r.status_code == 201, r.text
            sent_at[r.json()["message"]["seq"]] = time.monotonic()
            time.sleep(0.2)
        wait_for(lambda: len(listener.messages(cid)) >= 20, 30, "every message")
    finally:
        listener.finish()
    assert_exactly_once(listener, cid, sorted(sent_at))
    delays = []
    for seq, at in sent_at.items():
        arrival = listener.arrival(cid, seq)
        assert arrival is not None
        delays.append(arrival - at)
    assert max(delays) < SLOT_MOVE_WAKE_SECS, delays
    report(
        "slot moved mid-stream",
        slots_moved=len(moves),
        sent=len(sent_at),
        delivered_exactly_once=len(sent_at),
        lost=0,
        slowest_wake_secs=round(max(delays), 2),
        secs=round(time.monotonic() - started, 1),
    )


@pytest.mark.parametrize("outage", ["stopped", "sigstopped"])
def test_one_postgresql_server_down_hurts_only_its_own_members(
    topology: Topology, outage: str
) -> None:
    started = time.monotonic()
    proxy = Api(topology.url)
    near = users_on(proxy, 1, 3)  # on pg1, with the conversation
    far = users_on(proxy, 2, 2)  # on pg2, the server that goes down
    sender = near[0]
    cid = group_on_server(proxy, sender, near[1:] + far, 1)
    far_cursors = {u.id: proxy.head(u) for u in far}
    listeners = [Listener(proxy, u, proxy.head(u)).start() for u in near[1:]]
    time.sleep(0.5)
    pg2 = topology.pg(2)
    pid = pg2.pid
    assert pid is not None
    stopped_processes: list[psutil.Process] = []
    sent: list[int] = []
    send_secs: list[float] = []
    try:
        if outage == "stopped":
            pg2.stop()
        else:
            stopped_processes = processes_of_server(pid)
            signal_all(stopped_processes, signal.SIGSTOP)
        for n in range(10):
            t0 = time.monotonic()
            r = proxy.send(sender, cid, f"{outage} {n}")
            send_secs.append(time.monotonic() - t0)
            assert r.status_code == 201, r.text
            sent.append(r.json()["message"]["seq"])
        # Members on the healthy server have every message at once.
        for listener in listeners:
            wait_for(
                lambda li=listener: len(li.messages(cid)) >= len(sent),
                WAKE_SECS + 2,
                "near members served during the outage",
            )
        ready = requests.get(proxy.url + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        strict = requests.get(proxy.url + "/readyz/strict", timeout=10)
        assert strict.status_code == 503, strict.text
    finally:
        if outage == "stopped":
            pg2.start()
        else:
            signal_all(stopped_processes, signal.SIGCONT)
    back_at = time.monotonic()
    far_listeners: list[Listener] = []
    try:
        # The far members get everything once the server is back.
        far_listeners += [Listener(proxy, u, far_cursors[u.id]).start() for u in far]
        for listener in far_listeners:
            wait_for(
                lambda li=listener: len(li.messages(cid)) >= len(sent),
                40,
                "far members caught up",
                step=0.2,
            )
        catch_up = time.monotonic() - back_at
    finally:
        finish_all(listeners + far_listeners)
    for listener in listeners + far_listeners:
        assert_exactly_once(listener, cid, sent)
    # Seqs of the conversation are gapless.
    assert sent == list(range(sent[0], sent[0] + len(sent)))
    assert max(send_secs) < SEND_SECS_MAX, send_secs
    report(
        f"pg2 {outage}",
        sent=len(sent),
        delivered_exactly_once=len(sent) * (len(listeners) + len(far_listeners)),
        lost=0,
        slowest_send_secs=round(max(send_secs), 2),
        far_catch_up_secs=round(catch_up, 1),
        secs=round(time.monotonic() - started, 1),
    )


def test_a_redis_master_down_degrades_polls_and_they_recover(
    topology: Topology,
) -> None:
    """Wakes and polls through a master's failure (no replica: its slots are
    unserved) and its return."""
    from messenger.embedded.topology import redis_node

    started = time.monotonic()
    proxy = Api(topology.url)
    sender = proxy.user()
    members = [proxy.user() for _ in range(5)]
    assert _spread_over_nodes(topology, members) >= 2
    cid = proxy.group(sender, members)
    listeners = [Listener(proxy, m, proxy.head(m)).start() for m in members]
    time.sleep(1.0)
    number = 2
    node = redis_node(
        topology.root,
        number,
        topology.state.redis_ports[number - 1],
        topology.state.redis_bus_ports[number - 1],
    )
    sent: list[int] = []
    outage_delays: list[float] = []
    try:
        node.stop()
        for n in range(8):
            t0 = time.monotonic()
            r = proxy.send(sender, cid, f"redis down {n}")
            assert r.status_code == 201, r.text  # rate limiter fails open
            sent.append(r.json()["message"]["seq"])
            for listener in listeners:
                wait_for(
                    lambda li=listener: len(li.messages(cid)) >= len(sent),
                    6,
                    "a poll answered while a master is down",
                )
            outage_delays.append(time.monotonic() - t0)
    finally:
        node.start()
    cluster_ok = wait_for(lambda: _cluster_ok(topology), 30, "cluster ok again")
    # Back: a new user's poll is woken at once again.
    reader = proxy.user()
    cid2 = proxy.group(sender, [reader])
    fresh = Listener(proxy, reader, proxy.head(reader)).start()
    try:
        wait_for(lambda: _readyz_strict_everywhere(topology), 30, "strict ready")
        time.sleep(6)  # dispatchers of the restarted node's lists reconnect (≤ 5 s)
        assert proxy.send(sender, cid2, "after").status_code == 201
        recovered = wait_for(lambda: bool(fresh.messages(cid2)), WAKE_SECS, "woken")
    finally:
        finish_all([*listeners, fresh])
    for listener in listeners:
        assert_exactly_once(listener, cid, sent)
    report(
        "a Redis master down and back",
        sent=len(sent),
        delivered_exactly_once=len(sent) * len(listeners),
        lost=0,
        slowest_delivery_while_down_secs=round(max(outage_delays), 2),
        cluster_ok_after_secs=round(cluster_ok, 1),
        wake_after_recovery_secs=round(recovered, 2),
        secs=round(time.monotonic() - started, 1),
    )


def _cluster_ok(topology: Topology) -> bool:
    nodes = topology.redis_nodes()
    try:
        return all(
            b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO") for n in nodes
        )
    except Exception:  # noqa: BLE001 - a node still starting
        return False
    finally:
        for n in nodes:
            n.close()


def _readyz_strict_everywhere(topology: Topology) -> bool:
    try:
        return all(
            requests.get(url + "/readyz/strict", timeout=5).status_code == 200
            for url in topology.state.hosts.values()
        )
    except requests.RequestException:
        return False
