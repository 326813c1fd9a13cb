"""A browser-like SIP user agent over one WebSocket (RFC 7118), for tests and benches.

It writes what JsSIP writes on the wire (`.invalid` Via and Contact hosts, transport=ws), answers
digest challenges and keeps INVITE/ACK/BYE/re-INVITE dialogs along their Record-Route route sets,
on the project's own sip/ message layer. Media is up to the caller (e.g. aiortc as in
tests/webrtc/browser_peer.py): this class only carries SDP.

A reader task takes every frame. SIP responses go to the transaction waiting for them, or else
to `response()`. SIP requests are answered as a browser does (100 to a new INVITE, nothing to an
ACK or re-INVITE, 200 to the rest), recorded in `requests` and queued for `next_request()`.
Anything else (keepalive CRLFs, text that is not SIP, the close frame) waits for
`receive_text()` / `receive_frame()`, so edge tests can send and read raw frames.

    alice = await WsSipUa.connect(gateway.ws_url, "alice", password, domain=gateway.domain)
    assert (await alice.register()).status == 200
    final, dialog = await alice.call("bob", browser_sdp("actpass"))
    await alice.hang_up(dialog)
    await alice.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from sip.digest import build_authorization, select_challenge
from sip.errors import SipError
from sip.message import Request, Response, parse_message

DEFAULT_DOMAIN = "example.test"
WAIT = 10.0  # seconds for a response, a request or a frame the test expects
INVITE_WAIT = 30.0  # an INVITE's final response waits for the callee
CLOSING_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                 aiohttp.WSMsgType.ERROR)
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
    """A Chrome-like audio offer/answer (ICE, DTLS `setup`, rtcp-mux, Opus first) for signalling
    tests; nothing listens on its candidate."""
    return BROWSER_SDP.replace("{ufrag}", secrets.token_hex(2)).replace("{setup}", setup)


def ws_contact(instance: str | None = None, reg_id: int | None = None, *,
               user: str | None = None, host: str | None = None) -> str:
    """A Contact as JsSIP writes it: a user at a .invalid host (random unless given),
    transport=ws, with RFC 5626 instance and reg-id when given."""
    user = user or secrets.token_hex(4)
    host = host or f"{secrets.token_hex(6)}.invalid"
    value = f"<sip:{user}@{host};transport=ws>"
    if instance is not None:
        value += f';+sip.instance="<urn:uuid:{instance}>"'
    if reg_id is not None:
        value += f";reg-id={reg_id}"
    return value


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    cseq: int
    remote_sdp: str = ""


class WsSipUa:
    """One WebSocket connection speaking SIP as `user` of `domain`."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 user: str, password: str, domain: str) -> None:
        self.session = session
        self.ws = ws
        self.user = user
        self.password = password
        self.domain = domain
        self.host = f"{secrets.token_hex(5)}.invalid"
        self.contact = ws_contact(user=user or None, host=self.host)
        self.requests: list[Request] = []
        self._incoming: defaultdict[str, asyncio.Queue[Request]] = defaultdict(asyncio.Queue)
        self._transactions: dict[tuple[str, int, str], asyncio.Queue[Response]] = {}
        self._unclaimed_responses: asyncio.Queue[Response] = asyncio.Queue()
        self._other_frames: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, user: str = "", password: str = "", *,
                      domain: str = DEFAULT_DOMAIN, **ws_options: Any) -> WsSipUa:
        """Open the WebSocket (subprotocol "sip"); user and password serve register() and
        calls, a raw client may leave them empty and pass them to register()."""
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, protocols=("sip",), **ws_options)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, user, password, domain)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.session.close()

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    # --- frames ----------------------------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            frame = await self.ws.receive()
            if frame.type in CLOSING_TYPES:
                self._other_frames.put_nowait(frame)
                return
            data = frame.data.encode() if isinstance(frame.data, str) else frame.data
            message = _parse_sip(data) if frame.type is aiohttp.WSMsgType.TEXT else None
            if message is None:
                self._other_frames.put_nowait(frame)
            elif isinstance(message, Response):
                self._deliver(message)
            else:
                await self._on_request(message)

    def _deliver(self, response: Response) -> None:
        try:
            key = (response.call_id, response.cseq.number, response.cseq.method)
        except SipError:
            key = None
        waiting = self._transactions.get(key) if key else None
        (waiting or self._unclaimed_responses).put_nowait(response)

    async def _on_request(self, request: Request) -> None:
        self.requests.append(request)
        if request.method == "INVITE":
            if request.to.tag is None:
                await self.send(request.response(100))
        elif request.method != "ACK":
            await self.send(request.response(200))
        self._incoming[request.method].put_nowait(request)

    async def send(self, message: Request | Response) -> None:
        await self.ws.send_str(message.to_bytes().decode())

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive_frame(self, timeout: float = WAIT) -> aiohttp.WSMessage:
        """The next frame that is not a SIP message (e.g. a keepalive CRLF, the close frame)."""
        return await asyncio.wait_for(self._other_frames.get(), timeout)

    async def receive_text(self, timeout: float = WAIT) -> str:
        frame = await self.receive_frame(timeout)
        if frame.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {frame.type.name} {frame.data}")
        return frame.data

    async def response(self, timeout: float = WAIT) -> Response:
        """The next final response no transaction of this UA waits for (e.g. to send_text)."""
        while (response := await asyncio.wait_for(self._unclaimed_responses.get(), timeout)
               ).status < 200:
            pass
        return response

    async def next_request(self, method: str, timeout: float = WAIT) -> Request:
        """The oldest request of `method` received and not yet taken (already answered as
        described above, except an INVITE past its 100)."""
        return await asyncio.wait_for(self._incoming[method].get(), timeout)

    async def take_bye(self) -> Request:
        return await self.next_request("BYE")

    # --- requests and transactions ---------------------------------------------------------------
    def _via(self) -> str:
        return f"SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(8)}"

    def _request(
        self, method: str, uri: str, *, call_id: str, cseq: int, from_uri: str, from_tag: str,
        to: str, body: str = "", routes: Sequence[str] = (), contact: bool = True,
    ) -> Request:
        request = Request(method, uri)
        request.add("Via", self._via())
        for route in routes:
            request.add("Route", route)
        request.add("Max-Forwards", "70")
        request.add("From", f"<{from_uri}>;tag={from_tag}")
        request.add("To", to)
        request.add("Call-ID", call_id)
        request.add("CSeq", f"{cseq} {method}")
        if contact and method in ("INVITE", "SUBSCRIBE"):
            request.add("Contact", self.contact)
        if body:
            request.set_body(body.encode(), "application/sdp")
        return request

    def request_text(
        self, method: str, uri: str, *, from_user: str, to_user: str | None, call_id: str,
        cseq: int, headers: Sequence[tuple[str, str]] = (), body: str = "",
    ) -> str:
        """A request written out in full, for tests that alter its text before sending."""
        to_uri = f"sip:{to_user}@{self.domain}" if to_user else uri
        request = self._request(method, uri, call_id=call_id, cseq=cseq,
                                from_uri=f"sip:{from_user}@{self.domain}",
                                from_tag=secrets.token_hex(4), to=f"<{to_uri}>", body=body,
                                contact=False)
        for name, value in headers:
            request.add(name, value)
        return request.to_bytes().decode()

    async def _final_response(self, request: Request, timeout: float) -> Response:
        key = (request.call_id, request.cseq.number, request.method)
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._transactions[key] = queue
        try:
            await self.send(request)
            while (response := await asyncio.wait_for(queue.get(), timeout)).status < 200:
                pass
        finally:
            del self._transactions[key]
        if request.method == "INVITE" and response.status >= 300:
            await self.send(_ack_for_failure(request, response))
        return response

    async def _transact(self, request: Request, *, user: str | None = None,
                        password: str | None = None, timeout: float = WAIT) -> Response:
        """Send and return the final response, answering one 401/407 with digest."""
        response = await self._final_response(request, timeout)
        if response.status not in (401, 407):
            return response
        proxy = response.status == 407
        challenge = select_challenge(
            response.get_all("proxy-authenticate" if proxy else "www-authenticate"))
        retry = request.copy()
        retry.remove_first_value("via")
        retry.prepend("Via", self._via())
        retry.set("CSeq", f"{request.cseq.number + 1} {request.method}")
        retry.add("Proxy-Authorization" if proxy else "Authorization", build_authorization(
            challenge, method=request.method, uri=request.uri, username=user or self.user,
            password=self.password if password is None else password,
        ))
        return await self._final_response(retry, timeout)

    # --- registration ----------------------------------------------------------------------------
    async def register(
        self, user: str | None = None, password: str | None = None, *,
        contacts: Sequence[str] | None = None, expires: int | None = 300,
        aor_user: str | None = None, call_id: str | None = None, cseq: int = 1,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """REGISTER `user` (this UA's by default) for `aor_user` (the same by default), answer
        a 401 with digest, and return the final response.

        `contacts` None sends this UA's Contact; an empty list sends none (a fetch).
        `expires` None sends no Expires header.
        """
        user = user or self.user
        to_uri = f"sip:{aor_user or user}@{self.domain}"
        register_uri = f"sip:{self.domain}"
        request = self._request(
            "REGISTER", register_uri, call_id=call_id or secrets.token_hex(8), cseq=cseq,
            from_uri=f"sip:{user}@{self.domain}", from_tag=secrets.token_hex(4),
            to=f"<{to_uri}>",
        )
        for contact in (self.contact,) if contacts is None else contacts:
            request.add("Contact", contact)
        for name, value in headers:
            request.add(name, value)
        if expires is not None:
            request.set("Expires", str(expires))
        return await self._transact(request, user=user, password=password)

    async def message(self, target: str, body: str, timeout: float = WAIT) -> Response:
        """A MESSAGE (text/plain) to `target` (a user of this UA's domain); its final response."""
        uri = f"sip:{target}@{self.domain}"
        request = self._request("MESSAGE", uri, call_id=secrets.token_hex(8), cseq=1,
                                from_uri=self.aor, from_tag=secrets.token_hex(4), to=f"<{uri}>")
        request.set_body(body.encode(), "text/plain")
        return await self._transact(request, timeout=timeout)

    # --- calls -----------------------------------------------------------------------------------
    async def call(self, target: str, sdp: str = "") -> tuple[Response, Dialog | None]:
        """INVITE target (a SIP URI, or a user of this UA's domain) with an early offer, or a
        late offer without sdp; ACKs a 2xx when the offer was early (else call ack() with the
        answer). Returns the final response and, on a 2xx, the dialog."""
        uri = target if target.startswith(("sip:", "sips:")) else f"sip:{target}@{self.domain}"
        invite = self._request("INVITE", uri, call_id=secrets.token_hex(8), cseq=1,
                               from_uri=self.aor, from_tag=secrets.token_hex(4), to=f"<{uri}>",
                               body=sdp)
        final = await self._transact(invite, timeout=INVITE_WAIT)
        if not 200 <= final.status < 300:
            return final, None
        dialog = Dialog(
            call_id=invite.call_id, local_tag=invite.from_.tag or "",
            remote_tag=final.to.tag or "", local_uri=self.aor, remote_uri=final.to.uri_text,
            remote_target=final.contacts[0].uri_text,
            route_set=list(reversed(final.get_all("record-route"))), cseq=final.cseq.number,
            remote_sdp=final.body.decode(),
        )
        if sdp:
            await self.ack(dialog)
        return final, dialog

    async def ack(self, dialog: Dialog, sdp: str = "") -> None:
        await self.send(self._in_dialog("ACK", dialog, sdp, cseq=dialog.cseq))

    def _in_dialog(self, method: str, dialog: Dialog, sdp: str = "", cseq: int | None = None
                   ) -> Request:
        if cseq is None:
            dialog.cseq += 1
            cseq = dialog.cseq
        return self._request(
            method, dialog.remote_target, call_id=dialog.call_id, cseq=cseq,
            from_uri=dialog.local_uri, from_tag=dialog.local_tag,
            to=f"<{dialog.remote_uri}>;tag={dialog.remote_tag}", body=sdp,
            routes=dialog.route_set,
        )

    async def reinvite(self, dialog: Dialog, sdp: str) -> Response:
        request = self._in_dialog("INVITE", dialog, sdp)
        response = await self._transact(request)
        if 200 <= response.status < 300:
            dialog.remote_sdp = response.body.decode()
            await self.send(self._in_dialog("ACK", dialog, cseq=request.cseq.number))
        return response

    async def hang_up(self, dialog: Dialog) -> Response:
        return await self._transact(self._in_dialog("BYE", dialog))

    async def answer(self, sdp: str, invite: Request | None = None
                     ) -> tuple[Request, Dialog]:
        """Ring (180), then answer `invite` (by default the next incoming one) with sdp (our
        offer when it had none); returns once the ACK came."""
        invite = invite or await self.next_request("INVITE")
        tag = secrets.token_hex(4)
        ringing = invite.response(180, to_tag=tag)
        ringing.add("Contact", self.contact)
        await self.send(ringing)
        ok = invite.response(200, to_tag=tag)
        for route in invite.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", self.contact)
        ok.set_body(sdp.encode(), "application/sdp")
        await self.send(ok)
        await self.next_request("ACK")
        return invite, Dialog(
            call_id=invite.call_id, local_tag=tag, remote_tag=invite.from_.tag or "",
            local_uri=invite.to.uri_text, remote_uri=invite.from_.uri_text,
            remote_target=invite.contacts[0].uri_text,
            route_set=list(invite.get_all("record-route")), cseq=0,
            remote_sdp=invite.body.decode(),
        )


def _parse_sip(data: bytes) -> Request | Response | None:
    if not data.strip():
        return None
    try:
        return parse_message(data)
    except SipError:
        return None


def _ack_for_failure(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response: same branch as the INVITE (RFC 3261 §17.1.1.3)."""
    ack = Request("ACK", invite.uri)
    ack.add("Via", invite.get_all("via")[0])
    for route in invite.get_all("route"):
        ack.add("Route", route)
    ack.add("Max-Forwards", "70")
    ack.add("From", invite.get("from") or "")
    ack.add("To", response.get("to") or "")
    ack.add("Call-ID", invite.call_id)
    ack.add("CSeq", f"{invite.cseq.number} ACK")
    return ack
