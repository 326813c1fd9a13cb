"""Several real gateway nodes sharing Redis behind a real HAProxy (deploy/haproxy/haproxy.cfg):
a node killed under its browsers (JsSIP in Chromium), and a rolling restart of every node under
call load."""

from __future__ import annotations

import asyncio
import collections
import secrets
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.location import RedisLocationService
from gateway.users import RedisUserStore
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.audio import assert_hears, read_wav_pcm
from tests.support.browser import (
    BrowserSession,
    StaticServer,
    launch_browser,
    write_browser_tone,
)
from tests.support.cluster import HaproxyProcess, ReconnectingUa, cluster_args, passwords
from tests.support.healthz import gateway_metrics_url, wait_for_bindings
from tests.support.jssip_page import JssipPage
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ws_sip import browser_sdp

DOMAIN = "example.com"
BROWSERS = 4  # tabs of one Chromium; leastconn puts two on each node
BROWSER_TONE = 440.0  # every tab's fake microphone (one per Chromium process)
PHONE_TONE = 1000.0
TOLERANCE_HZ = 15.0
LISTEN_MS = 1500
SETTLE_SECONDS = 0.3  # a recording's first moments may be silent
PROBE_PAUSE = 0.2
CALL_TIMEOUT = 15.0  # one call's set-up: a limit, not a measure
# The gateway's keep-alive interval (ws_ping_interval's default, which the nodes keep): a
# browser of a dead node must take calls again within it.
REACHABLE_WITHIN = 30.0
# JsSIP reconnects by itself after its WebSocket closes: first after min_interval, then after a
# random back-off of up to 2**attempt s, clamped to [min, max] (its defaults are 2 and 30).
JSSIP_RECOVERY = {"connection_recovery_min_interval": 2, "connection_recovery_max_interval": 4}


async def start_nodes(gateway_factory: GatewayFactory, redis_url: str, count: int,
                      users: dict[str, str], secret: str, extra_args: Sequence[str] = (),
                      **drain: float) -> list[GatewayProcess]:
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
            extra_args=[*cluster_args(secret, **drain), *extra_args]))
    return nodes


async def call_outcome(phone: PjsuaPhone, call: int) -> dict[str, Any]:
    """The phone's call `call` once answered (CONFIRMED) or ended (DISCONNECTED), consumed."""
    deadline = time.monotonic() + CALL_TIMEOUT
    while time.monotonic() < deadline:
        for event in phone.unclaimed_events("call_state"):
            if event["call"] == call and event["state"] in ("CONFIRMED", "DISCONNECTED"):
                return await phone.wait_for("call_state", call=call, state=event["state"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call} of {phone.name}: neither answered nor ended within "
                         f"{CALL_TIMEOUT} s; events: {phone.unclaimed_events('call_state')}")


@dataclass
class Answered:
    """A call from the phone that a browser answered."""

    phone_call: int
    page_call: int


async def call_browser(phone: PjsuaPhone, page: JssipPage, user: str) -> Answered | None:
    """A real call from the phone to `user`'s browser (which answers by itself): None when the
    gateway refused it (the user unreachable)."""
    call = await phone.call(f"sip:{user}@{DOMAIN}")
    outcome = await call_outcome(phone, call)
    if outcome["state"] == "DISCONNECTED":
        return None
    confirmed = await page.wait_event("confirmed")
    return Answered(call, confirmed["index"])


async def hang_up(phone: PjsuaPhone, page: JssipPage, answered: Answered) -> None:
    await phone.hangup(answered.phone_call)
    await phone.wait_for("call_state", CALL_TIMEOUT, call=answered.phone_call,
                         state="DISCONNECTED")
    await page.wait_event("ended", index=answered.page_call)


async def hear_each_other(phone: PjsuaPhone, page: JssipPage, answered: Answered,
                          recording: Path) -> None:
    await phone.record(recording)
    heard = await page.heard(answered.page_call, LISTEN_MS)
    await phone.stop_recording()
    assert heard == pytest.approx(PHONE_TONE, abs=TOLERANCE_HZ), await page.stats(
        answered.page_call)
    samples, rate = read_wav_pcm(recording)
    assert_hears(samples[int(rate * SETTLE_SECONDS):], rate, BROWSER_TONE)


async def open_pages(browser: BrowserSession, site: StaticServer, lb: HaproxyProcess,
                     users: dict[str, str], names: list[str]) -> dict[str, JssipPage]:
    """One tab per user, each registered through HAProxy and answering calls by itself."""
    pages = {}
    # One after the other: leastconn then spreads them over the nodes.
    for name in names:
        pages[name] = await JssipPage.open(browser, site, lb.ws_url, name, users[name], DOMAIN,
                                           settings=JSSIP_RECOVERY)
        await pages[name].set_auto_answer(True)
    return pages


async def node_of(location: RedisLocationService, name: str) -> str:
    """The node whose WebSocket holds the user's one binding."""
    (binding,) = await location.lookup(f"sip:{name}@{DOMAIN}")
    return binding.node_id


async def reconnection_timeline(page: JssipPage, name: str, killed_at_ms: float) -> str:
    """What the orphan's JsSIP saw (seconds after SIGKILL); fails unless it lost its WebSocket,
    opened a new one (its only URL: HAProxy's) and registered again, once."""
    events = await page.events()
    moments = {kind: [(event["at"] - killed_at_ms) / 1000 for event in events
                      if event["type"] == kind]
               for kind in ("disconnected", "connected", "registered")}
    assert moments["disconnected"], (name, events)
    assert len(moments["connected"]) == len(moments["registered"]) == 2, (name, events)
    return (f"{name}: WebSocket closed at {moments['disconnected'][0]:.2f} s, open again at "
            f"{moments['connected'][1]:.2f} s, registered at {moments['registered'][1]:.2f} s")


async def wait_node_dropped(redis_url: str, node_id: str) -> None:
    """The survivor's heartbeat drops the dead node: its set entry and every key of its own."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(100):
            if not await client.sismember("ws2sip:nodes", node_id):
                break
            await asyncio.sleep(0.1)
        assert not await client.sismember("ws2sip:nodes", node_id)
        assert not await client.keys(f"ws2sip:node:{{{node_id}}}*")
    finally:
        await client.aclose()


async def test_killed_node_browsers_reconnect_through_haproxy_and_are_reachable_again(
    gateway_factory: GatewayFactory, redis_url: str, tmp_path: Path,
) -> None:
    names = [f"web{index}" for index in range(BROWSERS)]
    users = passwords([*names, "caller"])
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    phone = await PjsuaPhone.start(f"cluster-caller-{uuid.uuid4().hex[:6]}", transport="tcp")
    location = RedisLocationService(redis_url)
    try:
        async with StaticServer() as site, launch_browser(tone, name="cluster") as browser:
            nodes = await start_nodes(gateway_factory, redis_url, 2, users,
                                      secrets.token_hex(16),
                                      extra_args=["--allowed-origin", site.base_url])
            lb = await HaproxyProcess.start(tmp_path, [node.port("ws") for node in nodes])
            try:
                pages = await open_pages(browser, site, lb, users, names)
                on_node = {name: await node_of(location, name) for name in names}
                killed, kept = (nodes[0], nodes[1]) if on_node[names[0]] == nodes[0].node_id \
                    else (nodes[1], nodes[0])
                orphans = [name for name in names if on_node[name] == killed.node_id]
                survivors = [name for name in names if on_node[name] == kept.node_id]
                assert len(orphans) == len(survivors) == BROWSERS // 2, on_node
                # The caller: a pjsua2 phone on the node that stays.
                registered = await phone.register("127.0.0.1", kept.port("tcp"), "caller",
                                                  users["caller"], DOMAIN)
                assert registered["code"] == 200, registered
                await phone.play_tone(PHONE_TONE)

                assert killed.process is not None and killed.node_id is not None
                killed_at = time.monotonic()
                killed_at_ms = time.time() * 1000
                killed.process.send_signal(signal.SIGKILL)
                await killed.process.wait()

                async def back(name: str) -> tuple[float, Answered]:
                    """Calls `name` until its browser answers: the time since SIGKILL."""
                    while (answered := await call_browser(phone, pages[name], name)) is None:
                        assert time.monotonic() - killed_at < REACHABLE_WITHIN, \
                            f"{name} unreachable {REACHABLE_WITHIN} s after its node died"
                        await asyncio.sleep(PROBE_PAUSE)
                    return time.monotonic() - killed_at, answered

                async def untouched() -> int:
                    """Meanwhile every call to a browser of the node that stays is answered."""
                    rounds = 0
                    while not all_back.done():
                        for name in survivors:
                            answered = await call_browser(phone, pages[name], name)
                            assert answered is not None, f"{name}, on the node that stays"
                            await hang_up(phone, pages[name], answered)
                        rounds += 1
                    return rounds

                all_back = asyncio.gather(*(back(name) for name in orphans))
                steady = asyncio.create_task(untouched())
                try:
                    recovered, rounds = await asyncio.gather(all_back, steady)
                finally:
                    all_back.cancel()
                    steady.cancel()
                # The tone both ways on one of them; then every call ends cleanly.
                (first, (_, listened)), *others = zip(orphans, recovered, strict=True)
                for name, (_, answered) in others:
                    await hang_up(phone, pages[name], answered)
                await hear_each_other(phone, pages[first], listened, tmp_path / "heard.wav")
                await hang_up(phone, pages[first], listened)

                timeline = [await reconnection_timeline(pages[name], name, killed_at_ms)
                            for name in orphans]
                for name in survivors:
                    assert await pages[name].count_events("disconnected") == 0, name
                    assert await pages[name].count_events("registered") == 1, name
                times = [elapsed for elapsed, _ in recovered]
                print(f"\nSIGKILL -> all {len(orphans)} browsers (JsSIP in Chromium) of the "
                      f"dead node answer a call again: {max(times):.2f} s (each: "
                      f"{', '.join(f'{t:.2f}' for t in times)}; keep-alive interval "
                      f"{REACHABLE_WITHIN:.0f} s). {'; '.join(timeline)}. The other "
                      f"{len(survivors)} answered {rounds} round(s) of calls meanwhile.")

                await wait_node_dropped(redis_url, killed.node_id)
                # Every browser and the phone: once each, on the node that stays.
                assert {name: await node_of(location, name) for name in names} == \
                    dict.fromkeys(names, kept.node_id)
                assert await wait_for_bindings(gateway_metrics_url(kept), BROWSERS + 1) == \
                    BROWSERS + 1
            finally:
                await lb.stop()
    finally:
        await phone.stop()
        await location.close()


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
