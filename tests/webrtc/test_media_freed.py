"""A call that ended is freed by reference counting alone: the gateway runs full collections
rarely (gateway/app.py, webrtc/worker.py), so a reference cycle per call would hold its ICE,
DTLS, SRTP and relay state for long after it ended."""

from __future__ import annotations

import gc

from tests.support.sip_fuzz import cyclic_garbage
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import target_of, wait_for
from webrtc import MediaRelay


async def a_call_that_ends(relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer) -> None:
    """A DTLS-SRTP call with media both ways, closed; nothing of it is referenced afterwards."""
    session = relay.create_session("freed-call")
    phone.target = target_of(await session.process_offer(await browser.offer(), "webrtc"))
    await browser.accept_answer(
        await session.process_answer(asterisk_sdp(phone.port, "0 101"), "plain"))
    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 10)
    await phone.play_tone(1000.0, 0.5)
    assert session.stats()["plain_to_webrtc_packets"] > 10  # media flowed both ways
    await session.close()


async def test_a_closed_dtls_srtp_call_leaves_nothing_in_reference_cycles(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    gc.disable()
    existing = {id(thing) for thing in gc.get_objects()}  # earlier tests' objects are not ours
    try:
        await a_call_that_ends(relay, browser, phone)
        garbage = cyclic_garbage(existing)
    finally:
        gc.enable()
    assert not garbage, f"a closed call left objects in reference cycles: {garbage.most_common(15)}"
