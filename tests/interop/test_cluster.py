"""Several real gateway nodes sharing Redis behind a real HAProxy (deploy/haproxy/haproxy.cfg):
a node killed under load, and a rolling restart of every node under call load."""

from __future__ import annotations

import asyncio
import collections
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.location import RedisLocationService
from gateway.users import RedisUserStore
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.cluster import HaproxyProcess, ReconnectingUa, cluster_args, passwords
from tests.support.healthz import gateway_metrics_url, wait_for_bindings
from tests.support.jssip import JsSipAgent
from tests.support.ws_sip import WsSipUa, browser_sdp

DOMAIN = "example.com"
BROWSERS = 6
PROBE_PAUSE = 0.2
REACHABLE_WITHIN = 30.0  # ws_ping_interval, the gateway's keep-alive interval (seconds)


async def start_nodes(gateway_factory: GatewayFactory, redis_url: str, count: int,
                      users: dict[str, str], secret: str, **drain: float) -> list[GatewayProcess]:
    # Straight into Redis, where every node reads them: one `ws2sip user add` process per user
    # would cost seconds.
    store = RedisUserStore(redis_url)
    try:
        for name, password in users.items():
            await store.add(name, DOMAIN, password)
    finally:
        await store.close()
    nodes = []
    for index in range(count):
        nodes.append(await gateway_factory(
            domain=DOMAIN, redis_url=redis_url,
            node_id=f"node-{index}", transports=("tcp", "ws"),
            extra_args=cluster_args(secret, **drain)))
    return nodes


async def reachable(prober: WsSipUa, agent: JsSipAgent, user: str) -> bool:
    """A MESSAGE from the prober reaches the browser's JsSIP now."""
    body = secrets.token_hex(6)
    try:
        response = await prober.message(user, body, timeout=5)
    except TimeoutError:
        return False
    if response.status != 200:
        return False
    await agent.wait_for("newMessage", timeout=5, body=body)
    return True


async def test_killed_node_browsers_reconnect_through_haproxy_and_are_reachable_again(
    gateway_factory: GatewayFactory, redis_url: str, tmp_path: Path,
) -> None:
    names = [f"web{index}" for index in range(BROWSERS)]
    users = passwords([*names, "prober", "phone"])
    nodes = await start_nodes(gateway_factory, redis_url, 2, users, secrets.token_hex(16))
    lb = await HaproxyProcess.start(tmp_path, [node.port("ws") for node in nodes])
    agents = list(await asyncio.gather(*(JsSipAgent.start(name) for name in names)))
    # A client that answers calls and, like JsSIP, reconnects through HAProxy by itself.
    phone = ReconnectingUa(lb.ws_url, "phone", users["phone"], DOMAIN)
    location = RedisLocationService(redis_url)
    prober: WsSipUa | None = None
    try:
        phone.start()
        await asyncio.wait_for(phone.registered.wait(), 15)
        # One after the other: leastconn then spreads them over the nodes.
        for agent, name in zip(agents, names, strict=True):
            outcome = await agent.register(lb.ws_url, f"sip:{name}@{DOMAIN}", users[name])
            assert outcome["outcome"] == "registered", outcome
        # The prober calls and messages from the node that stays: the phone's node.
        (binding,) = await location.lookup(f"sip:phone@{DOMAIN}")
        killed, kept = (nodes[0], nodes[1]) if binding.node_id == "node-0" else \
            (nodes[1], nodes[0])
        prober = await WsSipUa.connect(kept.ws_url, "prober", users["prober"], domain=DOMAIN)
        assert (await prober.register()).status == 200
        assert all(await asyncio.gather(*(reachable(prober, agent, name)
                                          for agent, name in zip(agents, names, strict=True))))

        assert killed.process is not None
        killed.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await killed.process.wait()
        # Which browsers were on the killed node: JsSIP itself saw its WebSocket go.
        await asyncio.sleep(0.5)
        orphans = {name for agent, name in zip(agents, names, strict=True)
                   if agent.unclaimed_events("disconnected")}
        survivors = set(names) - orphans
        assert orphans and survivors, "leastconn spread the browsers over both nodes"

        async def phone_answers() -> float:
            while True:
                final, dialog = await prober.call("phone", browser_sdp("actpass"))
                if dialog is not None:
                    assert (await prober.hang_up(dialog)).status == 200
                    return time.monotonic() - killed_at
                assert time.monotonic() - killed_at < REACHABLE_WITHIN, final.status
                await asyncio.sleep(PROBE_PAUSE)

        async def back(agent: JsSipAgent, name: str) -> float:
            while not await reachable(prober, agent, name):
                assert time.monotonic() - killed_at < REACHABLE_WITHIN, f"{name} unreachable"
                await asyncio.sleep(PROBE_PAUSE)
            return time.monotonic() - killed_at

        async def untouched(agent: JsSipAgent, name: str) -> int:
            failures = 0
            while not all_back.done():
                failures += not await reachable(prober, agent, name)
                await asyncio.sleep(PROBE_PAUSE)
            return failures

        all_back = asyncio.gather(*(back(agent, name) for agent, name in
                                    zip(agents, names, strict=True) if name in orphans))
        steady = asyncio.gather(*(untouched(agent, name) for agent, name in
                                  zip(agents, names, strict=True) if name in survivors))
        called = asyncio.create_task(phone_answers())
        recovered = await all_back
        assert sum(await steady) == 0, "users on the surviving node missed a message"
        answered = await called
        print(f"\nSIGKILL -> all {len(orphans)} browsers of the dead node reachable again: "
              f"{max(recovered):.2f} s (each: {', '.join(f'{t:.2f}' for t in recovered)}); "
              f"its phone answers a call again after {answered:.2f} s")
        for agent, name in zip(agents, names, strict=True):
            if name in survivors:
                assert not agent.unclaimed_events("disconnected"), name
        # The survivor's heartbeat drops the dead node: its bindings go, the new ones stay.
        client = aioredis.Redis.from_url(redis_url)
        try:
            dead = killed.node_id
            assert dead is not None
            for _ in range(100):
                if not await client.sismember("ws2sip:nodes", dead):
                    break
                await asyncio.sleep(0.1)
            assert not await client.sismember("ws2sip:nodes", dead)
            assert not await client.keys(f"ws2sip:node:{{{dead}}}*")
        finally:
            await client.aclose()
        # Every browser, the prober and the phone: once each, on the node that stays.
        assert await wait_for_bindings(gateway_metrics_url(kept), BROWSERS + 2) == BROWSERS + 2
        assert phone.reconnects == 1
    finally:
        if prober is not None:
            await prober.close()
        await phone.stop()
        await location.close()
        await asyncio.gather(*(agent.stop() for agent in agents))
        await lb.stop()


CALL_SECONDS = 1.5
CALL_PAIRS = 4


@dataclass
class CallStats:
    completed: int = 0
    dropped: list[str] = field(default_factory=list)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)


async def call_repeatedly(caller: ReconnectingUa, callee: str, stats: CallStats,
                          running: asyncio.Event) -> None:
    """Calls of CALL_SECONDS, one after the other, while `running` is set."""
    while running.is_set():
        try:
            await asyncio.wait_for(caller.registered.wait(), 10)
        except TimeoutError:
            stats.refused["caller not registered"] += 1
            continue
        assert caller.ua is not None
        ua = caller.ua
        try:
            final, dialog = await ua.call(callee, browser_sdp("actpass"))
        except (TimeoutError, ConnectionError) as error:
            stats.refused[type(error).__name__] += 1
            continue
        if dialog is None:
            stats.refused[str(final.status)] += 1
            await asyncio.sleep(0.2)
            continue
        await asyncio.sleep(CALL_SECONDS)
        try:
            bye = await ua.hang_up(dialog)
        except (TimeoutError, ConnectionError) as error:
            stats.dropped.append(f"{dialog.call_id}: BYE {type(error).__name__}")
            continue
        if bye.status == 200:
            stats.completed += 1
        else:
            stats.dropped.append(f"{dialog.call_id}: BYE answered {bye.status}")


@pytest.mark.timeout(180)
async def test_rolling_restart_under_call_load_drops_no_call(
    gateway_factory: GatewayFactory, redis_url: str, tmp_path: Path,
) -> None:
    callers = [f"caller{index}" for index in range(CALL_PAIRS)]
    callees = [f"callee{index}" for index in range(CALL_PAIRS)]
    users = passwords([*callers, *callees])
    nodes = await start_nodes(gateway_factory, redis_url, 2, users, secrets.token_hex(16),
                              drain_grace=1.0, drain_timeout=10.0)
    lb = await HaproxyProcess.start(tmp_path, [node.port("ws") for node in nodes])
    clients = [ReconnectingUa(lb.ws_url, name, users[name], DOMAIN) for name in users]
    for client in clients:
        client.start()
    stats = CallStats()
    running = asyncio.Event()
    running.set()
    load: list[asyncio.Task[None]] = []
    try:
        for client in clients:
            await asyncio.wait_for(client.registered.wait(), 15)
        load = [asyncio.create_task(call_repeatedly(clients[index], callees[index], stats,
                                                    running))
                for index in range(CALL_PAIRS)]
        await asyncio.sleep(CALL_SECONDS + 1)
        started = time.monotonic()
        for index, node in enumerate(nodes):
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(node.process.wait(), 30) == 0
            await node.start()
            await lb.wait_for_state(f"node{index + 1}", "UP")
        rolled = time.monotonic() - started
        await asyncio.sleep(CALL_SECONDS + 1)
        running.clear()
        await asyncio.wait_for(asyncio.gather(*load), 30)
    finally:
        running.clear()
        for task in load:
            task.cancel()
        for client in clients:
            await client.stop()
        await lb.stop()
    print(f"\nrolling restart of {len(nodes)} nodes in {rolled:.1f} s under {CALL_PAIRS} "
          f"concurrent {CALL_SECONDS} s calls: {stats.completed} completed, "
          f"{len(stats.dropped)} dropped, refused set-ups {dict(stats.refused)}")
    assert stats.dropped == []
    assert stats.completed >= 2 * CALL_PAIRS
    for node in nodes:
        log = node.log_text()
        assert log.count("drained: no calls and no WebSockets left") == 1
        assert "cutting" not in log
