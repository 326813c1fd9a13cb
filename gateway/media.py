"""When and how the proxy anchors a call's media: only where the two ends speak different media
profiles (a browser's DTLS-SRTP/ICE and a phone's plain RTP), like rtpengine beside Kamailio.
Browser-to-browser and phone-to-phone media is left alone."""

from __future__ import annotations

import logging

from sip.errors import SipError
from sip.flow import Flow
from sip.message import Message, Request
from webrtc import MediaError, MediaRelay

from .dialogs import Dialog
from .routing import Destination, side_of_sdp

log = logging.getLogger("ws2sip.media")

SDP = "application/sdp"


class MediaAnchor:
    def __init__(self, relay: MediaRelay) -> None:
        self.relay = relay

    async def offer_for(
        self, dialog: Dialog, request: Request, incoming: Flow, destinations: list[Destination]
    ) -> bytes | None:
        """The rewritten offer for branches of the other kind, or None when no branch needs
        one (same kind everywhere, or a late offer: then the 200 carries the offer)."""
        dialog.caller_kind = side_of_sdp(request.body, incoming.transport)
        if not any(d.kind != dialog.caller_kind for d in destinations):
            return None
        if not request.body or request.content_type != SDP:
            return None
        session = self._session(dialog)
        try:
            offer = await session.process_offer(request.body.decode(), dialog.caller_kind)
        except MediaError as error:
            raise SipError(error.status, error.reason) from error
        return offer.encode()

    async def answer_from(self, dialog: Dialog, message: Message, sender_kind: str) -> None:
        """SDP in a response from a branch (183/200): rewrite it for the caller if anchored.
        A 200 with SDP to an INVITE without SDP is an offer (late offer)."""
        if sender_kind == dialog.caller_kind or message.content_type != SDP:
            return
        session = dialog.media
        cached = dialog.extra.get("rewritten_answer")
        if cached is not None:
            # 183 then 200 (or retransmissions) carry the same answer: rewrite it once.
            message.set_body(cached, SDP)
            return
        try:
            if session is None:
                session = self._session(dialog)
                dialog.extra["late_offer"] = True
                body = await session.process_offer(message.body.decode(), sender_kind)
            else:
                body = await session.process_answer(message.body.decode(), sender_kind)
        except MediaError as error:
            raise SipError(error.status, error.reason) from error
        dialog.extra["rewritten_answer"] = body.encode()
        message.set_body(body.encode(), SDP)

    async def answer_in_ack(self, dialog: Dialog, ack: Request, receiver_kind: str) -> None:
        """Late offer: the caller's answer comes in the ACK; rewrite it for the callee."""
        session = dialog.media
        if session is None or not dialog.extra.get("late_offer") or ack.content_type != SDP:
            return
        sender_kind = dialog.caller_kind
        if sender_kind == receiver_kind:
            return
        try:
            body = await session.process_answer(ack.body.decode(), sender_kind)
        except MediaError as error:
            raise SipError(error.status, error.reason) from error
        ack.set_body(body.encode(), SDP)

    async def release(self, dialog: Dialog) -> None:
        if dialog.media is not None:
            session, dialog.media = dialog.media, None
            await session.close()
            log.debug("media of %s released", dialog.call_id)

    def _session(self, dialog: Dialog):  # noqa: ANN202 - webrtc.MediaSession
        if dialog.media is None:
            dialog.media = self.relay.create_session(dialog.call_id)
        return dialog.media
