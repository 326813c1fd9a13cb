"""The WebSocket edge of the real gateway (RFC 7118 on aiohttp), seen from raw clients.

`SipWebSocket` is a bare SIP-over-WebSocket client on aiohttp, also used by the registrar tests:
it writes requests by hand, so tests send exactly what they mean to (wrong AoRs, stale CSeqs, odd
Contacts) and read the gateway's responses parsed by sip.message.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response, parse_message
from tests.fixtures.gateway import GatewayFactory, GatewayProcess

RESPONSE_TIMEOUT = 10.0


def ws_contact(instance: str | None = None, reg_id: int | None = None) -> str:
    """A Contact as JsSIP writes it: a random user at a .invalid host, transport=ws."""
    value = f"<sip:{secrets.token_hex(4)}@{secrets.token_hex(6)}.invalid;transport=ws>"
    if instance is not None:
        value += f';+sip.instance="<urn:uuid:{instance}>"'
    if reg_id is not None:
        value += f";reg-id={reg_id}"
    return value


@dataclass
class SipWebSocket:
    """One WebSocket connection speaking SIP; responses are matched in arrival order."""

    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    domain: str
    via_host: str = field(default_factory=lambda: f"{secrets.token_hex(6)}.invalid")
    received_requests: list[Request] = field(default_factory=list)

    @classmethod
    async def connect(cls, url: str, domain: str, **ws_options: object) -> SipWebSocket:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, protocols=("sip",), **ws_options)  # type: ignore[arg-type]
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, domain)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive_text(self, timeout: float = RESPONSE_TIMEOUT) -> str:
        message = await self.ws.receive(timeout=timeout)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {message.type.name} {message.data}")
        return message.data

    async def response(self, timeout: float = RESPONSE_TIMEOUT) -> Response:
        """The next final response; requests the gateway sends meanwhile are kept aside."""
        while True:
            message = parse_message((await self.receive_text(timeout)).encode())
            if isinstance(message, Request):
                self.received_requests.append(message)
            elif message.status >= 200:
                return message

    def request_text(
        self, method: str, uri: str, *, from_user: str, to_user: str | None, call_id: str,
        cseq: int, headers: Sequence[tuple[str, str]] = (), body: str = "",
    ) -> str:
        to_uri = f"sip:{to_user}@{self.domain}" if to_user else uri
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/WS {self.via_host};branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{self.domain}>;tag={secrets.token_hex(4)}",
            f"To: <{to_uri}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *(f"{name}: {value}" for name, value in headers),
            f"Content-Length: {len(body.encode())}",
            "",
            body,
        ]
        return "\r\n".join(lines)

    async def register(
        self, user: str, password: str, *, contacts: Sequence[str] | None = None,
        expires: int | None = 300, aor_user: str | None = None, call_id: str | None = None,
        cseq: int = 1, headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """REGISTER, answer a 401 with digest and return the final response.

        `contacts` None sends one fresh ws Contact; an empty list sends none (a fetch).
        """
        call_id = call_id or secrets.token_hex(8)
        contact_rows = [("Contact", c) for c in (ws_contact(),) if contacts is None] + [
            ("Contact", c) for c in contacts or ()
        ]
        base = [*contact_rows, *headers]
        if expires is not None:
            base.append(("Expires", str(expires)))
        register_uri = f"sip:{self.domain}"
        text = self.request_text("REGISTER", register_uri, from_user=user,
                                 to_user=aor_user or user, call_id=call_id, cseq=cseq,
                                 headers=base)
        await self.send_text(text)
        response = await self.response()
        if response.status != 401:
            return response
        challenge = select_challenge(response.get_all("www-authenticate"))
        authorization = build_authorization(challenge, method="REGISTER", uri=register_uri,
                                            username=user, password=password)
        await self.send_text(self.request_text(
            "REGISTER", register_uri, from_user=user, to_user=aor_user or user, call_id=call_id,
            cseq=cseq + 1, headers=[*base, ("Authorization", authorization)],
        ))
        return await self.response()


async def bindings_count(http_base: str) -> int:
    """The gateway's own count of live bindings (GET /healthz)."""
    async with aiohttp.ClientSession() as session, session.get(f"{http_base}/healthz") as reply:
        return (await reply.json())["bindings"]


async def wait_for_bindings(http_base: str, expected: int, timeout: float = 10.0) -> int:
    """Poll /healthz until it reports `expected` (work after a close is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await bindings_count(http_base)
    while count != expected and loop.time() < deadline:
        await asyncio.sleep(0.1)
        count = await bindings_count(http_base)
    return count


# --- the gateways under test ---------------------------------------------------------------------
DOMAIN = "example.test"
BACKENDS = ("memory", "redis")


def http_base(gateway: GatewayProcess) -> str:
    return f"http://127.0.0.1:{gateway.ws_port}"


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
async def client_factory() -> AsyncIterator[Callable[..., Awaitable[SipWebSocket]]]:
    clients: list[SipWebSocket] = []

    async def connect(gateway: GatewayProcess, path: str = "/ws", **options: object
                      ) -> SipWebSocket:
        client = await SipWebSocket.connect(f"ws://127.0.0.1:{gateway.ws_port}{path}", DOMAIN,
                                            **options)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


ClientFactory = Callable[..., Awaitable[SipWebSocket]]


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
        reply = await handshake(ws_gateway.ws_port, protocols=offered)
        assert reply.status == 400, offered
        assert "'sip' subprotocol" in reply.body and "RFC 7118" in reply.body
    assert ws_gateway.returncode is None


async def test_sip_offered_among_others_is_answered_with_exactly_sip(
    ws_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    reply = await handshake(ws_gateway.ws_port, protocols="chat, sip, wamp")
    assert reply.status == 101
    assert reply.headers["sec-websocket-protocol"] == "sip"
    client = await client_factory(ws_gateway)
    assert client.ws.protocol == "sip"


async def test_foreign_origin_is_403_and_own_origin_is_accepted(
    ws_gateway: GatewayProcess,
) -> None:
    port = ws_gateway.ws_port
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
    port = gateway.ws_port
    assert (await handshake(port, protocols="sip", origin="https://app.example")).status == 101
    assert (await handshake(port, protocols="sip", origin="https://app.example/")).status == 101
    assert (await handshake(port, protocols="sip", origin="https://other.example")).status == 403


async def test_root_path_serves_sip_websocket_and_a_page(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway, "/")
    ok = await client.register("alice", backend_gateway.users["alice"])
    assert ok.status == 200
    async with aiohttp.ClientSession() as session, session.get(http_base(backend_gateway)) as page:
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
    closing = await client.ws.receive(timeout=RESPONSE_TIMEOUT)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    # A message under the limit on a new connection still works.
    fresh = await client_factory(gateway)
    assert (await fresh.register("alice", "alice-pw")).status == 200


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
    base = http_base(backend_gateway)
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
