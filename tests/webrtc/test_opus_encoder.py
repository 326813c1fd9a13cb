"""The transcoder's own encoders: G.711 to mono Opus for the browser, Opus to G.711 for the phone.

Real PyAV codecs on both ends: G.711 made by libavcodec, Opus decoded by libopus, and what
comes out is checked by ear (FFT) and by its RTP/Opus framing.
"""

from __future__ import annotations

import struct
from itertools import pairwise

import av
import numpy as np
import pytest

from tests.support.audio import dominant_frequency, sine_pcm
from webrtc.codecs import OPUS, PCMA, PCMU, Codec
from webrtc.opus import OpusVoiceEncoder
from webrtc.transcoding import AudioTranscoder

TONE = 440.0
SECONDS = 1.0


def _g711_payloads(codec: Codec, frequency: float, packet_ms: int) -> list[bytes]:
    encoder = av.CodecContext.create("pcm_mulaw" if codec is PCMU else "pcm_alaw", "w")
    encoder.sample_rate = 8000
    encoder.layout = "mono"
    encoder.format = "s16"
    pcm = np.frombuffer(sine_pcm(frequency, SECONDS), dtype="<i2")
    samples = 8 * packet_ms
    payloads = []
    for start in range(0, pcm.size - samples + 1, samples):
        frame = av.AudioFrame.from_ndarray(pcm[start:start + samples].reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = 8000
        payloads.append(b"".join(bytes(packet) for packet in encoder.encode(frame)))
    return payloads


def _rtp(codec: Codec, sequence: int, timestamp: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, codec.payload_type, sequence, timestamp, 1234) + payload


def _transcode(source: Codec, target: Codec, payloads: list[bytes],
               samples_per_packet: int) -> list[list[bytes]]:
    """What the transcoder emits for each input packet, in order."""
    transcoder = AudioTranscoder(source, target)
    return [transcoder(_rtp(source, n, n * samples_per_packet, payload))
            for n, payload in enumerate(payloads)]


def _header(packet: bytes) -> tuple[int, int, int]:
    _, marker_and_type, sequence, timestamp = struct.unpack_from("!BBHI", packet)
    return marker_and_type & 0x7F, sequence, timestamp


def _steps(values: list[int], bits: int) -> set[int]:
    """The differences between neighbours, modulo the field's width (RTP fields wrap)."""
    return {(later - earlier) % (1 << bits) for earlier, later in pairwise(values)}


def _opus_frame_ms(payload: bytes) -> tuple[float, int, bool]:
    """RFC 6716 section 3.1 TOC byte: frame duration, frame count code, stereo flag."""
    toc = payload[0]
    config = toc >> 3
    if config < 12:
        durations: tuple[float, ...] = (10.0, 20.0, 40.0, 60.0)  # SILK-only
    elif config < 16:
        durations = (10.0, 20.0)  # hybrid
    else:
        durations = (2.5, 5.0, 10.0, 20.0)  # CELT-only
    return durations[config % len(durations)], toc & 0x3, bool(toc & 0x4)


def _heard_in_opus(payloads: list[bytes]) -> float:
    """What a browser hears: libopus decodes at 48 kHz stereo as WebRTC does."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48000
    decoder.layout = "stereo"
    decoder.format = "s16"
    left = [frame.to_ndarray()[0, ::2] for payload in payloads
            for frame in decoder.decode(av.Packet(payload))]
    return dominant_frequency(np.concatenate(left).astype(np.float64), 48000)


@pytest.mark.parametrize("source", [PCMU, PCMA], ids=["pcmu", "pcma"])
def test_g711_tone_reaches_the_browser_as_20ms_mono_opus(source: Codec) -> None:
    emitted = _transcode(source, OPUS, _g711_payloads(source, TONE, 20), 160)

    assert all(len(packets) == 1 for packets in emitted), "one Opus packet per 20 ms packet"
    packets = [packets[0] for packets in emitted]
    headers = [_header(packet) for packet in packets]
    assert {payload_type for payload_type, _, _ in headers} == {OPUS.payload_type}
    assert _steps([sequence for _, sequence, _ in headers], 16) == {1}
    # RFC 7587: the Opus RTP clock is 48 kHz whatever rate was encoded.
    assert _steps([timestamp for _, _, timestamp in headers], 32) == {960}
    payloads = [packet[12:] for packet in packets]
    for payload in payloads:
        duration, frame_count_code, stereo = _opus_frame_ms(payload)
        assert (duration, frame_count_code, stereo) == (20.0, 0, False)
    assert _heard_in_opus(payloads) == pytest.approx(TONE, abs=5)


@pytest.mark.parametrize("packet_ms", [10, 30])
def test_other_packet_times_are_regrouped_into_20ms_opus_frames(packet_ms: int) -> None:
    emitted = _transcode(PCMU, OPUS, _g711_payloads(PCMU, TONE, packet_ms), 8 * packet_ms)

    packets = [packet for packets in emitted for packet in packets]
    assert len(packets) == len(emitted) * packet_ms // 20
    timestamps = [_header(packet)[2] for packet in packets]
    assert _steps(timestamps, 32) == {960}
    assert all(_opus_frame_ms(packet[12:])[:2] == (20.0, 0) for packet in packets)
    assert _heard_in_opus([packet[12:] for packet in packets]) == pytest.approx(TONE, abs=5)


def test_encoder_refuses_a_rate_libopus_cannot_take() -> None:
    with pytest.raises(ValueError, match="11025 Hz"):
        OpusVoiceEncoder(input_rate=11025)


def test_encoder_refuses_audio_not_at_its_rate() -> None:
    encoder = OpusVoiceEncoder(input_rate=8000)
    frame = av.AudioFrame(format="s16", layout="mono", samples=960)
    frame.sample_rate = 48000
    with pytest.raises(ValueError, match="48000 Hz"):
        encoder.encode(frame)


@pytest.mark.parametrize("target", [PCMU, PCMA], ids=["pcmu", "pcma"])
def test_browser_tone_reaches_the_phone_without_holding_a_frame(target: Codec) -> None:
    """Opus in, G.711 out: every 20 ms packet gives one 20 ms G.711 packet at once."""
    opus_payloads = [packet[12:] for packets in
                     _transcode(PCMU, OPUS, _g711_payloads(PCMU, 1000.0, 20), 160)
                     for packet in packets]

    emitted = _transcode(OPUS, target, opus_payloads, 960)

    assert all(len(packets) == 1 for packets in emitted)
    packets = [packets[0] for packets in emitted]
    assert all(len(packet) == 12 + 160 for packet in packets)
    timestamps = [_header(packet)[2] for packet in packets]
    assert _steps(timestamps, 32) == {160}
    assert {_header(packet)[0] for packet in packets} == {target.payload_type}
    decoder = av.CodecContext.create("pcm_mulaw" if target is PCMU else "pcm_alaw", "r")
    decoder.sample_rate = 8000
    decoder.layout = "mono"
    decoder.format = "s16"
    heard = np.concatenate([frame.to_ndarray()[0] for packet in packets
                            for frame in decoder.decode(av.Packet(packet[12:]))])
    assert dominant_frequency(heard.astype(np.float64), 8000) == pytest.approx(1000.0, abs=5)
