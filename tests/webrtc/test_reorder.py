"""Audio packets back in order before transcoding; a lost packet costs a short wait, once."""

from __future__ import annotations

import fractions
import struct

import av
import numpy as np

from tests.support.audio import dominant_frequency, sine_pcm
from webrtc.codecs import OPUS, PCMU
from webrtc.reorder import ReorderBuffer
from webrtc.transcoding import AudioTranscoder


def test_in_order_packets_pass_at_once() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    assert [buffer.push(sequence, sequence) for sequence in range(5)] == [[0], [1], [2], [3], [4]]


def test_swapped_packets_come_out_in_order() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    assert buffer.push(10, 10) == [10]
    assert buffer.push(12, 12) == []
    assert buffer.push(11, 11) == [11, 12]


def test_a_lost_packet_is_given_up_after_max_wait_and_the_rest_released() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(max_wait=3)
    buffer.push(0, 0)
    assert [buffer.push(sequence, sequence) for sequence in (2, 3, 4)] == [[], [], []]
    assert buffer.push(5, 5) == [2, 3, 4, 5]
    assert buffer.push(6, 6) == [6]
    assert buffer.push(1, 1) == []  # too late: already skipped


def test_duplicates_and_stragglers_are_dropped() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    assert buffer.push(7, 7) == [7]
    assert buffer.push(7, 7) == []
    assert buffer.push(3, 3) == []


def test_sequence_numbers_wrap() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    assert buffer.push(65534, 1) == [1]
    assert buffer.push(0, 3) == []
    assert buffer.push(65535, 2) == [2, 3]


def test_a_restarted_sender_is_followed_not_waited_for() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(resync_after=100)
    buffer.push(100, 100)
    assert buffer.push(20000, 20000) == [20000]
    assert buffer.push(20001, 20001) == [20001]


def _opus_tone(frequency: float, frames: int) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.time_base = fractions.Fraction(1, 48000)
    mono = np.frombuffer(sine_pcm(frequency, frames * 0.02, 48000), dtype="<i2")
    packets: list[bytes] = []
    for index in range(frames):
        chunk = mono[index * 960:(index + 1) * 960]
        frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = 48000
        frame.pts = index * 960
        packets.extend(bytes(packet) for packet in encoder.encode(frame))
    return packets


def test_transcoder_hold_returns_to_normal_after_a_lost_packet() -> None:
    """One lost Opus packet must not delay the rest of the call (aiortc's JitterBuffer held
    8 frames, 160 ms, from the first loss on); and what comes out is still the tone."""
    opus = _opus_tone(1000.0, 200)
    transcoder = AudioTranscoder(OPUS, PCMU)
    held_after: dict[int, int] = {}
    sent = emitted = 0
    out: list[bytes] = []
    for sequence, payload in enumerate(opus):
        if sequence == 50:
            continue
        produced = transcoder(struct.pack("!BBHII", 0x80, OPUS.payload_type, sequence,
                                          sequence * 960, 5) + payload)
        sent += 1
        emitted += len(produced)
        out.extend(produced)
        held_after[sequence] = sent - emitted
    steady = held_after[49]
    assert steady <= 2
    assert held_after[60] == steady
    assert held_after[len(opus) - 1] == steady
    pcm = av.CodecContext.create("pcm_mulaw", "r")
    pcm.sample_rate = 8000
    pcm.layout = "mono"
    samples = np.concatenate([
        frame.to_ndarray().reshape(-1)
        for packet in out[100:150] for frame in pcm.decode(av.Packet(packet[12:]))
    ])
    assert abs(dominant_frequency(samples, 8000) - 1000.0) < 15
