"""A plain RTP endpoint standing in for a SIP phone: sends G.711 µ-law tones and RFC 4733
events, records everything it receives."""

from __future__ import annotations

import asyncio
import audioop  # deprecated, still in 3.11; G.711 µ-law in one call
import fractions
import secrets
import struct
from dataclasses import dataclass

import numpy as np
from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame

from tests.support.audio import sine_pcm

FRAME_SAMPLES = 160  # 20 ms at 8 kHz


def _parameters(codec: str, payload_type: int) -> RTCRtpCodecParameters:
    if codec == "opus":
        return RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2,
                                     payloadType=payload_type)
    return RTCRtpCodecParameters(mimeType=f"audio/{codec}", clockRate=8000, channels=1,
                                 payloadType=payload_type)


@dataclass
class ReceivedPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, peer: RtpPeer) -> None:
        self.peer = peer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass


class RtpPeer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.packets: list[ReceivedPacket] = []
        self.rtcp_packets: list[bytes] = []
        self.sources: set[tuple[str, int]] = set()
        self.target: tuple[str, int] | None = None
        self.ssrc = secrets.randbits(32)
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._tasks: list[asyncio.Task[None]] = []
        self.echo = False  # send every received RTP packet back to `target`

    async def start(self) -> RtpPeer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, 0))
        return self

    async def start_rtcp(self) -> int:
        """A separate RTCP socket (announced with a=rtcp:); returns its port."""
        loop = asyncio.get_running_loop()
        self.rtcp_transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, 0))
        return int(self.rtcp_transport.get_extra_info("sockname")[1])

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.add(addr)
        if len(data) >= 2 and 192 <= data[1] <= 223:
            self.rtcp_packets.append(data)
            return
        if self.echo and self.transport is not None and self.target is not None:
            self.transport.sendto(data, self.target)
        first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", data)
        header = 12 + 4 * (first & 0x0F)
        self.packets.append(ReceivedPacket(
            second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, data[header:]))

    def send_packet(self, payload_type: int, payload: bytes, *, marker: bool = False,
                    timestamp: int | None = None) -> None:
        assert self.transport is not None and self.target is not None
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type,
                             self._sequence, self._timestamp if timestamp is None else timestamp,
                             self.ssrc)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self.transport.sendto(header + payload, self.target)

    async def play_tone(self, frequency: float, seconds: float, payload_type: int = 0) -> None:
        """Paced 20 ms µ-law packets of a tone; bounded by `seconds`."""
        pcm = sine_pcm(frequency, seconds, 8000)
        encode = audioop.lin2ulaw if payload_type == 0 else audioop.lin2alaw
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, offset in enumerate(range(0, len(pcm), FRAME_SAMPLES * 2)):
            chunk = pcm[offset:offset + FRAME_SAMPLES * 2]
            if len(chunk) < FRAME_SAMPLES * 2:
                break
            self.send_packet(payload_type, encode(chunk, 2), marker=index == 0)
            self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + (index + 1) * 0.02 - loop.time()))

    async def play_encoded_tone(self, frequency: float, seconds: float, codec: str,
                                payload_type: int) -> None:
        """A tone encoded with aiortc's encoder for `codec` ("opus", "G722"), paced at 20 ms."""
        encoder = get_encoder(_parameters(codec, payload_type))
        rate, step = (48000, 960) if codec == "opus" else (16000, 320)
        clock_step = 960 if codec == "opus" else 160
        pcm = np.frombuffer(sine_pcm(frequency, seconds, rate), dtype="<i2")
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(len(pcm) // step):
            frame = AudioFrame.from_ndarray(pcm[index * step:(index + 1) * step].reshape(1, -1),
                                            format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = index * step
            frame.time_base = fractions.Fraction(1, rate)
            for payload in encoder.encode(frame)[0]:
                self.send_packet(payload_type, payload, marker=index == 0)
                self._timestamp = (self._timestamp + clock_step) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + (index + 1) * 0.02 - loop.time()))

    def heard_decoded(self, codec: str, payload_type: int) -> tuple[np.ndarray, int]:
        """Received packets of `payload_type` decoded with aiortc's decoder: samples, rate."""
        decoder = get_decoder(_parameters(codec, payload_type))
        chunks = []
        rate = 8000
        for packet in self.packets:
            if packet.payload_type != payload_type:
                continue
            for frame in decoder.decode(JitterFrame(packet.payload, packet.timestamp)):
                assert isinstance(frame, AudioFrame)  # an audio decoder's
                channels = len(frame.layout.channels)
                chunks.append(frame.to_ndarray().reshape(-1, channels).mean(axis=1))
                rate = frame.sample_rate
        samples = np.concatenate(chunks) if chunks else np.zeros(0)
        return samples[int(0.2 * rate):], rate

    def play_in_background(self, frequency: float, seconds: float, payload_type: int = 0) -> None:
        self._tasks.append(asyncio.create_task(self.play_tone(frequency, seconds, payload_type)))

    async def send_dtmf(self, event: int, payload_type: int = 101, packets: int = 5) -> None:
        """One RFC 4733 event: `packets` updates 20 ms apart, the last three marked end."""
        start = self._timestamp
        for index in range(packets):
            end = index >= packets - 1
            duration = (index + 1) * FRAME_SAMPLES
            payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
            for _ in range(3 if end else 1):
                self.send_packet(payload_type, payload, marker=index == 0, timestamp=start)
            await asyncio.sleep(0.02)
        self._timestamp = (start + packets * FRAME_SAMPLES) & 0xFFFFFFFF

    def heard(self, payload_type: int = 0, skip_seconds: float = 0.2) -> np.ndarray:
        """The µ-law (PT 0) or A-law (PT 8) audio received, decoded, in arrival order."""
        decode = audioop.ulaw2lin if payload_type == 0 else audioop.alaw2lin
        pcm = b"".join(decode(p.payload, 2) for p in self.packets
                       if p.payload_type == payload_type)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        return samples[int(skip_seconds * 8000):]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
