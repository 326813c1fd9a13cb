"""VP8 video is relayed packet by packet: a video phone that echoes what it gets makes the
browser decode its own frames after two trips through the relay."""

from __future__ import annotations

import asyncio

from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamTrack

from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_media_relay import wait_for
from webrtc import MediaRelay
from webrtc.sdp import parse


async def test_vp8_video_is_relayed_both_ways(relay: MediaRelay, phone: RtpPeer) -> None:
    browser = BrowserPeer()
    browser.pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
    video_frames: list[object] = []
    readers: list[asyncio.Task[None]] = []

    async def read_video(track: MediaStreamTrack) -> None:
        while True:
            video_frames.append(await track.recv())

    @browser.pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            readers.append(asyncio.create_task(read_video(track)))

    video_phone = await RtpPeer().start()
    video_phone.echo = True
    try:
        session = relay.create_session("video")
        plain_offer = parse(await session.process_offer(await browser.offer(), "webrtc"))
        audio, video = plain_offer.first("audio"), plain_offer.first("video")
        assert audio is not None and video is not None and video.protocol == "RTP/AVP"
        vp8 = next(c for c in video.codecs if c.name.upper() == "VP8")
        phone.target = (audio.address, audio.port)  # type: ignore[assignment]
        video_phone.target = (video.address, video.port)  # type: ignore[assignment]
        answer_sdp = asterisk_sdp(phone.port, "0") + (
            f"m=video {video_phone.port} RTP/AVP {vp8.payload_type}\r\n"
            f"a=rtpmap:{vp8.payload_type} VP8/90000\r\na=sendrecv\r\n")
        answer = await session.process_answer(answer_sdp, "plain")
        assert parse(answer).first("video") is not None
        await browser.accept_answer(answer)

        await wait_for(lambda: len(video_frames) >= 10, seconds=15)
        assert {p.payload_type for p in video_phone.packets} == {vp8.payload_type}
        assert session.stats()["transcoded_frames"] == 0
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await browser.close()
        await video_phone.close()
