"""Calls with WebSocket clients through the proxy.

The clients here are a hand-written SIP-over-WebSocket UA (aiohttp) that behaves on the wire as
JsSIP does: `.invalid` Via and Contact hosts, Outbound-style registration, a browser's
DTLS-SRTP/ICE SDP. It covers signalling only; media with real browsers is the lead's
browser suite. WebSocket ↔ WebSocket, WebSocket ↔ SIPp over UDP in both directions, and a
call between two gateway nodes sharing one Redis.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import aiohttp

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response, parse_message
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.interop.test_proxy_sipp import (
    DOMAIN,
    messages,
    received_requests,
    register_then_serve,
)
from tests.support.ports import free_udp_ports
from tests.support.sipp import run_sipp

WAIT = 10.0
BROWSER_SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "a=msid-semantic: WMS ws2sip\r\n"
    "m=audio 50000 UDP/TLS/RTP/SAVPF 111 0 8\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host generation 0\r\n"
    "a=ice-ufrag:{ufrag}\r\n"
    "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 "
    "8A:1F:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9"
    "\r\n"
    "a=setup:{setup}\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
)


def browser_sdp(setup: str) -> str:
    return BROWSER_SDP.replace("{ufrag}", secrets.token_hex(2)).replace("{setup}", setup)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    cseq: int = 1


@dataclass
class WsSipClient:
    """A SIP-over-WebSocket UA speaking like JsSIP: one WebSocket, `.invalid` addresses."""

    user: str
    password: str
    url: str
    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    host: str = field(default_factory=lambda: f"{secrets.token_hex(5)}.invalid")
    incoming: asyncio.Queue[Request | Response] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, user: str, password: str) -> WsSipClient:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, protocols=("sip",))
        client = cls(user, password, url, session, ws)
        client.reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                data = frame.data.encode() if isinstance(frame.data, str) else frame.data
                if data.strip():
                    self.incoming.put_nowait(parse_message(data))

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        if self.reader is not None:
            await self.reader

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{DOMAIN}"

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host};transport=ws>"

    def _via(self) -> str:
        return f"SIP/2.0/WSS {self.host};branch=z9hG4bK{secrets.token_hex(6)}"

    async def send(self, message: Request | Response) -> None:
        await self.ws.send_str(message.to_bytes().decode())

    async def next(self, kind: type, method: str | None = None) -> Request | Response:
        """The next message of that kind (Request/Response) and method, skipping 1xx and
        other requests' traffic only when looking for a response to `method`."""
        while True:
            message = await asyncio.wait_for(self.incoming.get(), WAIT)
            if not isinstance(message, kind):
                continue
            if isinstance(message, Response):
                if message.status < 200 or (method and message.cseq.method != method):
                    continue
            elif method and message.method != method:
                continue
            return message

    def new_request(self, method: str, uri: str, *, to: str, call_id: str, cseq: int,
                    from_tag: str, routes: list[str] = (), body: str = "") -> Request:
        request = Request(method, uri)
        request.add("Via", self._via())
        for route in routes:
            request.add("Route", route)
        request.add("Max-Forwards", "69")
        request.add("From", f"<{self.aor}>;tag={from_tag}")
        request.add("To", to)
        request.add("Call-ID", call_id)
        request.add("CSeq", f"{cseq} {method}")
        request.add("Contact", self.contact)
        if body:
            request.set_body(body.encode(), "application/sdp")
        return request

    async def _authenticated(self, request: Request) -> Response:
        """Send; answer a 401/407 once with our credentials; the final response."""
        await self.send(request)
        response = await self.next(Response, request.method)
        if response.status not in (401, 407):
            return response
        if request.method == "INVITE":
            await self.send(_ack_for_failure(request, response))
        header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
        credentials = build_authorization(
            select_challenge(response.get_all(header)), method=request.method,
            uri=request.uri, username=self.user, password=self.password,
        )
        retry = request.copy()
        retry.remove_first_value("via")
        retry.prepend("Via", self._via())
        retry.set("CSeq", f"{request.cseq.number + 1} {request.method}")
        retry.add("Authorization" if response.status == 401 else "Proxy-Authorization",
                  credentials)
        await self.send(retry)
        return await self.next(Response, request.method)

    async def register(self) -> None:
        request = self.new_request("REGISTER", f"sip:{DOMAIN}", to=f"<{self.aor}>",
                                   call_id=secrets.token_hex(8), cseq=1,
                                   from_tag=secrets.token_hex(4))
        request.set("Contact", f"{self.contact};+sip.instance=\"<urn:uuid:{secrets.token_hex(8)}"
                               f">\";reg-id=1;expires=600")
        response = await self._authenticated(request)
        assert response.status == 200, f"REGISTER {self.user}: {response.status}"

    async def call(self, callee: str, sdp: str) -> tuple[Response, Dialog | None]:
        """INVITE callee with sdp; ACK a 2xx (along its Record-Route); the final response."""
        invite = self.new_request("INVITE", f"sip:{callee}@{DOMAIN}",
                                  to=f"<sip:{callee}@{DOMAIN}>", call_id=secrets.token_hex(8),
                                  cseq=1, from_tag=secrets.token_hex(4), body=sdp)
        final = await self._authenticated(invite)
        if final.status >= 300:
            return final, None
        dialog = Dialog(
            call_id=invite.call_id, local_tag=invite.from_.tag or "",
            remote_tag=final.to.tag or "", local_uri=self.aor, remote_uri=final.to.uri_text,
            remote_target=final.contacts[0].uri_text,
            route_set=list(reversed(final.get_all("record-route"))), cseq=final.cseq.number,
        )
        ack = self._in_dialog("ACK", dialog, cseq=dialog.cseq)
        await self.send(ack)
        return final, dialog

    async def answer(self, sdp: str) -> tuple[Request, Dialog]:
        """Take the next INVITE: 180, then 200 with sdp; wait for the ACK."""
        invite = await self.next(Request, "INVITE")
        assert isinstance(invite, Request)
        tag = secrets.token_hex(4)
        ringing = invite.response(180, to_tag=tag)
        await self.send(ringing)
        ok = invite.response(200, to_tag=tag)
        for route in invite.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", self.contact)
        ok.set_body(sdp.encode(), "application/sdp")
        await self.send(ok)
        await self.next(Request, "ACK")
        dialog = Dialog(
            call_id=invite.call_id, local_tag=tag, remote_tag=invite.from_.tag or "",
            local_uri=self.aor, remote_uri=invite.from_.uri_text,
            remote_target=invite.contacts[0].uri_text,
            route_set=invite.get_all("record-route"), cseq=100,
        )
        return invite, dialog

    def _in_dialog(self, method: str, dialog: Dialog, cseq: int | None = None) -> Request:
        if cseq is None:
            dialog.cseq += 1
        request = Request(method, dialog.remote_target)
        request.add("Via", self._via())
        for route in dialog.route_set:
            request.add("Route", route)
        request.add("Max-Forwards", "69")
        request.add("From", f"<{dialog.local_uri}>;tag={dialog.local_tag}")
        request.add("To", f"<{dialog.remote_uri}>;tag={dialog.remote_tag}")
        request.add("Call-ID", dialog.call_id)
        request.add("CSeq", f"{cseq if cseq is not None else dialog.cseq} {method}")
        request.add("Content-Length", "0")
        return request

    async def hang_up(self, dialog: Dialog) -> Response:
        await self.send(self._in_dialog("BYE", dialog))
        return await self.next(Response, "BYE")

    async def take_bye(self) -> Request:
        bye = await self.next(Request, "BYE")
        assert isinstance(bye, Request)
        await self.send(bye.response(200))
        return bye


def _ack_for_failure(invite: Request, response: Response) -> Request:
    ack = Request("ACK", invite.uri)
    ack.add("Via", invite.get_all("via")[0])
    ack.add("Max-Forwards", "69")
    ack.add("From", invite.get("from") or "")
    ack.add("To", response.get("to") or "")
    ack.add("Call-ID", invite.call_id)
    ack.add("CSeq", f"{invite.cseq.number} ACK")
    ack.add("Content-Length", "0")
    return ack


async def ws_gateway(factory: GatewayFactory) -> GatewayProcess:
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    return await factory(users=users, domain=DOMAIN, transports=("udp", "ws"))


async def test_two_websocket_clients_call_each_other_and_the_callee_hangs_up(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await ws_gateway(gateway_factory)
    alice = await WsSipClient.connect(gateway.ws_url, "alice", gateway.users["alice"])
    bob = await WsSipClient.connect(gateway.ws_url, "bob", gateway.users["bob"])
    try:
        await alice.register()
        await bob.register()
        offer = browser_sdp("actpass")
        answer = browser_sdp("active")
        calling = asyncio.create_task(alice.call("bob", offer))
        invite, bob_dialog = await bob.answer(answer)
        final, alice_dialog = await calling
        assert final.status == 200 and alice_dialog is not None
        # Browser to browser: the SDP passes untouched both ways.
        assert invite.body.decode() == offer
        assert final.body.decode() == answer
        assert invite.uri == f"sip:bob@{bob.host};transport=ws"
        assert all("ws2sip-flow=" in route for route in invite.get_all("record-route"))
        bye_relayed = asyncio.create_task(alice.take_bye())
        assert (await bob.hang_up(bob_dialog)).status == 200
        bye = await bye_relayed
        assert bye.call_id == invite.call_id
    finally:
        await alice.close()
        await bob.close()


async def test_websocket_client_calls_a_udp_phone(gateway_factory: GatewayFactory) -> None:
    gateway = await ws_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "uas_answer.xml")
    alice = await WsSipClient.connect(gateway.ws_url, "alice", gateway.users["alice"])
    try:
        await alice.register()
        final, dialog = await alice.call("bob", browser_sdp("actpass"))
        assert final.status == 200 and dialog is not None
        assert (await alice.hang_up(dialog)).status == 200
    finally:
        await alice.close()
    answered = await callee.wait()
    answered.assert_success()
    invite = received_requests(answered, "INVITE")[0]
    # Two Record-Route entries: the transport changes from WebSocket to UDP.
    assert invite.count("Record-Route:") == 2
    assert f"sip:127.0.0.1:{gateway.udp_port};transport=udp;lr" in invite
    assert received_requests(answered, "BYE")


async def test_udp_phone_calls_a_websocket_client_which_hangs_up(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await ws_gateway(gateway_factory)
    bob = await WsSipClient.connect(gateway.ws_url, "bob", gateway.users["bob"])
    try:
        await bob.register()
        caller = asyncio.create_task(run_sipp(
            "proxy_uac_callee_hangs_up.xml", remote=f"127.0.0.1:{gateway.udp_port}",
            service="bob", auth=("alice", gateway.users["alice"]), keys={"domain": DOMAIN},
            timeout=15, media_port=free_udp_ports(4), name="uac-to-ws",
        ))
        invite, dialog = await bob.answer(browser_sdp("active"))
        assert invite.uri == f"sip:bob@{bob.host};transport=ws"
        assert (await bob.hang_up(dialog)).status == 200
        result = await caller
        result.assert_success()
        assert received_requests(result, "BYE")
    finally:
        await bob.close()


async def test_call_between_users_on_two_nodes_sharing_redis(
    gateway_factory: GatewayFactory, redis_url: str,
) -> None:
    secret = secrets.token_hex(16)
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    node_a = await gateway_factory(users=users, domain=DOMAIN, transports=("udp", "tcp"),
                                   redis_url=redis_url, node_id="node-a",
                                   extra_args=["--auth-secret", secret])
    node_b = await gateway_factory(domain=DOMAIN, transports=("udp", "tcp", "ws"),
                                   redis_url=redis_url, node_id="node-b",
                                   extra_args=["--auth-secret", secret])
    bob = await WsSipClient.connect(node_b.ws_url, "bob", users["bob"])
    try:
        await bob.register()
        caller = asyncio.create_task(run_sipp(
            "uac_call.xml", remote=f"127.0.0.1:{node_a.udp_port}", service="bob",
            auth=("alice", users["alice"]), keys={"domain": DOMAIN}, call_duration_ms=300,
            timeout=15, media_port=free_udp_ports(4), name="alice-on-node-a",
        ))
        invite, _ = await bob.answer(browser_sdp("active"))
        bye = await bob.take_bye()
        result = await caller
        result.assert_success()
    finally:
        await bob.close()
    # Node A relayed to node B over the nodes' internal TCP address (A's Via below B's), and B
    # delivered on bob's WebSocket.
    vias = invite.get_all("via")
    assert len(vias) == 3, vias
    assert vias[0].startswith("SIP/2.0/WS")
    assert vias[1].startswith(f"SIP/2.0/TCP 127.0.0.1:{node_a.tcp_port};")
    assert bye.call_id == invite.call_id
    assert "SIP/2.0 200" in messages(result)
