"""Opus encoder for telephone audio: G.711 (8 kHz mono) going to a browser.

aiortc's OpusEncoder is built for a microphone: it resamples every frame to 48 kHz stereo and
encodes at 96 kbit/s with libopus' highest complexity, which made it the largest single cost
of a transcoded call (42.6 % of relay CPU, py-spy). Narrowband speech needs none of that: libopus
takes 8 kHz input directly (no resampler at all), mono, at a voice bit rate. The stream is still
opus/48000/2 in the SDP (RFC 7587): a mono Opus stream is valid there, browsers play it, and the
RTP clock stays 48 kHz whatever the input rate. With this encoder a transcoded call costs the
relay about 12.5 ms of CPU per second instead of 16 (bench/media_load.py --transcode, 40 calls).

PyAV adds 10-15 us per frame over bare libopus (its encode path always runs a filter graph for
codecs of fixed frame size); a hand-written ctypes binding would save that, not worth it yet.
"""

from __future__ import annotations

import fractions

import av

# libopus accepts these input rates and nothing else.
OPUS_INPUT_RATES = (8000, 12000, 16000, 24000, 48000)
FRAME_MS = 20
BIT_RATE = 24000
# libopus' default complexity, 10, cost 109 us per 20 ms narrowband SILK frame here, 5 cost 69
# and 1 cost 33. 5 is what WebRTC itself uses on mobile; SILK's lowest settings use a coarser
# pitch search and noise shaping, a loss for speech that a tone check would not notice.
COMPLEXITY = 5


class OpusVoiceEncoder:
    """Mono PCM (s16) at `input_rate` in, one 20 ms Opus frame per 20 ms of input out."""

    def __init__(self, input_rate: int = 8000, bit_rate: int = BIT_RATE,
                 complexity: int = COMPLEXITY) -> None:
        if input_rate not in OPUS_INPUT_RATES:
            raise ValueError(f"libopus cannot take {input_rate} Hz input "
                             f"(it accepts {', '.join(map(str, OPUS_INPUT_RATES))})")
        self.input_rate = input_rate
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = input_rate
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = bit_rate
        self._codec.time_base = fractions.Fraction(1, input_rate)
        # compression_level is how libavcodec passes libopus' complexity (0-10).
        self._codec.options = {"application": "voip", "compression_level": str(complexity)}
        self._codec.open()
        self._frame_samples = input_rate * FRAME_MS // 1000
        # libavcodec wants exactly one Opus frame of samples per call; phones send other
        # packet times (10, 30 ms...), so input is regrouped into 20 ms frames first.
        self._fifo = av.AudioFifo()

    def encode(self, frame: av.AudioFrame) -> list[bytes]:
        """Opus frames for the complete 20 ms frames now available (none while filling up)."""
        if frame.sample_rate != self.input_rate or frame.layout.name != "mono" \
                or frame.format.name != "s16":
            raise ValueError(f"expected s16 mono at {self.input_rate} Hz, got "
                             f"{frame.format.name} {frame.layout.name} at {frame.sample_rate} Hz")
        # The fifo checks pts continuity; packet loss would break it and timing is ours anyway.
        frame.pts = None
        self._fifo.write(frame)
        payloads: list[bytes] = []
        while (chunk := self._fifo.read(self._frame_samples)) is not None:
            payloads.extend(bytes(packet) for packet in self._codec.encode(chunk))
        return payloads
