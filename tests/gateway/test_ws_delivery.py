"""SIP over WebSocket with frames delivered straight from aiohttp's parser, and with the
ws.receive() fallback: the same behaviour on the wire either way."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway import ws_delivery
from gateway.websocket import WebSocketPolicy
from sip.transport import TransportLayer

from .ws_edge import answering_layer, options_request, wait_for_no_flows, websocket_server

MAX_MESSAGE = 4000
WAIT = 5.0
pytestmark = pytest.mark.parametrize("direct", [True, False], ids=["direct", "receive-loop"])


class _Gateway:
    def __init__(self, server: TestServer, layer: TransportLayer) -> None:
        self.server = server
        self.layer = layer

    @property
    def url(self) -> str:
        return str(self.server.make_url("/ws"))


IDLE_TIMEOUT = 0.5  # also the first-message timeout (the smaller of the two)


@pytest.fixture
async def gateway(direct: bool) -> AsyncIterator[_Gateway]:
    assert ws_delivery.supported(), "the installed aiohttp lacks what direct delivery replaces"
    # Only the WebSocket's own first-message timeout can close a connection here.
    layer = answering_layer()
    policy = WebSocketPolicy(allowed_origins=("*",), max_message_size=MAX_MESSAGE,
                             ping_interval=0.0, idle_timeout=IDLE_TIMEOUT)
    async with websocket_server(layer, policy, direct=direct) as server:
        yield _Gateway(server, layer)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def _call_id_of_answer(ws: aiohttp.ClientWebSocketResponse) -> str:
    frame = await ws.receive(timeout=WAIT)
    assert frame.type is aiohttp.WSMsgType.TEXT, frame
    assert frame.data.startswith("SIP/2.0 200 ")
    return next(line.split(": ", 1)[1] for line in frame.data.split("\r\n")
                if line.startswith("Call-ID: "))


async def test_text_and_binary_frames_are_answered_in_order(
    gateway: _Gateway, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gateway.url, protocols=("sip",)) as ws:
        await ws.send_str(options_request("text-1"))
        await ws.send_bytes(options_request("binary-2").encode())
        await ws.send_str(options_request("text-3"))
        assert [await _call_id_of_answer(ws) for _ in range(3)] == ["text-1", "binary-2", "text-3"]
        await ws.ping(b"still there?")  # control frames keep working beside SIP frames
        await ws.send_str(options_request("after-ping"))
        assert await _call_id_of_answer(ws) == "after-ping"


async def test_invalid_utf8_text_closes_with_1007(
    gateway: _Gateway, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gateway.url, protocols=("sip",)) as ws:
        await ws._writer.send_frame(b"OPTIONS \xc3\x28 SIP/2.0\r\n\r\n", aiohttp.WSMsgType.TEXT)
        closing = await ws.receive(timeout=WAIT)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == aiohttp.WSCloseCode.INVALID_TEXT


async def test_frame_over_the_limit_closes_with_1009_and_the_flow_is_dropped(
    gateway: _Gateway, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gateway.url, protocols=("sip",)) as ws:
        await ws.send_str(options_request("small"))
        assert await _call_id_of_answer(ws) == "small"
        assert gateway.layer.flow_count == 1
        await ws.send_str(options_request("big") + "x" * MAX_MESSAGE)
        closing = await ws.receive(timeout=WAIT)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await wait_for_no_flows(gateway.layer)


async def test_a_silent_connection_is_closed_but_one_that_spoke_is_not(
    gateway: _Gateway, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(gateway.url, protocols=("sip",)) as silent, \
            session.ws_connect(gateway.url, protocols=("sip",)) as talking:
        await talking.send_str(options_request("first"))
        assert await _call_id_of_answer(talking) == "first"
        closing = await silent.receive(timeout=WAIT)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == aiohttp.WSCloseCode.GOING_AWAY
        await asyncio.sleep(IDLE_TIMEOUT)  # past the first-message timeout of `talking` too
        await talking.send_str(options_request("later"))
        assert await _call_id_of_answer(talking) == "later"


async def test_frame_sent_with_the_upgrade_request_is_answered(gateway: _Gateway) -> None:
    """Bytes that arrive together with the HTTP upgrade reach the SIP layer too."""
    host, port = gateway.server.host, gateway.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
    ).encode()
    writer.write(upgrade + _masked_text_frame(options_request("with-upgrade").encode()))
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 ")
        first, length = await asyncio.wait_for(reader.readexactly(2), WAIT)
        assert first == 0x81  # FIN + text
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        answer = await asyncio.wait_for(reader.readexactly(length), WAIT)
        assert answer.startswith(b"SIP/2.0 200 ")
        assert b"Call-ID: with-upgrade\r\n" in answer
    finally:
        writer.close()


def _masked_text_frame(payload: bytes) -> bytes:
    """A client frame (RFC 6455 §5.2: clients mask)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    length = len(payload)
    header = bytes((0x81, 0x80 | length)) if length < 126 else (
        bytes((0x81, 0x80 | 126)) + struct.pack("!H", length))
    return header + mask + masked
