"""Known tones in, heard frequencies out: the media proof used by every audio test."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def sine_pcm(frequency: float, seconds: float, rate: int = 8000, amplitude: float = 0.5) -> bytes:
    """Signed 16-bit little-endian mono PCM of a pure tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    return samples.tobytes()


def write_tone_wav(path: Path, frequency: float, seconds: float, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(sine_pcm(frequency, seconds, rate))
    return path


def read_wav_pcm(path: Path) -> tuple[np.ndarray, int]:
    """Mono float samples of a 16-bit WAV (first channel if stereo) and its rate."""
    with wave.open(str(path), "rb") as source:
        rate = source.getframerate()
        channels = source.getnchannels()
        if source.getsampwidth() != 2:
            width = source.getsampwidth() * 8
            raise ValueError(f"{path}: expected 16-bit samples, got {width}-bit")
        frames = np.frombuffer(source.readframes(source.getnframes()), dtype="<i2")
    return frames[::channels].astype(np.float64), rate


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak, DC excluded. Silence gives 0.0."""
    if samples.size < rate // 10 or not np.any(samples):
        return 0.0
    window = np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft((samples - samples.mean()) * window))
    freqs = np.fft.rfftfreq(samples.size, 1.0 / rate)
    spectrum[freqs < 50] = 0.0
    return float(freqs[int(np.argmax(spectrum))])


def tone_energy_ratio(
    samples: np.ndarray, rate: int, frequency: float, band: float = 30.0
) -> float:
    """Share of the signal's energy within ±band Hz of frequency: near 1 for a clean tone."""
    spectrum = np.abs(np.fft.rfft(samples - samples.mean())) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1.0 / rate)
    total = float(spectrum[freqs >= 50].sum())
    if total == 0.0:
        return 0.0
    return float(spectrum[np.abs(freqs - frequency) <= band].sum()) / total


def assert_hears(samples: np.ndarray, rate: int, frequency: float, tolerance: float = 15.0) -> None:
    heard = dominant_frequency(samples, rate)
    assert abs(heard - frequency) <= tolerance, (
        f"expected a {frequency} Hz tone, heard {heard:.1f} Hz "
        f"(energy share at {frequency} Hz: {tone_energy_ratio(samples, rate, frequency):.2f})"
    )
