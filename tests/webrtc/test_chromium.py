"""Real Chromium against the media relay: the gateway answers a=setup:active and is the DTLS
client, or offers actpass and is the DTLS server; each side hears the other's tone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.support.audio import assert_hears
from tests.support.browser import (
    StaticServer,
    dominant_frequency,
    launch_browser,
    loopback_only,
    peer_connection_stats,
    write_browser_tone,
)
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import target_of, wait_for
from webrtc import MediaRelay
from webrtc.session import MediaSession

BROWSER_TONE = 440.0
PHONE_TONE = 1000.0

# A bare RTCPeerConnection on the page: microphone (the fake device plays the tone WAV)
# sent, the remote track kept as window.remoteStream.
SETUP_PAGE = """async (opusOnly) => {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  window.remoteStream = new MediaStream();
  pc.ontrack = (event) => window.remoteStream.addTrack(event.track);
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  const transceiver = pc.addTransceiver(mic.getAudioTracks()[0], {direction: "sendrecv"});
  if (opusOnly) {
    const codecs = RTCRtpReceiver.getCapabilities("audio").codecs;
    transceiver.setCodecPreferences(codecs.filter((c) => c.mimeType === "audio/opus"));
  }
}"""
CREATE_OFFER = """async () => {
  await pc.setLocalDescription(await pc.createOffer());
  await window.ws2sipMedia.gatheringComplete(pc);
  return pc.localDescription.sdp;
}"""
ACCEPT_ANSWER = "async (sdp) => { await pc.setRemoteDescription({type: 'answer', sdp}); }"
# A remote offer gets its own transceiver (the page's addTransceiver one is not reused), so
# the microphone goes onto that one before answering, as a softphone does.
ANSWER_OFFER = """async (sdp) => {
  await pc.setRemoteDescription({type: 'offer', sdp});
  const offered = pc.getTransceivers().find((t) => t.mid !== null);
  await offered.sender.replaceTrack(pc.getTransceivers()[0].sender.track);
  offered.direction = "sendrecv";
  await pc.setLocalDescription(await pc.createAnswer());
  await window.ws2sipMedia.gatheringComplete(pc);
  return pc.localDescription.sdp;
}"""


@pytest.fixture
async def chromium_page(tmp_path: Path) -> AsyncIterator[Page]:
    tone = write_browser_tone(tmp_path / "browser-tone.wav", BROWSER_TONE)
    async with StaticServer() as site, launch_browser(tone, name="media") as browser:
        page = await browser.open(site.url("webrtc.html"))
        yield page


async def hear_each_other(page: Page, session: MediaSession, phone: RtpPeer) -> None:
    await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 25, seconds=15)
    phone.play_in_background(PHONE_TONE, 4.0)
    assert abs(await dominant_frequency(page, "window.remoteStream", 2000) - PHONE_TONE) < 15
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)


@pytest.mark.parametrize("opus_only", [False, True], ids=["pcmu-relayed", "opus-transcoded"])
async def test_chromium_offers_gateway_answers_active(
    relay: MediaRelay, phone: RtpPeer, chromium_page: Page, opus_only: bool
) -> None:
    await chromium_page.evaluate(SETUP_PAGE, opus_only)
    offer = loopback_only(await chromium_page.evaluate(CREATE_OFFER))
    session = relay.create_session("chromium-offers")
    plain_offer = await session.process_offer(offer, "webrtc")
    phone.target = target_of(plain_offer)
    answer = await session.process_answer(asterisk_sdp(phone.port, "0 101"), "plain")
    assert "a=setup:active" in answer
    await chromium_page.evaluate(ACCEPT_ANSWER, answer)

    await hear_each_other(chromium_page, session, phone)
    stats = await peer_connection_stats(chromium_page, "pc")
    assert stats["dtlsState"] == "connected"
    assert stats["inboundCodec"] == ("audio/opus" if opus_only else "audio/PCMU")
    assert (session.stats()["transcoded_frames"] > 0) == opus_only


async def test_phone_offers_chromium_answers_gateway_is_dtls_server(
    relay: MediaRelay, phone: RtpPeer, chromium_page: Page
) -> None:
    await chromium_page.evaluate(SETUP_PAGE, False)
    session = relay.create_session("phone-offers")
    offer = await session.process_offer(asterisk_sdp(phone.port, "0 8 101"), "plain")
    answer = loopback_only(await chromium_page.evaluate(ANSWER_OFFER, offer))
    assert "a=setup:active" in answer
    phone.target = target_of(await session.process_answer(answer, "webrtc"))

    await hear_each_other(chromium_page, session, phone)
    assert (await peer_connection_stats(chromium_page, "pc"))["dtlsState"] == "connected"


SETUP_AUDIO_VIDEO = """async () => {
  const pc = new RTCPeerConnection();
  window.pc = pc;
  window.remoteStream = new MediaStream();
  pc.ontrack = (event) => window.remoteStream.addTrack(event.track);
  const media = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
  for (const track of media.getTracks()) pc.addTransceiver(track, {direction: "sendrecv"});
}"""
FRAMES_DECODED = """async () => {
  let frames = 0;
  (await pc.getStats()).forEach((entry) => {
    if (entry.type === "inbound-rtp" && entry.kind === "video") frames += entry.framesDecoded;
  });
  return frames;
}"""


async def test_chromium_audio_and_bundled_vp8_video(
    relay: MediaRelay, phone: RtpPeer, chromium_page: Page
) -> None:
    """Audio and video share one BUNDLE transport on the WebRTC leg and get a port each on the
    plain leg; an echoing video phone makes Chromium decode its own VP8 frames."""
    from webrtc.sdp import parse

    await chromium_page.evaluate(SETUP_AUDIO_VIDEO)
    offer = loopback_only(await chromium_page.evaluate(CREATE_OFFER))
    session = relay.create_session("chromium-video")
    plain_offer = parse(await session.process_offer(offer, "webrtc"))
    audio, video = plain_offer.first("audio"), plain_offer.first("video")
    assert audio is not None and video is not None
    vp8 = next(c for c in video.codecs if c.name.upper() == "VP8")
    video_phone = await RtpPeer().start()
    video_phone.echo = True
    try:
        phone.target = (audio.address, audio.port)  # type: ignore[assignment]
        video_phone.target = (video.address, video.port)  # type: ignore[assignment]
        answer = await session.process_answer(
            asterisk_sdp(phone.port, "0 101") + f"m=video {video_phone.port} RTP/AVP "
            f"{vp8.payload_type}\r\na=rtpmap:{vp8.payload_type} VP8/90000\r\na=sendrecv\r\n",
            "plain")
        assert parse(answer).bundle_mids == [m.mid for m in parse(offer).media][:2]
        await chromium_page.evaluate(ACCEPT_ANSWER, answer)

        await hear_each_other(chromium_page, session, phone)
        await wait_for(lambda: len(video_phone.packets) > 50, seconds=15)
        assert {p.payload_type for p in video_phone.packets} == {vp8.payload_type}
        frames = 0
        for _ in range(100):
            frames = await chromium_page.evaluate(FRAMES_DECODED)
            if frames >= 10:
                break
            await chromium_page.wait_for_timeout(100)
        assert frames >= 10
    finally:
        await video_phone.close()
