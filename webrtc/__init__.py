"""Media plane: anchors a WebRTC leg (ICE, DTLS-SRTP, rtcp-mux, BUNDLE) to a plain RTP leg.

One MediaRelay per gateway process; one MediaSession per dialog:

    relay = MediaRelay(bind_host="127.0.0.1", public_host="203.0.113.5",
                       port_min=20000, port_max=40000)
    session = relay.create_session(call_id)
    to_phone = await session.process_offer(browser_offer, "webrtc")     # INVITE
    to_browser = await session.process_answer(phone_answer, "plain")    # 183/200
    ...                                          # re-INVITE/UPDATE: same two calls again
    await session.close()                                               # BYE

Late offer (INVITE without SDP), when the gateway makes up the offer: create_offer(side)
gives the offer for `side`; process_answer(answer, side) returns the offer for the other side
(for the 2xx), and that side's answer (ACK) goes to process_answer(answer, other) -> "".
Forwarding the SDP-less INVITE instead (offer in the 2xx, answer in the ACK) needs nothing
special: process_offer on the 2xx, process_answer on the ACK.

Failures the gateway answers with a SIP status raise MediaError (status 488 for SDP it cannot
accept). Media with a common codec is relayed packet by packet; Opus <-> G.711 is transcoded.

MediaWorkers(count, ...) runs the relay in `count` worker processes instead (await start()
first); it and its sessions meet the same RelayHandle/SessionHandle interface.
"""

from .errors import MediaError
from .handles import RelayHandle, SessionHandle
from .relay import MediaRelay
from .session import MediaSession, Side
from .workers import MediaWorkers, RemoteSession

__all__ = ["MediaError", "MediaRelay", "MediaSession", "MediaWorkers", "RelayHandle",
           "RemoteSession", "SessionHandle", "Side"]
