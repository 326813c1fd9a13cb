"""A real aiortc browser and a real RTP phone talk through the relay; each hears the other."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.conftest import assert_ports_free
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from webrtc import MediaRelay
from webrtc.sdp import parse

PHONE_TONE = 1000.0
BROWSER_TONE = 440.0


async def wait_for(condition, seconds: float = 10.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def target_of(sdp: str) -> tuple[str, int]:
    media = parse(sdp).first("audio")
    assert media is not None and media.address is not None
    return media.address, media.port


async def test_browser_offers_phone_answers_pcmu_relayed(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    session = relay.create_session("call-1")
    plain_offer = await session.process_offer(await browser.offer(), "webrtc")
    assert "RTP/AVP" in plain_offer
    phone.target = target_of(plain_offer)
    webrtc_answer = await session.process_answer(asterisk_sdp(phone.port, "0 101"), "plain")
    assert "a=setup:active" in webrtc_answer
    await browser.accept_answer(webrtc_answer)

    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
    await phone.play_tone(PHONE_TONE, 2.0)

    assert_hears(phone.heard(0), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    stats = session.stats()
    assert stats["transcoded_frames"] == 0
    assert stats["plain_to_webrtc_packets"] >= 90
    assert {p.payload_type for p in phone.packets} == {0}

    ports = set(relay.open_ports)
    await session.close()
    await relay.close()
    assert relay.active_sessions == 0
    assert relay.open_ports == frozenset()
    assert_ports_free(ports)
