"""Audio transcoding for calls without a common codec (e.g. Opus-only browser, G.711 phone).

Decoding and encoding are aiortc's codecs (PyAV/libopus, with their own resamplers between
48 kHz stereo and 8 kHz mono); packets are put back in order first (webrtc.reorder). The
transcoder is the sender of its output stream, so it owns SSRC, sequence numbers and timestamps.
"""

from __future__ import annotations

import secrets
import struct

from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .codecs import Codec
from .reorder import ReorderBuffer

_FRAME_MS = 20


def _parameters(codec: Codec, kind: str = "audio") -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=f"{kind}/{codec.name}", clockRate=codec.clock_rate,
        channels=codec.channels, payloadType=codec.payload_type,
    )


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
        self._encoder = get_encoder(_parameters(target))
        self._reorder: ReorderBuffer[RtpPacket] = ReorderBuffer()
        self._ssrc = secrets.randbits(32)
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._samples_per_packet = target.clock_rate * _FRAME_MS // 1000
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
                payloads, _ = self._encoder.encode(decoded)
                for payload in payloads:
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
        return [self._packet(self._target_events.payload_type, payload, rtp.marker,
                             self._event_timestamp)]

    def _packet(self, payload_type: int, payload: bytes, marker: bool, timestamp: int) -> bytes:
        header = struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | payload_type, self._sequence,
            timestamp, self._ssrc,
        )
        self._sequence = (self._sequence + 1) & 0xFFFF
        return header + payload
