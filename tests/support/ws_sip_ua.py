"""A browser-like SIP user agent over WebSocket for tests: `.invalid` Via and Contact like JsSIP,
digest auth, INVITE/ACK/BYE/re-INVITE, built on the project's own sip/ message layer.

Media is up to the caller (e.g. aiortc's RTCPeerConnection as in tests/webrtc/browser_peer.py):
this class only carries SDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field

import aiohttp

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response, parse_message


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


@dataclass
class Incoming:
    request: Request
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class WsSipUa:
    def __init__(self, ws_url: str, user: str, password: str, domain: str) -> None:
        self.ws_url = ws_url
        self.user = user
        self.password = password
        self.domain = domain
        self.aor = f"sip:{user}@{domain}"
        self.host = f"{secrets.token_hex(5)}.invalid"
        self.contact = f"<sip:{user}@{self.host};transport=ws>"
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[tuple[str, int, str], asyncio.Queue[Response]] = {}
        self.invites: asyncio.Queue[Request] = asyncio.Queue()
        self.byes: asyncio.Queue[Request] = asyncio.Queue()
        self.requests: list[Request] = []

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.ws_url, protocols=("sip",))
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    # --- wire --------------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT or not frame.data.strip():
                continue
            message = parse_message(frame.data.encode())
            if isinstance(message, Response):
                key = (message.call_id, message.cseq.number, message.cseq.method)
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.put_nowait(message)
            else:
                await self._on_request(message)

    async def _send(self, message: Request | Response) -> None:
        assert self._ws is not None
        await self._ws.send_str(message.to_bytes().decode())

    async def _on_request(self, request: Request) -> None:
        self.requests.append(request)
        if request.method == "INVITE":
            if request.to.tag is None:
                await self._send(request.response(100))
            await self.invites.put(request)
        elif request.method == "BYE":
            await self._send(request.response(200))
            await self.byes.put(request)
        elif request.method in ("ACK",):
            return
        elif request.method == "CANCEL":
            await self._send(request.response(200))
        else:
            await self._send(request.response(200))

    def _request(
        self, method: str, uri: str, *, call_id: str, cseq: int, from_tag: str, to: str,
        body: str = "", routes: list[str] | None = None,
    ) -> Request:
        request = Request(method, uri)
        request.add("Via", f"SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(8)}")
        for route in routes or ():
            request.add("Route", route)
        request.add("Max-Forwards", "70")
        request.add("To", to)
        request.add("From", f"<{self.aor}>;tag={from_tag}")
        request.add("Call-ID", call_id)
        request.add("CSeq", f"{cseq} {method}")
        if method in ("INVITE", "REGISTER", "SUBSCRIBE"):
            request.add("Contact", self.contact)
        if body:
            request.set_body(body.encode(), "application/sdp")
        return request

    async def _transact(self, request: Request, timeout: float = 15.0) -> Response:
        """Send and wait for the final response (1xx are skipped); one digest retry."""
        for attempt in range(2):
            key = (request.call_id, request.cseq.number, request.cseq.method)
            queue: asyncio.Queue[Response] = asyncio.Queue()
            self._waiting[key] = queue
            try:
                await self._send(request)
                while True:
                    response = await asyncio.wait_for(queue.get(), timeout)
                    if response.status >= 200:
                        break
            finally:
                del self._waiting[key]
            if response.status not in (401, 407) or attempt == 1:
                return response
            request = self._authorized(request, response)
        return response

    def _authorized(self, request: Request, challenge: Response) -> Request:
        proxy = challenge.status == 407
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        chosen = select_challenge(challenge.get_all(header))
        retry = request.copy()
        retry.remove_first_value("via")
        retry.prepend("Via", f"SIP/2.0/WS {self.host};branch=z9hG4bK{secrets.token_hex(8)}")
        retry.set("CSeq", f"{request.cseq.number + 1} {request.method}")
        retry.add(
            "Proxy-Authorization" if proxy else "Authorization",
            build_authorization(chosen, method=request.method, uri=request.uri,
                                username=self.user, password=self.password),
        )
        return retry

    # --- user operations ---------------------------------------------------------------------
    async def register(self, expires: int = 300) -> Response:
        request = self._request(
            "REGISTER", f"sip:{self.domain}", call_id=secrets.token_hex(8), cseq=1,
            from_tag=secrets.token_hex(4), to=f"<{self.aor}>",
        )
        request.set("Expires", str(expires))
        return await self._transact(request)

    async def call(self, target: str, sdp: str = "") -> tuple[Response, Dialog | None]:
        """INVITE (early offer with sdp, late offer without); ACKs a 2xx (with `ack_sdp`
        supplied later through ack_late_offer for late offers)."""
        call_id = secrets.token_hex(8)
        tag = secrets.token_hex(4)
        invite = self._request("INVITE", target, call_id=call_id, cseq=1, from_tag=tag,
                               to=f"<{target}>", body=sdp)
        response = await self._transact(invite, timeout=30.0)
        if not 200 <= response.status < 300:
            return response, None
        dialog = Dialog(
            call_id=call_id, local_tag=tag, remote_tag=response.to.tag or "",
            local_uri=self.aor, remote_uri=target,
            remote_target=response.contacts[0].uri_text,
            route_set=list(reversed(response.get_all("record-route"))),
            cseq=response.cseq.number, remote_sdp=response.body.decode(),
        )
        if sdp:
            await self.ack(dialog)
        return response, dialog

    async def ack(self, dialog: Dialog, sdp: str = "") -> None:
        ack = self._in_dialog("ACK", dialog, sdp, cseq=dialog.cseq)
        await self._send(ack)

    def _in_dialog(self, method: str, dialog: Dialog, sdp: str = "", cseq: int | None = None
                   ) -> Request:
        if cseq is None:
            dialog.cseq += 1
            cseq = dialog.cseq
        return self._request(
            method, dialog.remote_target, call_id=dialog.call_id, cseq=cseq,
            from_tag=dialog.local_tag, to=f"<{dialog.remote_uri}>;tag={dialog.remote_tag}",
            body=sdp, routes=dialog.route_set,
        )

    async def reinvite(self, dialog: Dialog, sdp: str) -> Response:
        request = self._in_dialog("INVITE", dialog, sdp)
        response = await self._transact(request)
        if 200 <= response.status < 300:
            dialog.remote_sdp = response.body.decode()
            await self._send(self._in_dialog("ACK", dialog, cseq=request.cseq.number))
        return response

    async def bye(self, dialog: Dialog) -> Response:
        return await self._transact(self._in_dialog("BYE", dialog))

    async def answer(self, invite: Request, sdp: str) -> Dialog:
        """Ring, then answer an incoming INVITE with `sdp` (our offer when it had none)."""
        tag = secrets.token_hex(4)
        ringing = invite.response(180, to_tag=tag)
        ringing.add("Contact", self.contact)
        await self._send(ringing)
        ok = invite.response(200, to_tag=tag)
        for route in invite.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", self.contact)
        ok.set_body(sdp.encode(), "application/sdp")
        await self._send(ok)
        return Dialog(
            call_id=invite.call_id, local_tag=tag, remote_tag=invite.from_.tag or "",
            local_uri=invite.to.uri_text, remote_uri=invite.from_.uri_text,
            remote_target=invite.contacts[0].uri_text,
            route_set=list(invite.get_all("record-route")), cseq=0,
            remote_sdp=invite.body.decode(),
        )
