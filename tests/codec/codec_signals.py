"""Test signals and spectrum measurement for the codec tests.

Tones are at whole hertz and spectra are taken over exactly one second of output, so every tone and
every alias of it sits in the centre of an FFT bin (coherent sampling): a periodic Hann window then
reads each line's amplitude exactly, with no leakage to hide or invent components.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Input amplitude of the test tones (-0.8 dBFS): loud, so that -80 dB is well above the int16 floor.
LOUD = 30000.0
#: Amplitude for passband tones (room for the filter's ripple without clipping).
MEDIUM = 16000.0


def tone(freq_hz: float, rate: int, seconds: float, amplitude: float, phase: float = 0.3) -> bytes:
    """A sine tone as PCM16LE bytes."""
    n = np.arange(round(seconds * rate))
    samples = np.rint(amplitude * np.sin(2.0 * np.pi * freq_hz * n / rate + phase))
    return samples.astype("<i2").tobytes()


def amplitudes(pcm: bytes, rate: int, start_s: float = 0.25) -> npt.NDArray[np.float64]:
    """Amplitude of each whole-hertz line in one second of PCM16LE, starting at start_s.

    Returns:
        Array a where a[f] is the amplitude (in int16 units) of the component at f Hz.
    """
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    first = round(start_s * rate)
    segment = samples[first : first + rate]
    assert segment.size == rate, "need one whole second of output after start_s"
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(rate) / rate)  # periodic Hann
    spectrum: npt.NDArray[np.float64] = 2.0 * np.abs(np.fft.rfft(segment * window)) / window.sum()
    return spectrum


def db(ratio: float) -> float:
    """Amplitude ratio in decibels (-inf for zero)."""
    return float(20.0 * np.log10(ratio)) if ratio > 0 else float("-inf")


def alias_hz(freq_hz: int, rate: int) -> int:
    """Where a tone of freq_hz lands after sampling at rate."""
    folded = freq_hz % rate
    return min(folded, rate - folded)


def run(stream: object, pcm: bytes) -> bytes:
    """All of a stream's output for pcm: process() then flush()."""
    return stream.process(pcm) + stream.flush()  # type: ignore[attr-defined,no-any-return]
