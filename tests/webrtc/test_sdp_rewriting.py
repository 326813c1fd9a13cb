"""Offer/answer rewriting between Chrome-style WebRTC SDP and Asterisk-style plain SDP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.webrtc.sdp_samples import (
    CHROME_AUDIO_OFFER,
    CHROME_AUDIO_VIDEO_OFFER,
    CHROME_DATACHANNEL_LINE,
    CHROME_OFFER_WITHOUT_FINGERPRINT,
    CHROME_OPUS_ONLY_OFFER,
    CHROME_VIDEO_ONLY_OFFER,
    asterisk_sdp,
    chrome_audio_answer,
)
from webrtc import MediaError, MediaRelay, MediaSession
from webrtc.sdp import parse


@pytest.fixture
async def session(relay: MediaRelay) -> AsyncIterator[MediaSession]:
    media_session = relay.create_session("sdp")
    yield media_session
    await media_session.close()


def rtpmaps(sdp: str, kind: str = "audio") -> list[tuple[int, str]]:
    media = parse(sdp).first(kind)
    assert media is not None
    return [(c.payload_type, f"{c.name}/{c.clock_rate}") for c in media.codecs]


def attribute_lines(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=")]


async def test_chrome_offer_becomes_plain_rtp_offer_in_codec_order(
    relay: MediaRelay, session: MediaSession
) -> None:
    plain = await session.process_offer(CHROME_AUDIO_OFFER, "webrtc")
    media = parse(plain).first("audio")
    assert media is not None
    assert media.protocol == "RTP/AVP"
    assert media.address == "127.0.0.1" and media.port in relay.open_ports
    assert media.port % 2 == 0 and media.port + 1 in relay.open_ports  # RTCP on port+1
    assert rtpmaps(plain) == [
        (111, "opus/48000"), (9, "G722/8000"), (0, "PCMU/8000"), (8, "PCMA/8000"),
        (110, "telephone-event/48000"), (126, "telephone-event/8000"),
    ]
    assert media.direction == "sendrecv"
    for webrtc_only in ("ice-", "candidate", "fingerprint", "setup", "rtcp-mux", "rtcp-fb",
                        "extmap", "group:BUNDLE", "ssrc"):
        assert not any(webrtc_only in line for line in attribute_lines(plain)), webrtc_only
    assert "a=ptime:20" in plain
    assert "red/" not in plain and "CN/" not in plain


async def test_asterisk_answer_becomes_webrtc_answer_with_active_dtls(
    relay: MediaRelay, session: MediaSession
) -> None:
    await session.process_offer(CHROME_AUDIO_OFFER, "webrtc")
    answer = await session.process_answer(asterisk_sdp(10000, "0 101"), "plain")
    parsed = parse(answer)
    media = parsed.first("audio")
    assert media is not None
    assert media.protocol == "UDP/TLS/RTP/SAVPF"
    assert media.setup == "active"  # the gateway is DTLS client; passive stalls Chromium
    assert media.rtcp_mux and media.mid == "0" and parsed.bundle_mids == ["0"]
    assert media.ice_ufrag and media.ice_pwd and len(media.ice_pwd) >= 22
    assert media.fingerprints[0].algorithm == "sha-256"
    assert media.fingerprints[0] == relay._certificate.fingerprint
    candidate = media.candidates[0]
    assert candidate["ip"] == "127.0.0.1" and candidate["port"] == media.port
    assert media.port in relay.open_ports
    # PCMU, and telephone-event in the browser's numbering at the codec's clock.
    assert rtpmaps(answer) == [(0, "PCMU/8000"), (126, "telephone-event/8000")]


async def test_opus_only_browser_offer_adds_g711_for_transcoding(session: MediaSession) -> None:
    plain = await session.process_offer(CHROME_OPUS_ONLY_OFFER, "webrtc")
    assert rtpmaps(plain) == [
        (111, "opus/48000"), (0, "PCMU/8000"), (8, "PCMA/8000"),
        (110, "telephone-event/48000"), (101, "telephone-event/8000"),
    ]
    answer = await session.process_answer(asterisk_sdp(10000, "0 101"), "plain")
    assert rtpmaps(answer) == [(111, "opus/48000"), (110, "telephone-event/48000")]


async def test_asterisk_offer_becomes_webrtc_offer(session: MediaSession) -> None:
    offer = await session.process_offer(asterisk_sdp(10000, "0 8 101"), "plain")
    parsed = parse(offer)
    media = parsed.first("audio")
    assert media is not None
    assert media.protocol == "UDP/TLS/RTP/SAVPF" and media.setup == "actpass"
    assert media.rtcp_mux and parsed.bundle_mids == [media.mid]
    assert media.candidates and media.ice_ufrag
    assert "a=end-of-candidates" in offer and "a=msid:" in offer
    codecs = rtpmaps(offer)
    assert codecs[:3] == [(0, "PCMU/8000"), (8, "PCMA/8000"), (111, "opus/48000")]
    assert (101, "telephone-event/8000") in codecs
    assert any(name == "telephone-event/48000" for _, name in codecs)

    plain_answer = await session.process_answer(chrome_audio_answer("0 101"), "webrtc")
    answered = parse(plain_answer).first("audio")
    assert answered is not None and answered.protocol == "RTP/AVP"
    assert rtpmaps(plain_answer) == [(0, "PCMU/8000"), (101, "telephone-event/8000")]


@pytest.mark.parametrize(("held", "answered"), [("sendonly", "recvonly"),
                                                 ("inactive", "inactive")])
async def test_hold_reoffer_keeps_ports_and_directions(
    session: MediaSession, held: str, answered: str
) -> None:
    first = await session.process_offer(asterisk_sdp(10000, "0 101"), "plain")
    plain_answer = await session.process_answer(chrome_audio_answer("0 101"), "webrtc")
    hold = await session.process_offer(
        asterisk_sdp(10000, "0 101", direction=held, session_version=2), "plain")
    assert f"a={held}" in hold
    assert parse(hold).first("audio").port == parse(first).first("audio").port  # type: ignore[union-attr]
    assert parse(hold).first("audio").ice_ufrag == parse(first).first("audio").ice_ufrag  # type: ignore[union-attr]
    hold_answer = await session.process_answer(
        chrome_audio_answer("0 101", direction=answered), "webrtc")
    assert f"a={answered}" in hold_answer
    assert parse(hold_answer).first("audio").port == parse(plain_answer).first("audio").port  # type: ignore[union-attr]
    assert "o=- " in hold_answer and " 2 IN IP4" in hold_answer  # o= version bumped


async def test_browser_ice_restart_gets_new_credentials_and_keeps_plain_port(
    session: MediaSession,
) -> None:
    first_plain = parse(await session.process_offer(CHROME_AUDIO_OFFER, "webrtc"))
    first = parse(await session.process_answer(asterisk_sdp(10000, "0"), "plain")).first("audio")
    restarted = CHROME_AUDIO_OFFER.replace("ice-ufrag:Hq3F", "ice-ufrag:Nw7R").replace(
        "ice-pwd:YbW8l1n0g3aM4t9xPq2rK7cZ", "ice-pwd:Pq0sT2uV4wX6yZ8aB1cD3eF5")
    plain_reoffer = parse(await session.process_offer(restarted, "webrtc"))
    assert plain_reoffer.first("audio").port == first_plain.first("audio").port  # type: ignore[union-attr]
    again = parse(await session.process_answer(asterisk_sdp(10000, "0"), "plain")).first("audio")
    assert first is not None and again is not None
    assert again.setup == "active"
    assert (again.ice_ufrag, again.ice_pwd) != (first.ice_ufrag, first.ice_pwd)
    assert again.fingerprints == first.fingerprints

    # A re-offer with unchanged credentials (e.g. hold) keeps the ICE generation.
    same = parse(await session.process_offer(restarted.replace("a=sendrecv", "a=sendonly"),
                                             "webrtc"))
    assert same.first("audio").direction == "sendonly"  # type: ignore[union-attr]
    kept = parse(await session.process_answer(asterisk_sdp(10000, "0", direction="recvonly"),
                                              "plain")).first("audio")
    assert kept is not None and kept.ice_ufrag == again.ice_ufrag and kept.port == again.port


async def test_audio_video_offer_maps_both_and_rejects_datachannel(
    session: MediaSession,
) -> None:
    offer = (CHROME_AUDIO_VIDEO_OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
             + CHROME_DATACHANNEL_LINE)
    plain = await session.process_offer(offer, "webrtc")
    parsed = parse(plain)
    assert [m.kind for m in parsed.media] == ["audio", "video"]
    assert rtpmaps(plain, "video") == [(96, "VP8/90000"), (102, "H264/90000")]
    assert "rtx" not in plain
    video = parsed.first("video")
    audio = parsed.first("audio")
    assert video is not None and audio is not None and video.port != audio.port
    answer_text = asterisk_sdp(10000, "0") + "m=video 10002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
    answer = parse(await session.process_answer(answer_text, "plain"))
    assert [(m.kind, m.port != 0) for m in answer.media] == [
        ("audio", True), ("video", True), ("application", False)]
    assert answer.bundle_mids == ["0", "1"]
    assert answer.media[2].mid == "2"


async def test_late_offers_use_gateway_capabilities(relay: MediaRelay) -> None:
    to_plain = relay.create_session("late-plain")
    to_webrtc = relay.create_session("late-webrtc")
    try:
        plain = await to_plain.create_offer("plain")
        assert parse(plain).first("audio").protocol == "RTP/AVP"  # type: ignore[union-attr]
        assert [name for _, name in rtpmaps(plain)] == [
            "opus/48000", "G722/8000", "PCMU/8000", "PCMA/8000", "telephone-event/48000",
            "telephone-event/8000"]
        webrtc = parse(await to_webrtc.create_offer("webrtc")).first("audio")
        assert webrtc is not None and webrtc.setup == "actpass" and webrtc.candidates
        # The phone's answer to the late offer becomes the offer for the browser.
        browser_offer = await to_plain.process_answer(asterisk_sdp(10000, "8 101"), "plain")
        assert "UDP/TLS/RTP/SAVPF" in browser_offer
        assert rtpmaps(browser_offer)[:2] == [(8, "PCMA/8000"), (111, "opus/48000")]
        assert await to_plain.process_answer(chrome_audio_answer("8 101"), "webrtc") == ""
    finally:
        await to_plain.close()
        await to_webrtc.close()


@pytest.mark.parametrize(
    ("sdp", "side", "reason"),
    [
        (CHROME_VIDEO_ONLY_OFFER, "webrtc", "no audio m-line"),
        (CHROME_OFFER_WITHOUT_FINGERPRINT, "webrtc", "fingerprint"),
        (asterisk_sdp(10000, "0").replace("RTP/AVP 0", "RTP/AVP 18").replace(
            "a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000"), "plain", "no acceptable audio"),
        ("this is not sdp", "plain", "SDP"),
    ],
)
async def test_unacceptable_offers_raise_488(
    session: MediaSession, sdp: str, side: str, reason: str
) -> None:
    with pytest.raises(MediaError) as raised:
        await session.process_offer(sdp, side)  # type: ignore[arg-type]
    assert raised.value.status == 488
    assert reason in raised.value.reason


async def test_answer_without_common_codec_raises_488(session: MediaSession) -> None:
    await session.process_offer(CHROME_AUDIO_OFFER, "webrtc")
    with pytest.raises(MediaError) as raised:
        await session.process_answer(
            asterisk_sdp(10000, "9").replace("RTP/AVP 9", "RTP/AVP 18").replace(
                "a=rtpmap:9 G722/8000", "a=rtpmap:18 G729/8000"), "plain")
    assert raised.value.status == 488


async def test_close_is_idempotent_and_frees_ports(relay: MediaRelay) -> None:
    session = relay.create_session("closing")
    await session.process_offer(CHROME_AUDIO_OFFER, "webrtc")
    assert len(relay.open_ports) == 3  # RTP, RTCP, ICE
    await session.close()
    await session.close()
    assert session.closed and relay.open_ports == frozenset() and relay.active_sessions == 0
    with pytest.raises(MediaError):
        await session.process_offer(CHROME_AUDIO_OFFER, "webrtc")


def test_wildcard_bind_address_needs_a_public_host() -> None:
    with pytest.raises(ValueError, match="public_host"):
        MediaRelay(bind_host="0.0.0.0", port_min=40000, port_max=40100)
    MediaRelay(bind_host="0.0.0.0", public_host="127.0.0.1", port_min=40000, port_max=40100)


async def test_answer_from_the_side_that_got_no_offer_is_refused(session: MediaSession) -> None:
    await session.create_offer("webrtc")
    with pytest.raises(MediaError) as raised:
        await session.process_answer(asterisk_sdp(10000, "0"), "plain")
    assert raised.value.status == 500
