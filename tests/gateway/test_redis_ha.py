"""Redis high availability and sharding with real processes on loopback: a master with two
replicas watched by three `redis-server --sentinel` processes, whose master is SIGKILLed under
a steady REGISTER load; and a three-master `redis-cli --cluster create` cluster under two
gateway nodes that register users and carry a call between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway.config import ConfigError, load_config
from gateway.edge_guard import RedisBanList
from gateway.location import RedisLocationService
from gateway.location.resp_pipe import ClusterPipe
from gateway.redis_connect import RedisKind, open_redis, parse_redis_url
from gateway.users import RedisUserStore
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.redis_topologies import (
    ClusterSetup,
    SentinelSetup,
    start_cluster,
    start_sentinel_setup,
)
from tests.gateway.test_location import change, contact
from tests.support.ws_sip import WsSipUa, browser_sdp, ws_contact

DOMAIN = "ha.example.test"
# Every client connects from 127.0.0.1: the per-IP limits would refuse most of the load.
UNLIMITED_SOURCE = ["--max-connections-per-ip", "0", "--max-requests-per-ip", "0"]
LOAD_CLIENTS = 24
LOAD_PAUSE = 0.05  # between one client's REGISTERs
STEADY_SECONDS = 2.0  # of load before the master is killed
RECOVERY_TIMEOUT = 45.0  # a limit: Sentinel's failover takes a few seconds here


def test_redis_urls_name_one_server_a_sentinel_master_or_a_cluster() -> None:
    assert parse_redis_url("redis://127.0.0.1:6379/2").kind is RedisKind.SINGLE
    sentinel = parse_redis_url("redis+sentinel://:s%40cret@h1:26379,h2:26380/mymaster/3")
    assert sentinel.kind is RedisKind.SENTINEL
    assert sentinel.nodes == (("h1", 26379), ("h2", 26380))
    assert (sentinel.service, sentinel.db, sentinel.password) == ("mymaster", 3, "s@cret")
    cluster = parse_redis_url("redis+cluster://h1:7000,h2:7001/")
    assert cluster.kind is RedisKind.CLUSTER and cluster.nodes == (("h1", 7000), ("h2", 7001))
    for bad in ("redis+sentinel://h1:26379/", "redis+sentinel://h1/mymaster",
                "redis+cluster://h1:7000/2", "redis+sentinel://user:pw@/m"):
        with pytest.raises(ValueError, match="Redis URL") as refused:
            parse_redis_url(bad)
        assert "pw" not in str(refused.value)
    with pytest.raises(ConfigError, match="redis_replica_acks"):
        load_config(None, {"redis": "redis+cluster://h1:7000/", "redis_replica_acks": 1})


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    """Its own per test: the failover test kills the master."""
    setup = start_sentinel_setup(tmp_path / "sentinel", replicas=2)
    yield setup
    setup.processes.stop_all()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield setup
    setup.processes.stop_all()


@dataclass
class LoadClient:
    """One user re-registering in a loop on one Call-ID, as a browser refreshing often."""

    ua: WsSipUa
    password: str
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    last_ok_cseq: int = 0
    last_ok_at: float = 0.0
    statuses: list[int] = field(default_factory=list)
    retry_after_missing: int = 0

    async def run(self, until: asyncio.Event) -> None:
        contact = ws_contact(str(uuid.uuid4()), 1, user=self.ua.user, host=self.ua.host)
        while not until.is_set():
            self.cseq += 2  # the digest retry after a 401 takes the next number
            response = await self.ua.register(
                contacts=[f"{contact};expires=600"], expires=None, call_id=self.call_id,
                cseq=self.cseq,
            )
            self.statuses.append(response.status)
            if response.status == 200:
                self.last_ok_cseq = response.cseq.number
                self.last_ok_at = time.monotonic()
            elif response.status == 503 and response.get("retry-after") is None:
                self.retry_after_missing += 1
            await asyncio.sleep(LOAD_PAUSE)


async def test_a_sentinel_failover_under_register_load_loses_no_registration(
    gateway_factory: GatewayFactory, sentinel_setup: SentinelSetup,
) -> None:
    url = sentinel_setup.url()
    users = {f"user{i}": secrets.token_urlsafe(9) for i in range(LOAD_CLIENTS)}
    store = RedisUserStore(url)
    try:
        for name, password in users.items():
            await store.add(name, DOMAIN, password)
    finally:
        await store.close()
    gateway = await gateway_factory(
        domain=DOMAIN, transports=("ws",), redis_url=url, node_id="node-ha",
        extra_args=[*UNLIMITED_SOURCE, "--redis-replica-acks", "1"],
    )
    clients = [LoadClient(await WsSipUa.connect(gateway.ws_url, name, password, domain=DOMAIN),
                          password) for name, password in users.items()]
    # Bans travel through the same Redis: a listener subscribed before the failover must
    # receive a ban published after it.
    listener, publisher = RedisBanList(url), RedisBanList(url)
    bans_heard: list[str] = []
    await listener.start(lambda ip, _seconds: bans_heard.append(ip))
    stop = asyncio.Event()
    load = [asyncio.create_task(client.run(stop)) for client in clients]
    try:
        await _wait_until(lambda: all(c.last_ok_cseq for c in clients), 20.0, "first 200s")
        started = time.monotonic()
        await asyncio.sleep(STEADY_SECONDS)
        steady_rate = sum(len(c.statuses) for c in clients) / (time.monotonic() - started)
        old_master = sentinel_setup.master_address()
        killed_at = time.monotonic()
        sentinel_setup.processes.kill(old_master[1])
        await _wait_until(lambda: sentinel_setup.master_address() != old_master,
                          RECOVERY_TIMEOUT, "Sentinel promoting a replica")
        promoted_at = time.monotonic()
        # Recovered without a restart: every client registers again on the new master.
        await _wait_until(lambda: all(c.last_ok_at > promoted_at for c in clients),
                          RECOVERY_TIMEOUT, "every client's 200 after the failover")
        all_registered_at = time.monotonic()
        stop.set()
        await asyncio.gather(*load)
        async with asyncio.timeout(RECOVERY_TIMEOUT):
            while "192.0.2.7" not in bans_heard:
                with contextlib.suppress(RedisError):
                    await publisher.publish("192.0.2.7", 60)
                await asyncio.sleep(0.5)
        # No registration lost: the new master holds, for every AoR, the last REGISTER that
        # was answered 200 (or a later one), written before or after the failover. Read while
        # the clients are connected (a closed flow removes its bindings).
        new_master = sentinel_setup.master_address()
        location = RedisLocationService(f"redis://{new_master[0]}:{new_master[1]}/0")
        try:
            for client in clients:
                bindings = await location.lookup(f"sip:{client.ua.user}@{DOMAIN}")
                stored = [b.cseq for b in bindings if b.call_id == client.call_id]
                assert stored and stored[0] >= client.last_ok_cseq, (client.ua.user, stored)
        finally:
            await location.close()
    finally:
        stop.set()
        for task in load:
            task.cancel()
        for client in clients:
            await client.ua.close()
        await listener.close()
        await publisher.close()
    statuses = [status for client in clients for status in client.statuses]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert sum(client.retry_after_missing for client in clients) == 0
    assert gateway.returncode is None
    print(f"\nSentinel failover under load ({LOAD_CLIENTS} clients): master killed → replica "
          f"promoted {promoted_at - killed_at:.2f} s → every client registered again "
          f"{all_registered_at - killed_at:.2f} s; REGISTERs {len(statuses)} "
          f"(~{steady_rate:.0f}/s before the kill), "
          f"503 {statuses.count(503)}, registrations lost 0")


async def test_two_gateway_nodes_on_a_redis_cluster_register_and_call(
    gateway_factory: GatewayFactory, redis_cluster: ClusterSetup,
) -> None:
    url = redis_cluster.url()
    secret = secrets.token_hex(16)
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    nodes = [
        await gateway_factory(users=users if name == "node-a" else None, domain=DOMAIN,
                              transports=("udp", "tcp", "ws"), redis_url=url, node_id=name,
                              extra_args=["--auth-secret", secret])
        for name in ("node-a", "node-b")
    ]
    alice = await WsSipUa.connect(nodes[0].ws_url, "alice", users["alice"], domain=DOMAIN)
    bob = await WsSipUa.connect(nodes[1].ws_url, "bob", users["bob"], domain=DOMAIN)
    try:
        for client in (alice, bob):
            contact = ws_contact(str(uuid.uuid4()), 1, user=client.user, host=client.host)
            response = await client.register(contacts=[f"{contact};expires=600"], expires=None)
            assert response.status == 200, f"REGISTER {client.user}: {response.status}"
        calling = asyncio.create_task(alice.call("bob", browser_sdp("actpass")))
        invite, bob_dialog = await bob.answer(browser_sdp("active"))
        final, alice_dialog = await calling
        assert final.status == 200 and alice_dialog is not None
        bye_relayed = asyncio.create_task(alice.take_bye())
        assert (await bob.hang_up(bob_dialog)).status == 200
        assert (await bye_relayed).call_id == invite.call_id
        # The keys are spread over the cluster's masters by their hash tags (read while the
        # clients are connected: a closed flow removes its bindings).
        holders = {}
        for port in redis_cluster.ports:
            with redis.Redis(port=port, decode_responses=True) as node:
                for key in node.scan_iter(match="ws2sip:*"):
                    holders[key] = port
    finally:
        await alice.close()
        await bob.close()
    # Node A handed the INVITE to node B, which holds bob's WebSocket.
    assert invite.get_all("via")[1].startswith(f"SIP/2.0/TCP 127.0.0.1:{nodes[0].tcp_port};")
    for user in ("alice", "bob"):
        assert f"ws2sip:loc:{{sip:{user}@{DOMAIN}}}" in holders
        assert f"ws2sip:user:{{{DOMAIN}}}:{user}" in holders
    assert len(set(holders.values())) >= 2, holders
    for gateway in nodes:
        assert gateway.returncode is None


async def test_a_registration_no_replica_acknowledged_fails_rather_than_counts(
    redis_url: str,
) -> None:
    # A lone redis-server has no replica: WAIT 1 times out, and the write must not count.
    location = RedisLocationService(redis_url, replica_acks=1)
    try:
        with pytest.raises(RuntimeError, match="0 of 1 replicas"):
            await location.register(change(contact("sip:a@10.0.0.1")))
    finally:
        await location.close()


async def test_the_cluster_fast_path_follows_a_slot_that_moved(
    redis_cluster: ClusterSetup,
) -> None:
    target = parse_redis_url(redis_cluster.url())
    cluster = open_redis(target, max_connections=4, pool_timeout=5)
    assert isinstance(cluster, RedisCluster)
    pipe = ClusterPipe(cluster, target, timeout=5)
    try:
        assert await pipe.execute([("SET", "{moving}:a", "1"), ("SET", "{staying}:b", "2")]) \
            == ["OK", "OK"]
        # As after a resharding: the client's slot map names the wrong master for a slot.
        slot = cluster.keyslot("{moving}:a")
        owner = cluster.get_node_from_key("{moving}:a")
        assert owner is not None
        stranger = next(node for node in cluster.get_primaries() if node.name != owner.name)
        cluster.nodes_manager.slots_cache[slot] = [stranger]
        # The stranger answers MOVED; the command runs on the owner, the other as it was.
        assert await pipe.execute([("GET", "{moving}:a"), ("GET", "{staying}:b")]) == ["1", "2"]
        assert await pipe.execute([("GET", "{moving}:a")]) == ["1"]  # the map was read again
        assert cluster.get_node_from_key("{moving}:a") == owner
    finally:
        await pipe.close()
        await cluster.aclose()


async def test_bans_and_failure_counts_live_in_the_redis_cluster(
    redis_cluster: ClusterSetup,
) -> None:
    listener, publisher = RedisBanList(redis_cluster.url()), RedisBanList(redis_cluster.url())
    heard: list[tuple[str, float]] = []
    try:
        assert [await publisher.count_failure("198.51.100.9", 60) for _ in range(3)] == [1, 2, 3]
        await publisher.publish("198.51.100.9", 30)
        await listener.start(lambda ip, seconds: heard.append((ip, seconds)))
        # Decided before the listener started: found by its SCAN over every master.
        assert heard and heard[0][0] == "198.51.100.9" and 0 < heard[0][1] <= 30
        await publisher.publish("198.51.100.10", 30)
        await _wait_until(lambda: any(ip == "198.51.100.10" for ip, _ in heard), 10.0,
                          "the ban published through the cluster")
    finally:
        await listener.close()
        await publisher.close()


async def _wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
