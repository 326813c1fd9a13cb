"""ICE credentials survive SDP parsing as written, even when they are all digits."""

from __future__ import annotations

import asyncio
import random

from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import wait_for
from webrtc import MediaRelay
from webrtc.codecs import PCMU
from webrtc.dtls import DtlsCertificate
from webrtc.ports import PortPool
from webrtc.sdp import MediaSection, SdpOrigin, parse, write_webrtc
from webrtc.webrtc_leg import WebRtcLeg

DIGITS_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:0000\r\n"
    "a=ice-pwd:0123456789012345678901\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=ice-ufrag:0123\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=rtpmap:96 VP8/90000\r\n"
)


def test_all_digit_credentials_keep_their_text_and_session_defaults() -> None:
    audio, video = parse(DIGITS_OFFER).media
    assert (audio.ice_ufrag, audio.ice_pwd) == ("0123", "0123456789012345678901")
    assert (video.ice_ufrag, video.ice_pwd) == ("0000", "0123456789012345678901")


async def test_browser_with_an_all_digit_ufrag_gets_srtp_keys(relay: MediaRelay) -> None:
    base = random.randrange(30000, 60000, 2)
    browser = WebRtcLeg(pool=PortPool("127.0.0.1", base, base + 100), public_host="127.0.0.1",
                        certificate=DtlsCertificate(), stun_server=None)
    await browser.prepare(ice_controlling=True)
    assert browser._ice is not None
    browser._ice._local_username = "0042"  # what aioice's random ufrag is once in ~1,500
    offer = write_webrtc(
        SdpOrigin("127.0.0.1"), "127.0.0.1",
        [MediaSection(kind="audio", port=browser.local_port, codecs=[PCMU], mid="0")],
        browser.local_params("actpass"))
    session = relay.create_session("digits")
    try:
        await session.process_offer(offer, "webrtc")
        answer = parse(await session.process_answer(asterisk_sdp(40000, "0"), "plain"))
        audio = answer.first("audio")
        assert audio is not None and audio.setup == "active"
        browser.start(audio, "server")
        await wait_for(lambda: browser.keyed, 15.0, lambda: f"relay: {session.failure}")
        assert session.failure is None
    finally:
        await asyncio.gather(browser.close(), session.close())
