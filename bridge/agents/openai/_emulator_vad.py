"""The OpenAI emulator's server VAD: an energy detector on input-audio time, without I/O.

Theory of operation
-------------------
:class:`EnergyVad` takes PCM16LE in any chunking and cuts it in 20 ms frames; a frame is voiced when its RMS
level is above ``threshold_dbfs``. Two states::

    SILENT --start_ms of voiced frames in a row--> SPEAKING --silence_ms of unvoiced frames--> SILENT

Entering SPEAKING reports :class:`VadStart` with the onset (the first voiced frame of the run) and leaving it
:class:`VadStop` with the end of the silence that closed it: the service's ``audio_end_ms`` "includes the
silence duration". Every time is milliseconds of input audio from the start of the session, never wall-clock,
so the same audio gives the same events at any speed. The real service uses a model, not an energy gate;
what the bridge depends on (when speech starts and stops, in input-audio time) is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np

__all__ = ["FRAME_MS", "EnergyVad", "VadEvent", "VadStart", "VadStop"]

FRAME_MS: Final = 20  # analysis step: one Twilio frame


@dataclass(frozen=True, slots=True)
class VadStart:
    """Speech started; ``onset_ms``: the first voiced frame of the run that started it."""

    onset_ms: int


@dataclass(frozen=True, slots=True)
class VadStop:
    """Speech stopped; ``end_ms``: the end of the silence that closed it."""

    end_ms: int


VadEvent: TypeAlias = VadStart | VadStop


class EnergyVad:
    """An energy gate with start and hang-over times, on PCM16LE at one sample rate.

    Args:
        rate: the sample rate of what :meth:`feed` gets (8000 for decoded μ-law, 24000 for ``audio/pcm``).
        threshold_dbfs: a frame whose RMS is above this level (dB re full scale) is voiced.
        start_ms: voiced audio in a row needed to report a start.
    """

    def __init__(self, rate: int, *, threshold_dbfs: float = -40.0, start_ms: int = 60) -> None:
        if rate <= 0 or rate * FRAME_MS % 1000:
            raise ValueError(f"rate must make whole {FRAME_MS} ms frames, got {rate!r}")
        if start_ms <= 0:
            raise ValueError(f"start_ms must be > 0, got {start_ms!r}")
        self.rate = rate
        self.start_ms = start_ms
        self.threshold = 32768.0 * 10 ** (threshold_dbfs / 20)
        self.position_ms = 0  # input audio analysed so far
        self.speaking = False
        self._frame_bytes = rate * FRAME_MS // 1000 * 2
        self._pending = bytearray()
        self._voiced_ms = 0
        self._onset_ms = 0
        self._silence_ms = 0

    def feed(self, pcm: bytes, silence_ms: int) -> list[VadEvent]:
        """Takes audio; returns the starts and stops it completes, in order.

        Args:
            pcm: PCM16LE at :attr:`rate`, any length (a partial frame waits for the next call).
            silence_ms: unvoiced audio that ends speech (the session's ``silence_duration_ms``, which a
                ``session.update`` may change between calls).
        """
        self._pending += pcm
        events: list[VadEvent] = []
        size = self._frame_bytes
        while len(self._pending) >= size:
            frame = np.frombuffer(self._pending, "<i2", size // 2).astype(np.float64)
            del self._pending[:size]
            voiced = math.sqrt(float(np.mean(frame * frame))) > self.threshold
            event = self._frame(voiced, silence_ms)
            if event is not None:
                events.append(event)
        return events

    def _frame(self, voiced: bool, silence_ms: int) -> VadEvent | None:
        start = self.position_ms
        self.position_ms += FRAME_MS
        if not self.speaking:
            if not voiced:
                self._voiced_ms = 0
                return None
            if self._voiced_ms == 0:
                self._onset_ms = start
            self._voiced_ms += FRAME_MS
            if self._voiced_ms < self.start_ms:
                return None
            self.speaking, self._silence_ms = True, 0
            return VadStart(self._onset_ms)
        self._silence_ms = 0 if voiced else self._silence_ms + FRAME_MS
        if self._silence_ms < silence_ms:
            return None
        self.speaking, self._voiced_ms = False, 0
        return VadStop(self.position_ms)
