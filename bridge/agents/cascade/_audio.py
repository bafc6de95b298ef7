"""Audio for the cascade's endpoints, no I/O: the utterance's WAV both ways, and the emulator's speech.

The transcription endpoints take a WAV file; the cascade sends the caller's utterance as mono PCM16 at
8 or 16 kHz (:data:`WAV_RATES`). :func:`encode_wav` writes it with the stdlib ``wave`` module;
:func:`decode_wav` reads one back and refuses anything else (the emulator's check of a request).

:func:`synthesize` is the emulator's text-to-speech: deterministic PCM16 LE mono at 24 kHz, one tone per
word (its pitch from a CRC of the word, so a test can tell words apart), each word ``ms_per_char`` per
character long plus a short gap, so the audio's length is proportional to the text.
"""

from __future__ import annotations

import io
import math
import wave
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = ["SPEECH_RATE", "WAV_RATES", "WavAudio", "decode_wav", "encode_wav", "speech_ms", "synthesize"]

WAV_RATES: Final = (8000, 16000)
#: OpenAI's ``response_format=pcm``: 24 kHz, 16-bit signed little-endian, mono.
SPEECH_RATE: Final = 24000
DEFAULT_MS_PER_CHAR: Final = 60
WORD_GAP_MS: Final = 40
_AMPLITUDE: Final = 8000


@dataclass(frozen=True, slots=True)
class WavAudio:
    """A decoded WAV: its sample rate and PCM16 LE mono samples."""

    rate: int
    pcm: bytes

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / 2 / self.rate * 1000


def encode_wav(pcm: bytes, rate: int) -> bytes:
    """PCM16 LE mono at 8 or 16 kHz as a WAV file."""
    if rate not in WAV_RATES:
        raise ValueError(f"rate must be one of {WAV_RATES}, got {rate!r}")
    if len(pcm) % 2:
        raise ValueError(f"PCM16 has an even number of bytes, got {len(pcm)}")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return out.getvalue()


def decode_wav(data: bytes) -> WavAudio:
    """Reads a WAV of mono PCM16 at 8 or 16 kHz.

    Raises:
        ValueError: anything else (not a WAV, not PCM, stereo, another width or rate, truncated).
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width, rate, frames = (
                reader.getnchannels(),
                reader.getsampwidth(),
                reader.getframerate(),
                reader.getnframes(),
            )
            pcm = reader.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV file: {exc}") from None
    if channels != 1 or width != 2 or rate not in WAV_RATES:
        raise ValueError(f"need mono 16-bit PCM at 8 or 16 kHz, got {channels} ch {width * 8} bit {rate} Hz")
    if len(pcm) != frames * 2:
        raise ValueError(f"truncated WAV: header says {frames} frames, {len(pcm) // 2} present")
    return WavAudio(rate, pcm)


def speech_ms(text: str, ms_per_char: int = DEFAULT_MS_PER_CHAR) -> int:
    """How long :func:`synthesize` speaks ``text``, in ms."""
    return sum(len(word) * ms_per_char + WORD_GAP_MS for word in text.split())


def synthesize(text: str, ms_per_char: int = DEFAULT_MS_PER_CHAR) -> bytes:
    """Deterministic speech for ``text``: PCM16 LE mono at 24 kHz, :func:`speech_ms` long."""
    pieces: list[np.ndarray] = []
    gap = np.zeros(SPEECH_RATE * WORD_GAP_MS // 1000, dtype=np.int16)
    for word in text.split():
        samples = SPEECH_RATE * len(word) * ms_per_char // 1000
        pitch = 200 + zlib.crc32(word.lower().encode()) % 600
        t = np.arange(samples) / SPEECH_RATE
        # 5 ms ramps at both ends: no clicks between words.
        ramp = np.minimum(1.0, np.minimum(np.arange(samples), samples - np.arange(samples)) / 120)
        tone = (_AMPLITUDE * ramp * np.sin(2 * math.pi * pitch * t)).astype(np.int16)
        pieces += [tone, gap]
    if not pieces:
        return b""
    return np.concatenate(pieces).astype("<i2").tobytes()
