"""A PBX's voicemail and busy lamps as Asterisk sends them, written by hand on a raw UDP socket
(tests.sip.core_peer.RawUdpPeer) at the trunk's trusted address 127.0.0.2: unsolicited MWI
NOTIFYs (res_pjsip_mwi with `mailboxes=` and no subscription), and a notifier for
subscriptions to a mailbox (message-summary, "2 new") and to an extension's hint (dialog,
always busy). Presence it refuses with 489, as Asterisk does for an unknown package."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

from sip.message import Request
from tests.sip.core_peer import RawUdpPeer

PBX_ADDRESS = "127.0.0.2"  # another loopback address, so that only the PBX is trusted
BUSY_EXTENSION = (
    '<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
    'version="0" state="full" entity="sip:201@pbx">\n'
    '<dialog id="a1" direction="recipient"><state>confirmed</state></dialog>\n</dialog-info>\n'
)


class VoicemailPbx:
    """The PBX's side of MWI and BLF, as Asterisk sends it."""

    def __init__(self, peer: RawUdpPeer, gateway: tuple[str, int], domain: str) -> None:
        self.peer = peer
        self.domain = domain
        self.gateway = gateway
        self.subscribes: list[Request] = []
        self.notify_answers: dict[str, int] = {}  # Call-ID of our NOTIFY → final status
        self._answered = asyncio.Event()
        self._task = asyncio.create_task(self._serve())

    async def notify_answer(self, call_id: str, timeout: float = 10.0) -> int:
        """The final status the NOTIFY of that Call-ID got (waiting for it)."""
        async def answered() -> int:
            while call_id not in self.notify_answers:
                self._answered.clear()
                await self._answered.wait()
            return self.notify_answers[call_id]

        return await asyncio.wait_for(answered(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peer.close()

    def unsolicited_mwi(self, user: str, new: int, old: int) -> str:
        """Asterisk's unsolicited MWI: a NOTIFY outside any dialog to the user's contact;
        returns its Call-ID."""
        host, port = self.peer.address
        call_id = secrets.token_hex(8)
        body = f"Messages-Waiting: yes\r\nMessage-Account: sip:{user}@{self.domain}\r\n" \
               f"Voice-Message: {new}/{old} (0/0)\r\n"
        self.peer.send(
            f"NOTIFY sip:{user}@{self.gateway[0]}:{self.gateway[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:asterisk@{host}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{user}@{self.domain}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 NOTIFY\r\n"
            f"Contact: <sip:asterisk@{host}:{port}>\r\n"
            "Event: message-summary\r\n"
            "Subscription-State: terminated\r\n"
            "Content-Type: application/simple-message-summary\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}", self.gateway)
        return call_id

    async def _serve(self) -> None:
        while True:
            message = await self.peer.next_message(timeout=3600)
            if not isinstance(message, Request):
                if message.status >= 200:
                    self.notify_answers[message.call_id] = message.status
                    self._answered.set()
                continue
            if message.method != "SUBSCRIBE":
                self.peer.send(message.response(200).to_bytes(), self.gateway)
                continue
            self.subscribes.append(message)
            event = (message.get("event") or "").split(";")[0]
            body = {
                "message-summary": ("application/simple-message-summary",
                                    "Messages-Waiting: yes\r\nVoice-Message: 2/5 (0/0)\r\n"),
                "dialog": ("application/dialog-info+xml", BUSY_EXTENSION),
            }.get(event)
            if body is None:
                self.peer.send(message.response(489, "Bad Event").to_bytes(), self.gateway)
                continue
            self._accept(message, *body)

    def _accept(self, subscribe: Request, content_type: str, body: str) -> None:
        tag = f"pbx{secrets.token_hex(3)}"
        host, port = self.peer.address
        ok = subscribe.response(200, to_tag=tag)
        for route in subscribe.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", f"<sip:{subscribe.ruri.user}@{host}:{port}>")
        ok.add("Expires", subscribe.get("expires") or "600")
        ok.add("Content-Length", "0")
        self.peer.send(ok.to_bytes(), self.gateway)
        routes = "".join(f"Route: {r}\r\n" for r in subscribe.get_all("record-route"))
        self.peer.send(
            f"NOTIFY {subscribe.contacts[0].uri_text} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"{routes}Max-Forwards: 70\r\n"
            f"From: {subscribe.get('to')};tag={tag}\r\n"
            f"To: {subscribe.get('from')}\r\n"
            f"Call-ID: {subscribe.call_id}\r\n"
            "CSeq: 1 NOTIFY\r\n"
            f"Contact: <sip:{subscribe.ruri.user}@{host}:{port}>\r\n"
            f"Event: {subscribe.get('event')}\r\n"
            f"Subscription-State: active;expires={subscribe.get('expires') or '600'}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}", self.gateway)


def trunk_config(path: Path, pbx_port: int) -> str:
    path.write_text(
        "[[trunks]]\n"
        'name = "pbx"\n'
        f'address = "{PBX_ADDRESS}:{pbx_port}"\n'
        'match = "2[0-9]{2}|97[0-9]{2}"\n'
        f'trusted_sources = ["{PBX_ADDRESS}"]\n'
    )
    return str(path)
