"""Audio transcoding for calls without a common codec (e.g. Opus-only browser, G.711 phone).

Decoding is aiortc's codecs (PyAV); packets are put back in order first (webrtc.reorder).
Encoding is our own, for telephone audio: G.711 goes into Opus at its own 8 kHz, mono
(webrtc.opus), and Opus is resampled once to 8 kHz mono for G.711. The transcoder is the sender
of its output stream, so it owns SSRC, sequence numbers and timestamps.
"""

from __future__ import annotations

import secrets
import struct
from typing import Literal, cast

import av
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .codecs import Codec
from .opus import FRAME_MS, OpusVoiceEncoder
from .reorder import ReorderBuffer

# PyAV's names for them; as literals, its CodecContext.create types the result as audio.
_G711_CODECS: dict[str, Literal["pcm_mulaw", "pcm_alaw"]] = {
    "pcmu": "pcm_mulaw", "pcma": "pcm_alaw",
}
_G711_RATE = 8000


def _parameters(codec: Codec, kind: str = "audio") -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=f"{kind}/{codec.name}", clockRate=codec.clock_rate,
        channels=codec.channels, payloadType=codec.payload_type,
    )


class G711Encoder:
    """Decoded audio (any rate and layout) in, 20 ms G.711 frames out.

    aiortc's PcmEncoder would do, but its resampler holds back the first 20 ms for want of
    2 ms of filter delay, and every frame after it stays 20 ms late. Here the stream starts with
    that delay as silence, so each decoded frame comes out at once.
    """

    def __init__(self, codec: Codec) -> None:
        self._codec = av.CodecContext.create(_G711_CODECS[codec.name.lower()], "w")
        self._codec.sample_rate = _G711_RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.open()
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=_G711_RATE)
        self._fifo = av.AudioFifo()
        self._frame_samples = _G711_RATE * FRAME_MS // 1000
        self._aligned = False

    def encode(self, frame: av.AudioFrame) -> list[bytes]:
        payloads: list[bytes] = []
        for resampled in self._resampler.resample(frame):
            if not self._aligned:
                self._aligned = True
                self._write_silence(-resampled.samples % self._frame_samples)
            resampled.pts = None  # the fifo checks pts continuity; timing is the transcoder's
            self._fifo.write(resampled)
        while (chunk := self._fifo.read(self._frame_samples)) is not None:
            payloads.extend(bytes(packet) for packet in self._codec.encode(chunk))
        return payloads

    def _write_silence(self, samples: int) -> None:
        if samples:
            silence = av.AudioFrame(format="s16", layout="mono", samples=samples)
            silence.sample_rate = _G711_RATE
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            self._fifo.write(silence)


def _encoder_for(source: Codec, target: Codec) -> OpusVoiceEncoder | G711Encoder:
    name = target.name.lower()
    if name == "opus":
        # G.711 decodes to 8 kHz mono, which libopus takes as it is.
        return OpusVoiceEncoder(input_rate=source.clock_rate)
    if name in _G711_CODECS:
        return G711Encoder(target)
    raise ValueError(f"no transcoding encoder for {target.name} (from {source.name})")


class AudioTranscoder:
    """Turns RTP packets of `source` (and its telephone-events) into RTP packets of `target`."""

    def __init__(
        self, source: Codec, target: Codec,
        source_events: Codec | None = None, target_events: Codec | None = None,
    ) -> None:
        self._target = target
        self._source_events = source_events
        self._target_events = target_events
        self._decoder = get_decoder(_parameters(source))
        self._encoder = _encoder_for(source, target)
        self._reorder: ReorderBuffer[RtpPacket] = ReorderBuffer()
        self._ssrc = secrets.randbits(32)
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._samples_per_packet = target.clock_rate * FRAME_MS // 1000
        self._first = True
        self._event_source_timestamp: int | None = None
        self._event_timestamp = 0
        self.frames = 0

    def __call__(self, packet: bytes) -> list[bytes]:
        try:
            rtp = RtpPacket.parse(packet)
        except ValueError:
            return []
        if self._source_events and rtp.payload_type == self._source_events.payload_type:
            return self._translate_event(rtp)
        produced = []
        for ordered in self._reorder.push(rtp.sequence_number, rtp):
            for decoded in self._decoder.decode(JitterFrame(ordered.payload, ordered.timestamp)):
                self.frames += 1
                # An audio decoder's frames are audio frames; aiortc's Decoder base types
                # them as PyAV's Frame, the base of audio and video frames.
                for payload in self._encoder.encode(cast(av.AudioFrame, decoded)):
                    produced.append(self._packet(self._target.payload_type, payload,
                                                 self._first, self._timestamp))
                    self._first = False
                    self._timestamp = (self._timestamp + self._samples_per_packet) & 0xFFFFFFFF
        return produced

    def _translate_event(self, rtp: RtpPacket) -> list[bytes]:
        """RFC 4733 events: same event, timestamp and duration rescaled to the target clock."""
        if self._target_events is None or self._source_events is None or len(rtp.payload) < 4:
            return []
        if rtp.timestamp != self._event_source_timestamp:
            self._event_source_timestamp = rtp.timestamp
            self._event_timestamp = self._timestamp
        event, flags, duration = struct.unpack_from("!BBH", rtp.payload)
        scaled = duration * self._target_events.clock_rate // self._source_events.clock_rate
        payload = struct.pack("!BBH", event, flags, min(scaled, 0xFFFF)) + rtp.payload[4:]
        return [self._packet(self._target_events.payload_type, payload, bool(rtp.marker),
                             self._event_timestamp)]

    def _packet(self, payload_type: int, payload: bytes, marker: bool, timestamp: int) -> bytes:
        header = struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | payload_type, self._sequence,
            timestamp, self._ssrc,
        )
        self._sequence = (self._sequence + 1) & 0xFFFF
        return header + payload
