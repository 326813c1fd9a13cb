"""aiortc's RTCPeerConnection as "the browser": plays a tone, records what it hears.

Confined to loopback: aioice would otherwise gather candidates on every interface except
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import aioice.ice
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

RATE = 48000
FRAME = 960


@contextmanager
def loopback_only(host: str = "127.0.0.1") -> Iterator[None]:
    with mock.patch.object(aioice.ice, "get_host_addresses", lambda **_: [host]):
        yield


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frequency: float, seconds: float = 30.0) -> None:
        super().__init__()
        self.frequency = frequency
        self._frames = int(seconds * RATE / FRAME)
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._index >= self._frames:
            self.stop()
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._index * 0.02 - time.monotonic()))
        t = (np.arange(FRAME) + self._index * FRAME) / RATE
        samples = (0.5 * 32767 * np.sin(2 * np.pi * self.frequency * t)).astype("<i2")
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._index * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._index += 1
        return frame


class BrowserPeer:
    def __init__(self, frequency: float = 440.0, codecs: list[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.pc = RTCPeerConnection()
        self.track = ToneTrack(frequency)
        self.transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        if codecs:
            available = RTCRtpSender.getCapabilities("audio").codecs
            self.transceiver.setCodecPreferences(
                [c for c in available if c.mimeType.lower() in codecs])
        self.samples: list[np.ndarray] = []
        self.rate = RATE
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)  # an audio track's
            channels = len(frame.layout.channels)
            data = frame.to_ndarray().reshape(-1, channels).mean(axis=1)
            self.rate = frame.sample_rate
            self.samples.append(data)

    def heard(self, skip_seconds: float = 0.3) -> np.ndarray:
        if not self.samples:
            return np.zeros(0)
        return np.concatenate(self.samples)[int(skip_seconds * self.rate):]

    def clear(self) -> None:
        self.samples.clear()

    async def offer(self) -> str:
        with loopback_only(self.host):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def answer(self, offer_sdp: str) -> str:
        with loopback_only(self.host):
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
