"""Transport behaviour: SRTCP <-> RTCP translation, symmetric latching, IPv6, ICE consent."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioice import stun
from aioice.utils import random_transaction_id

from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.conftest import loopback_relay
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import BROWSER_TONE, PHONE_TONE, target_of, wait_for
from webrtc import MediaRelay
from webrtc.sdp import parse
from webrtc.session import MediaSession


async def connect(session: MediaSession, browser: BrowserPeer, phone: RtpPeer,
                  payloads: str = "0", **sdp_options: Any) -> str:
    """Browser offers, phone answers with `payloads`; returns once media flows to the phone."""
    plain_offer = await session.process_offer(await browser.offer(), "webrtc")
    phone.target = target_of(plain_offer)
    answer = await session.process_answer(
        asterisk_sdp(phone.port, payloads, host=phone.host, **sdp_options), "plain")
    await browser.accept_answer(answer)
    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
    return answer


async def test_rtcp_is_translated_both_ways(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    rtcp_port = await phone.start_rtcp()
    session = relay.create_session("rtcp")
    await connect(session, browser, phone, rtcp_port=rtcp_port)
    browser_rtcp: list[bytes] = []
    dtls = browser.transceiver.receiver.transport
    original = dtls._handle_rtcp_data

    async def capture(data: bytes) -> None:
        browser_rtcp.append(data)
        await original(data)

    dtls._handle_rtcp_data = capture  # type: ignore[method-assign]  # a tap on aiortc's handler
    await phone.play_tone(PHONE_TONE, 0.5)
    # aiortc sends sender/receiver reports every second or so: they reach the phone in clear.
    await wait_for(lambda: any(p[1] in (200, 201) for p in phone.rtcp_packets))
    browser_ssrc = phone.packets[-1].ssrc
    report = struct.pack("!BBHI", 0x81, 201, 7, phone.ssrc) + struct.pack(
        "!IIIIII", browser_ssrc, 0, phone.packets[-1].sequence, 0, 0, 0)
    assert phone.target is not None
    phone.rtcp_transport.sendto(report, (phone.target[0], phone.target[1] + 1))  # type: ignore[union-attr]
    await wait_for(lambda: report in browser_rtcp)


async def test_symmetric_latching_follows_where_packets_come_from(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    decoy = await RtpPeer().start()  # the address in the SDP; the phone sends from elsewhere
    try:
        session = relay.create_session("latching")
        plain_offer = await session.process_offer(await browser.offer(), "webrtc")
        phone.target = target_of(plain_offer)
        await browser.accept_answer(
            await session.process_answer(asterisk_sdp(decoy.port, "0"), "plain"))
        await wait_for(lambda: len(decoy.packets) > 5)  # before latching: the SDP address
        await phone.play_tone(PHONE_TONE, 1.5)
        assert len(phone.packets) > 40  # after the first packet: where it came from
        assert_hears(phone.heard(0), 8000, BROWSER_TONE)
        assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    finally:
        await decoy.close()


@pytest.fixture
async def relay6() -> AsyncIterator[MediaRelay]:
    async with loopback_relay("::1") as media_relay:
        yield media_relay


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
async def test_ipv6_call(relay6: MediaRelay) -> None:
    browser = BrowserPeer(frequency=BROWSER_TONE, host="::1")
    phone = await RtpPeer(host="::1").start()
    try:
        session = relay6.create_session("v6")
        answer = await connect(session, browser, phone)
        assert "c=IN IP6 ::1" in answer and " ::1 " in answer
        await phone.play_tone(PHONE_TONE, 1.5)
        assert_hears(phone.heard(0), 8000, BROWSER_TONE)
        assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    finally:
        await browser.close()
        await phone.close()


async def response_to(
    loop: asyncio.AbstractEventLoop, checker: socket.socket, request: stun.Message
) -> stun.Message:
    """Skips the gateway's own (triggered) checks towards the checker's address."""
    while True:
        message = stun.parse_message(await loop.sock_recv(checker, 2048))
        if message.transaction_id == request.transaction_id:
            return message


async def test_gateway_answers_consent_checks_during_the_call(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    """RFC 7675: browsers stop sending after ~30 s without answers to their consent checks.
    A check signed like the browser's gets a success response while media flows."""
    session = relay.create_session("consent")
    answer = parse(await connect(session, browser, phone)).first("audio")
    assert answer is not None and answer.ice_pwd is not None
    browser_ufrag = parse(browser.pc.localDescription.sdp).first("audio").ice_ufrag  # type: ignore[union-attr]
    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{answer.ice_ufrag}:{browser_ufrag}"
    request.attributes["PRIORITY"] = 1853817087
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(answer.ice_pwd.encode())
    request.add_fingerprint()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as checker:
        checker.bind(("127.0.0.1", 0))
        checker.setblocking(False)
        for _ in range(3):
            await phone.play_tone(PHONE_TONE, 0.2)
            await loop.sock_sendto(checker, bytes(request), (answer.address, answer.port))
            response = await asyncio.wait_for(response_to(loop, checker, request), 5)
            assert response.message_class == stun.Class.RESPONSE
            assert response.transaction_id == request.transaction_id
            assert response.attributes["XOR-MAPPED-ADDRESS"] == checker.getsockname()
            request.transaction_id = random_transaction_id()
            request.attributes.pop("MESSAGE-INTEGRITY")
            request.attributes.pop("FINGERPRINT")
            request.add_message_integrity(answer.ice_pwd.encode())
            request.add_fingerprint()
    assert session.stats()["plain_to_webrtc_packets"] > 20


async def test_browser_reoffer_with_new_ice_and_dtls_restarts_both_and_media_resumes(
    relay: MediaRelay, phone: RtpPeer
) -> None:
    """A re-INVITE from a fresh peer connection (new ufrag/pwd and fingerprint, as after a
    browser transport reset): new ICE generation, new DTLS association, same plain port."""
    first = BrowserPeer(frequency=BROWSER_TONE)
    second = BrowserPeer(frequency=600.0)
    try:
        session = relay.create_session("restart")
        await connect(session, first, phone)
        ports_before = set(session.open_ports)
        reoffer = await session.process_offer(await second.offer(), "webrtc")
        assert target_of(reoffer)[1] == phone.target[1]  # type: ignore[index]
        answer = await session.process_answer(asterisk_sdp(phone.port, "0"), "plain")
        await second.accept_answer(answer)
        await first.close()
        phone.packets.clear()
        await wait_for(lambda: len(phone.packets) > 60)
        await phone.play_tone(PHONE_TONE, 1.5)
        assert_hears(phone.heard(0), 8000, 600.0)
        assert_hears(second.heard(), second.rate, PHONE_TONE)
        # The old ICE generation's port is released once the new one is nominated.
        assert len(set(session.open_ports)) == len(ports_before)
        assert set(session.open_ports) != ports_before
        assert relay.open_ports == frozenset(session.open_ports) | {phone.target[1] + 1}  # type: ignore[index]
    finally:
        await first.close()
        await second.close()


async def test_phone_rtcp_bye_during_stream_restart_does_not_silence_the_browser(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    """pjsua sends RTCP BYE when a re-INVITE rebuilds its stream, then goes on with the same
    SSRC; the anchor keeps the BYE from the browser, which would stop decoding for good."""
    rtcp_port = await phone.start_rtcp()
    session = relay.create_session("bye")
    await connect(session, browser, phone, rtcp_port=rtcp_port)
    await phone.play_tone(PHONE_TONE, 0.5)
    sender_report = struct.pack("!BBHIIIIII", 0x80, 200, 6, phone.ssrc, 0, 0, 0, 25, 4000)
    sdes = struct.pack("!BBHI", 0x81, 202, 3, phone.ssrc) + bytes([1, 2]) + b"ph" + bytes(4)
    bye = struct.pack("!BBHI", 0x81, 203, 1, phone.ssrc)
    assert phone.target is not None and phone.rtcp_transport is not None
    phone.rtcp_transport.sendto(sender_report + sdes + bye, (phone.target[0], phone.target[1] + 1))
    await asyncio.sleep(0.2)
    browser.clear()
    await phone.play_tone(PHONE_TONE, 1.5)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)


async def test_dtls_peer_whose_certificate_does_not_match_the_sdp_fingerprint_is_refused(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer
) -> None:
    offer = await browser.offer()
    real = parse(offer).first("audio").fingerprints[0].value  # type: ignore[union-attr]
    forged = ":".join(reversed(real.split(":")))
    session = relay.create_session("forged")
    phone_offer = await session.process_offer(offer.replace(real, forged), "webrtc")
    phone.target = target_of(phone_offer)
    await browser.accept_answer(
        await session.process_answer(asterisk_sdp(phone.port, "0"), "plain"))
    await wait_for(lambda: session.failure is not None)
    assert "fingerprint mismatch" in session.failure  # type: ignore[operator]
    await phone.play_tone(PHONE_TONE, 0.5)
    stats = session.stats()
    assert stats["webrtc_to_plain_packets"] == 0 and stats["plain_to_webrtc_packets"] == 0
    assert not phone.packets


async def test_new_browser_after_a_phone_offer_gets_a_fresh_active_dtls_role(
    relay: MediaRelay, phone: RtpPeer
) -> None:
    """The call began with the phone's offer (gateway DTLS server); a re-offer from a new
    peer connection is a new association, answered active like any browser offer."""
    first = BrowserPeer(frequency=BROWSER_TONE)
    second = BrowserPeer(frequency=600.0)
    try:
        session = relay.create_session("new-association")
        webrtc_offer = await session.process_offer(asterisk_sdp(phone.port, "0"), "plain")
        phone.target = target_of(await session.process_answer(
            await first.answer(webrtc_offer), "webrtc"))
        await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
        await session.process_offer(await second.offer(), "webrtc")
        answer = await session.process_answer(asterisk_sdp(phone.port, "0"), "plain")
        assert "a=setup:active" in answer
        await second.accept_answer(answer)
        await first.close()
        phone.packets.clear()
        await phone.play_tone(PHONE_TONE, 1.5)
        assert_hears(phone.heard(0), 8000, 600.0)
        assert_hears(second.heard(), second.rate, PHONE_TONE)
    finally:
        await first.close()
        await second.close()
