"""When and how the proxy anchors a call's media: only where the two ends speak different media
profiles (a browser's DTLS-SRTP/ICE and a phone's plain RTP), like rtpengine beside Kamailio.
Browser-to-browser and phone-to-phone media is left alone.

Each offer/answer exchange (initial INVITE, re-INVITE, UPDATE; late offers whose offer comes in
the 2xx and answer in the ACK) goes through one MediaSession per dialog, so ports, ICE and DTLS
state survive hold/resume and codec changes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sip.errors import SipError
from sip.message import Message
from webrtc import MediaError, RelayHandle, SessionHandle

from .dialogs import Dialog
from .routing import Side

log = logging.getLogger(f"ws2sip.{__name__}")

SDP = "application/sdp"


@dataclass(eq=False, slots=True)
class Exchange:
    """One offer/answer exchange across the anchor, between the `offerer` and `answerer` sides."""

    offerer: Side | None  # side whose offer the session processed; None until a late offer
    answerer: Side | None
    rewritten_answer: bytes | None = None


def has_sdp(message: Message) -> bool:
    return bool(message.body) and message.content_type == SDP


DEFAULT_MAX_SESSIONS = 2_000
RETRY_AFTER_WHEN_FULL = 10  # seconds


class MediaAnchor:
    def __init__(self, relay: RelayHandle, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self.relay = relay
        # Anchored calls at once (each holds 2-4 relay ports); past it new ones get 503.
        self.max_sessions = max_sessions

    async def offer(
        self, dialog: Dialog, request: Message, sender: Side, receiver: Side
    ) -> tuple[Exchange, bytes | None] | None:
        """Start an exchange for a request crossing from the `sender` to the `receiver` side.
        Returns None when no anchoring is needed, else the exchange and the rewritten offer
        (None for a request without SDP: a late offer, answered with an offer in the 2xx)."""
        if sender == receiver:
            return None
        if not has_sdp(request):
            return Exchange(None, None), None
        body = await self._call(self._session(dialog).process_offer, request.body, sender)
        return Exchange(sender, receiver), body

    async def response(
        self, dialog: Dialog, exchange: Exchange, response: Message, responder: Side
    ) -> None:
        """SDP in a 18x/2xx: the answer to our offer, or (late offer) the responder's offer."""
        if not has_sdp(response):
            return
        if exchange.offerer is None:
            body = await self._call(self._session(dialog).process_offer, response.body, responder)
            exchange.offerer, exchange.answerer = responder, None
            dialog.ack_answer_pending = True
            response.set_body(body, SDP)
            return
        if exchange.rewritten_answer is None:
            # 183 then 200 (and retransmissions) carry the same answer: rewrite it once.
            exchange.rewritten_answer = await self._call(
                self._session(dialog).process_answer, response.body, responder
            )
        response.set_body(exchange.rewritten_answer, SDP)

    async def ack(self, dialog: Dialog, ack: Message, sender: Side) -> None:
        """Late offer: the caller's answer arrives in the ACK for the 2xx."""
        pending, dialog.ack_answer_pending = dialog.ack_answer_pending, False
        if not pending or not has_sdp(ack):
            return
        body = await self._call(self._session(dialog).process_answer, ack.body, sender)
        ack.set_body(body, SDP)

    async def release(self, dialog: Dialog) -> None:
        if dialog.media is not None:
            session, dialog.media = dialog.media, None
            await session.close()
            log.debug("media of %s released", dialog.call_id)

    def _session(self, dialog: Dialog) -> SessionHandle:
        if dialog.media is None:
            if self.relay.active_sessions >= self.max_sessions:
                log.warning("media sessions full (%d): call %s refused with 503",
                            self.max_sessions, dialog.call_id[:80])
                raise SipError(503, "Service Unavailable (too many media sessions)",
                               headers=[("Retry-After", str(RETRY_AFTER_WHEN_FULL))])
            dialog.media = self.relay.create_session(dialog.call_id)
        return dialog.media

    @staticmethod
    async def _call(
        step: Callable[[str, Side], Awaitable[str]], body: bytes, side: Side
    ) -> bytes:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SipError(400, "SDP is not UTF-8") from error
        try:
            return (await step(text, side)).encode()
        except MediaError as error:
            raise SipError(error.status, error.reason) from error
