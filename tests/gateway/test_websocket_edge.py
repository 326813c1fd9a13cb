"""The WebSocket edge of the real gateway (RFC 7118 on aiohttp), seen from raw clients.

The clients (tests/support/ws_sip.py) write requests by hand, so tests send exactly what they mean
to (wrong AoRs, stale CSeqs, odd Contacts, garbage frames) and read the gateway's responses parsed
by sip.message. The fixtures here are shared with the registrar tests.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.healthz import (
    bindings_count,
    gateway_http_url,
    gateway_metrics_url,
    wait_for_bindings,
)
from tests.support.ws_sip import WsSipUa

RESPONSE_TIMEOUT = 10.0


# --- the gateways under test ---------------------------------------------------------------------
DOMAIN = "example.test"
BACKENDS = ("memory", "redis")


async def start_backend_gateway(
    request: pytest.FixtureRequest, gateway_factory: GatewayFactory, **options: object
) -> GatewayProcess:
    """alice and bob on a udp+ws gateway whose location and users live in Redis or in memory."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        transports=("udp", "ws"), redis_url=redis_url, domain=DOMAIN, **options,
    )


@pytest.fixture(params=BACKENDS)
async def backend_gateway(
    request: pytest.FixtureRequest, gateway_factory: GatewayFactory
) -> GatewayProcess:
    return await start_backend_gateway(request, gateway_factory)


@pytest.fixture
async def ws_gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    return await gateway_factory(users={"alice": secrets.token_urlsafe(12)},
                                 transports=("ws",), domain=DOMAIN)


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[..., Awaitable[WsSipUa]]]:
    clients: list[WsSipUa] = []

    async def connect(gateway: GatewayProcess, path: str = "/ws", **options: Any
                      ) -> WsSipUa:
        client = await WsSipUa.connect(f"ws://127.0.0.1:{gateway.ws_port}{path}",
                                       domain=DOMAIN, **options)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


ClientFactory = Callable[..., Awaitable[WsSipUa]]


# --- raw HTTP handshakes -------------------------------------------------------------------------
@dataclass(frozen=True)
class HandshakeReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str


async def handshake(port: int, path: str = "/ws", *, protocols: str | None = None,
                    origin: str | None = None) -> HandshakeReply:
    """One WebSocket upgrade request written byte by byte, so that the exact status, headers and
    text of the answer can be checked (aiohttp's client raises before showing the body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}"]
        if protocols is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        if origin is not None:
            lines.append(f"Origin: {origin}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RESPONSE_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), RESPONSE_TIMEOUT)
        return HandshakeReply(int(status_line.split()[1]), headers, body.decode())
    finally:
        writer.close()


# --- handshake rules -----------------------------------------------------------------------------
async def test_upgrade_without_sip_subprotocol_is_400_with_a_reason(
    ws_gateway: GatewayProcess,
) -> None:
    for offered in (None, "chat", "sipx, xsip", "SIP"):
        reply = await handshake(ws_gateway.port("ws"), protocols=offered)
        assert reply.status == 400, offered
        assert "'sip' subprotocol" in reply.body and "RFC 7118" in reply.body
    assert ws_gateway.returncode is None


async def test_sip_offered_among_others_is_answered_with_exactly_sip(
    ws_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    reply = await handshake(ws_gateway.port("ws"), protocols="chat, sip, wamp")
    assert reply.status == 101
    assert reply.headers["sec-websocket-protocol"] == "sip"
    client = await client_factory(ws_gateway)
    assert client.ws.protocol == "sip"


async def test_foreign_origin_is_403_and_own_origin_is_accepted(
    ws_gateway: GatewayProcess,
) -> None:
    port = ws_gateway.port("ws")
    foreign = await handshake(port, protocols="sip", origin="https://evil.example")
    assert (foreign.status, foreign.body) == (403, "Origin not allowed\n")
    own = await handshake(port, protocols="sip", origin=f"http://127.0.0.1:{port}")
    assert own.status == 101
    native = await handshake(port, protocols="sip")  # native clients send no Origin
    assert native.status == 101


async def test_allowed_origin_flag_admits_that_origin_only(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(
        transports=("ws",), extra_args=["--allowed-origin", "https://app.example"],
    )
    port = gateway.port("ws")
    assert (await handshake(port, protocols="sip", origin="https://app.example")).status == 101
    assert (await handshake(port, protocols="sip", origin="https://app.example/")).status == 101
    assert (await handshake(port, protocols="sip", origin="https://other.example")).status == 403


async def test_root_path_serves_sip_websocket_and_a_page(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway, "/")
    ok = await client.register("alice", backend_gateway.users["alice"])
    assert ok.status == 200
    page_url = gateway_http_url(backend_gateway)
    async with aiohttp.ClientSession() as session, session.get(page_url) as page:
        assert page.status == 200
        assert "SIP over WebSocket at /ws" in await page.text()


# --- frames --------------------------------------------------------------------------------------
async def test_double_crlf_keepalive_is_answered_with_crlf(
    ws_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(ws_gateway)
    await client.send_text("\r\n\r\n")
    assert await client.receive_text() == "\r\n"
    ok = await client.register("alice", ws_gateway.users["alice"])
    assert ok.status == 200


async def test_frame_over_max_message_size_closes_with_1009(
    gateway_factory: GatewayFactory, client_factory: ClientFactory,
) -> None:
    gateway = await gateway_factory(users={"alice": "alice-pw"}, transports=("ws",),
                                    domain=DOMAIN, extra_args=["--max-message-size", "4000"])
    client = await client_factory(gateway)
    padding = [("X-Padding", "a" * 5000)]
    await client.send_text(client.request_text("OPTIONS", f"sip:{DOMAIN}", from_user="alice",
                                               to_user=None, call_id="big", cseq=1,
                                               headers=padding))
    closing = await client.receive_frame(timeout=RESPONSE_TIMEOUT)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    # A message under the limit on a new connection still works.
    fresh = await client_factory(gateway)
    assert (await fresh.register("alice", "alice-pw")).status == 200


async def test_text_frame_that_is_not_utf8_closes_with_1007_and_utf8_text_is_sip(
    ws_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(ws_gateway)
    options = client.request_text("OPTIONS", f"sip:{DOMAIN}", from_user="alice", to_user=None,
                                  call_id="utf8-é", cseq=1, headers=[("Subject", "Grüße")])
    await client.send_text(options)
    answer = await client.response(timeout=RESPONSE_TIMEOUT)
    assert (answer.status, answer.call_id) == (200, "utf8-é")
    # aiohttp's client only sends text it encoded itself: write the invalid frame directly.
    await client.ws._writer.send_frame(b"OPTIONS \xc3\x28 SIP/2.0\r\n\r\n",
                                       aiohttp.WSMsgType.TEXT)
    closing = await client.receive_frame(timeout=RESPONSE_TIMEOUT)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == aiohttp.WSCloseCode.INVALID_TEXT


GARBAGE_FRAMES = (
    "hello gateway",
    "\x00\x01\x02 binary-ish junk \xff",
    "SIP/2.0 200 OK\r\n\r\n",
    "REGISTER\r\n\r\n",
    "REGISTER sip:example.test SIP/7.0\r\nContent-Length: 0\r\n\r\n",
    "INVITE sip:bob@example.test SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
)


async def test_garbage_frames_never_crash_and_the_connection_still_registers(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    for frame in GARBAGE_FRAMES:
        await client.send_text(frame)
    await client.ws.send_bytes(b"\xc3\x28\xa0\xa1 not utf-8")
    ok = await client.register("alice", backend_gateway.users["alice"])
    assert ok.status == 200
    assert backend_gateway.returncode is None
    assert "Traceback" not in backend_gateway.log_text()


async def test_request_with_a_bad_header_but_good_via_gets_400(
    ws_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(ws_gateway)
    text = client.request_text("OPTIONS", f"sip:{DOMAIN}", from_user="alice", to_user=None,
                               call_id="bad-cseq", cseq=1)
    await client.send_text(text.replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS"))
    reply = await client.response()
    assert reply.status == 400
    assert reply.call_id == "bad-cseq"
    await client.send_text(text.replace("Max-Forwards: 70", "Max-Forwards: many"))
    assert (await client.response()).status == 400
    assert (await client.register("alice", ws_gateway.users["alice"])).status == 200


async def test_options_to_the_gateway_is_200_with_allow(
    ws_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(ws_gateway)
    await client.send_text(client.request_text("OPTIONS", f"sip:{DOMAIN}", from_user="alice",
                                               to_user=None, call_id="ping", cseq=7))
    reply = await client.response()
    assert reply.status == 200
    allowed = {method.strip() for method in (reply.get("allow") or "").split(",")}
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE"} <= allowed
    assert reply.cseq.number == 7


# --- flows and bindings --------------------------------------------------------------------------
async def test_closing_a_websocket_drops_its_bindings_only(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    base = gateway_metrics_url(backend_gateway)
    leaving = await client_factory(backend_gateway)
    staying = await client_factory(backend_gateway)
    assert (await leaving.register("alice", backend_gateway.users["alice"])).status == 200
    assert (await staying.register("bob", backend_gateway.users["bob"])).status == 200
    assert await bindings_count(base) == 2
    await leaving.close()
    assert await wait_for_bindings(base, 1) == 1
    # bob's binding is intact: a fetch on his connection still lists it.
    fetched = await staying.register("bob", backend_gateway.users["bob"], contacts=[],
                                     expires=None)
    assert fetched.status == 200
    assert len(fetched.get_all("contact")) == 1
