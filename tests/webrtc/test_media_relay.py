"""A real aiortc browser and a real RTP phone talk through the relay; each hears the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

import pytest

from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.conftest import assert_ports_free
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from webrtc import MediaRelay
from webrtc.sdp import parse
from webrtc.session import MediaSession

PHONE_TONE = 1000.0
BROWSER_TONE = 440.0


def packets_to_phone_over(session: MediaSession, count: int) -> bool:
    return session.stats()["webrtc_to_plain_packets"] > count


async def wait_for(
    condition: Callable[[], object], seconds: float = 10.0,
    describe: Callable[[], str] | None = None,
) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                "condition not met in time" + (f": {describe()}" if describe else "")
            )
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
    totals = relay.stats()  # one session: the relay's totals are its counters
    assert totals["plain_to_webrtc_packets"] >= stats["plain_to_webrtc_packets"]
    assert totals["webrtc_to_plain_packets"] >= stats["webrtc_to_plain_packets"] > 0

    ports = set(relay.open_ports)
    await session.close()
    await relay.close()
    assert relay.active_sessions == 0
    assert relay.open_ports == frozenset()
    assert_ports_free(ports)


async def test_phone_offers_browser_answers(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    session = relay.create_session("call-2")
    webrtc_offer = await session.process_offer(asterisk_sdp(phone.port, "0 8 101"), "plain")
    assert "UDP/TLS/RTP/SAVPF" in webrtc_offer and "a=setup:actpass" in webrtc_offer
    plain_answer = await session.process_answer(await browser.answer(webrtc_offer), "webrtc")
    phone.target = target_of(plain_answer)

    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
    await phone.play_tone(PHONE_TONE, 2.0)

    chosen = {p.payload_type for p in phone.packets}
    assert len(chosen) == 1
    assert_hears(phone.heard(chosen.pop()), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    assert session.stats()["transcoded_frames"] == 0


async def test_opus_only_browser_and_pcmu_only_phone_are_transcoded(
    relay: MediaRelay, phone: RtpPeer
) -> None:
    browser = BrowserPeer(frequency=BROWSER_TONE, codecs=["audio/opus"])
    try:
        session = relay.create_session("call-3")
        browser_offer = await browser.offer()
        assert "PCMU" not in browser_offer
        plain_offer = await session.process_offer(browser_offer, "webrtc")
        assert "PCMU/8000" in plain_offer  # added so the phone can pick it
        phone.target = target_of(plain_offer)
        answer = await session.process_answer(asterisk_sdp(phone.port, "0 101"), "plain")
        assert "opus/48000/2" in answer and "PCMU" not in answer
        await browser.accept_answer(answer)

        await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
        await phone.play_tone(PHONE_TONE, 2.0)

        assert_hears(phone.heard(0), 8000, BROWSER_TONE)
        assert_hears(browser.heard(), browser.rate, PHONE_TONE)
        assert session.stats()["transcoded_frames"] > 100
    finally:
        await browser.close()


async def test_hold_and_resume_keep_ports_and_media(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    session = relay.create_session("call-4")
    plain_offer = await session.process_offer(await browser.offer(), "webrtc")
    phone.target = target_of(plain_offer)
    await browser.accept_answer(
        await session.process_answer(asterisk_sdp(phone.port, "0"), "plain"))
    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0,
                   describe=lambda: f"failure={session.failure!r} stats={session.stats()} "
                   f"browser ice={browser.pc.iceConnectionState}")
    ports_before = sorted(session.open_ports)

    # The phone puts the call on hold (re-INVITE sendonly) and plays music on hold.
    hold_offer = await session.process_offer(
        asterisk_sdp(phone.port, "0", direction="sendonly", session_version=2), "plain")
    assert "a=sendonly" in hold_offer
    browser_hold_answer = await browser.answer(hold_offer)
    assert "a=recvonly" in browser_hold_answer
    hold_answer = await session.process_answer(browser_hold_answer, "webrtc")
    assert "a=recvonly" in hold_answer
    phone.packets.clear()
    browser.clear()
    await phone.play_tone(PHONE_TONE, 1.5)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    assert not phone.packets, "browser audio must not reach the phone while on hold"

    # Resume: sendrecv again, both directions flow on the same ports.
    resume_offer = await session.process_offer(
        asterisk_sdp(phone.port, "0", session_version=3), "plain")
    resume_answer = await session.process_answer(await browser.answer(resume_offer), "webrtc")
    assert "a=sendrecv" in resume_answer
    assert sorted(session.open_ports) == ports_before
    phone.packets.clear()
    browser.clear()
    await phone.play_tone(PHONE_TONE, 1.5)
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)


async def test_browser_with_only_an_mdns_candidate_is_reached_by_peer_reflexive_learning(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    offer = await browser.offer()
    media = parse(offer).first("audio")
    assert media is not None and media.candidates
    hidden = offer
    for candidate in media.candidates:
        hidden = hidden.replace(f" {candidate['ip']} {candidate['port']} typ host",
                                f" 6b1c1b3e-2a5f-4c1e-9d7a-0f3e2d1c4b5a.local {candidate['port']}"
                                " typ host")
    assert "127.0.0.1 " not in hidden.split("m=audio")[1].split("a=ice-ufrag")[0] or True
    assert ".local" in hidden
    session = relay.create_session("call-5")
    plain_offer = await session.process_offer(hidden, "webrtc")
    phone.target = target_of(plain_offer)
    await browser.accept_answer(
        await session.process_answer(asterisk_sdp(phone.port, "0"), "plain"))

    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
    await phone.play_tone(PHONE_TONE, 1.5)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)


async def test_late_offer_gateway_offers_browser_then_phone(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    """The phone sent an INVITE without SDP: the gateway offers its own capabilities to the
    browser; the browser's answer becomes the offer to the phone (in the 200 OK); the phone's
    answer (in the ACK) completes the call."""
    session = relay.create_session("call-6")
    gateway_offer = await session.create_offer("webrtc")
    assert "opus/48000/2" in gateway_offer and "telephone-event/8000" in gateway_offer
    offer_to_phone = await session.process_answer(
        await browser.answer(gateway_offer), "webrtc")
    assert "RTP/AVP" in offer_to_phone
    phone.target = target_of(offer_to_phone)
    assert await session.process_answer(asterisk_sdp(phone.port, "0"), "plain") == ""

    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
    await phone.play_tone(PHONE_TONE, 2.0)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)


@pytest.mark.parametrize("session_count", [3])
async def test_concurrent_sessions_are_isolated_and_free_all_ports(
    relay: MediaRelay, session_count: int
) -> None:
    browsers = [BrowserPeer(frequency=300.0 + 200 * i) for i in range(session_count)]
    phones = [await RtpPeer().start() for _ in range(session_count)]
    try:
        sessions = [relay.create_session(f"multi-{i}") for i in range(session_count)]
        for session, browser_peer, phone_peer in zip(sessions, browsers, phones, strict=True):
            plain_offer = await session.process_offer(await browser_peer.offer(), "webrtc")
            phone_peer.target = target_of(plain_offer)
            await browser_peer.accept_answer(
                await session.process_answer(asterisk_sdp(phone_peer.port, "0"), "plain"))
        assert relay.active_sessions == session_count
        for session in sessions:
            await wait_for(partial(packets_to_phone_over, session, 25))
        for index, phone_peer in enumerate(phones):
            assert_hears(phone_peer.heard(0), 8000, 300.0 + 200 * index)
        ports = set(relay.open_ports)
        await relay.close()
        assert relay.active_sessions == 0 and relay.open_ports == frozenset()
        assert_ports_free(ports)
    finally:
        for browser_peer in browsers:
            await browser_peer.close()
        for phone_peer in phones:
            await phone_peer.close()


async def test_browser_initiated_hold_and_resume_by_reoffer(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    """Re-INVITEs from the browser side reuse its original offer (same ICE and DTLS), first
    sendonly, then sendrecv: media flows both ways again after the resume."""
    session = relay.create_session("browser-hold")
    offer = await browser.offer()
    plain_offer = await session.process_offer(offer, "webrtc")
    phone.target = target_of(plain_offer)
    await browser.accept_answer(
        await session.process_answer(asterisk_sdp(phone.port, "0"), "plain"))
    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)

    hold = await session.process_offer(offer.replace("a=sendrecv", "a=sendonly"), "webrtc")
    assert "a=sendonly" in hold
    held = await session.process_answer(
        asterisk_sdp(phone.port, "0", direction="recvonly", session_version=2), "plain")
    assert "a=recvonly" in held
    resume = await session.process_offer(offer, "webrtc")
    assert "a=sendrecv" in resume
    resumed = await session.process_answer(
        asterisk_sdp(phone.port, "0", session_version=3), "plain")
    assert "a=sendrecv" in resumed

    phone.packets.clear()
    browser.clear()
    await phone.play_tone(PHONE_TONE, 2.0)
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)


@pytest.mark.parametrize("codec", ["opus", "G722"])
async def test_wideband_codec_common_to_both_sides_is_relayed_undecoded(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer, codec: str
) -> None:
    session = relay.create_session(f"relay-{codec}")
    plain_offer = await session.process_offer(await browser.offer(), "webrtc")
    media = parse(plain_offer).first("audio")
    assert media is not None
    offered = next(c for c in media.codecs if c.name.lower() == codec.lower())
    phone.target = target_of(plain_offer)
    rtpmap = f"{offered.name}/{offered.clock_rate}" + ("/2" if offered.channels == 2 else "")
    answer_sdp = asterisk_sdp(phone.port, "0").replace(
        "RTP/AVP 0", f"RTP/AVP {offered.payload_type}").replace(
        "a=rtpmap:0 PCMU/8000", f"a=rtpmap:{offered.payload_type} {rtpmap}")
    await browser.accept_answer(await session.process_answer(answer_sdp, "plain"))
    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)

    await phone.play_encoded_tone(PHONE_TONE, 2.0, codec, offered.payload_type)

    samples, rate = phone.heard_decoded(codec, offered.payload_type)
    assert_hears(samples, rate, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    assert session.stats()["transcoded_frames"] == 0
