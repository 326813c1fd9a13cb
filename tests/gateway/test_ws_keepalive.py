"""WebSocket ping/pong (gateway/ws_keepalive.py): quiet connections are pinged, a peer that
answers stays, one that does not is dropped, busy connections are left alone, and the
gateway answers the peer's own pings. With frames delivered straight from aiohttp's parser
and with the ws.receive() fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.websocket import WebSocketPolicy
from sip.transport import TransportLayer

from .ws_edge import answering_layer, options_request, wait_for_no_flows, websocket_server

PING_INTERVAL = 0.2
WAIT = 5.0
pytestmark = pytest.mark.parametrize("direct", [True, False], ids=["direct", "receive-loop"])


@pytest.fixture
async def server(direct: bool) -> AsyncIterator[tuple[str, TransportLayer]]:
    layer = answering_layer()
    policy = WebSocketPolicy(allowed_origins=("*",), max_message_size=4000,
                             ping_interval=PING_INTERVAL, idle_timeout=60.0)
    async with websocket_server(layer, policy, direct=direct) as test_server:
        yield str(test_server.make_url("/ws")), layer


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def _connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    # autoping=False: the test sees the gateway's pings and decides whether to answer them.
    return await session.ws_connect(url, protocols=("sip",), autoping=False)


async def _answer_sip(ws: aiohttp.ClientWebSocketResponse, call_id: str) -> None:
    await ws.send_str(options_request(call_id))
    while True:
        frame = await ws.receive(timeout=WAIT)
        if frame.type is aiohttp.WSMsgType.TEXT:
            assert f"Call-ID: {call_id}\r\n" in frame.data
            return
        assert frame.type is aiohttp.WSMsgType.PING, frame


async def test_a_quiet_peer_that_answers_pings_stays_connected(
    server: tuple[str, TransportLayer], session: aiohttp.ClientSession
) -> None:
    url, layer = server
    async with await _connect(session, url) as ws:
        await _answer_sip(ws, "before")
        for _ in range(4):  # four rounds of at least an interval each, answered every time
            frame = await ws.receive(timeout=WAIT)
            assert frame.type is aiohttp.WSMsgType.PING, frame
            await ws.pong(frame.data)
        await _answer_sip(ws, "after")
        assert layer.flow_count == 1


async def test_a_peer_that_leaves_pings_unanswered_is_dropped(
    server: tuple[str, TransportLayer], session: aiohttp.ClientSession
) -> None:
    url, layer = server
    async with await _connect(session, url) as ws:
        await _answer_sip(ws, "then-silence")
        frame = await ws.receive(timeout=WAIT)
        assert frame.type is aiohttp.WSMsgType.PING, frame
        while frame.type is aiohttp.WSMsgType.PING:  # never answered
            frame = await ws.receive(timeout=WAIT)
        assert frame.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                              aiohttp.WSMsgType.ERROR), frame
    await wait_for_no_flows(layer)


async def test_a_connection_carrying_sip_is_not_pinged(
    server: tuple[str, TransportLayer], session: aiohttp.ClientSession
) -> None:
    url, _ = server
    async with await _connect(session, url) as ws:
        for number in range(12):  # 12 x a third of an interval: four intervals of traffic
            await ws.send_str(options_request(f"busy-{number}"))
            frame = await ws.receive(timeout=WAIT)
            assert frame.type is aiohttp.WSMsgType.TEXT, f"pinged while busy: {frame}"
            await asyncio.sleep(PING_INTERVAL / 3)


async def test_the_peers_ping_is_answered_with_its_payload(
    server: tuple[str, TransportLayer], session: aiohttp.ClientSession
) -> None:
    url, _ = server
    async with await _connect(session, url) as ws:
        await ws.ping(b"are you there")
        frame = await ws.receive(timeout=WAIT)
        while frame.type is aiohttp.WSMsgType.PING:  # the gateway's own, if it came first
            frame = await ws.receive(timeout=WAIT)
        assert frame.type is aiohttp.WSMsgType.PONG, frame
        assert frame.data == b"are you there"
