"""An energy voice-activity detector and turn-taking state machine for the local echo agent; no I/O.

Theory of operation
-------------------
The caller's audio (PCM16LE, 8 kHz, any chunking, odd byte counts included) is cut into 10 ms analysis frames.
Time is *stream time*: the number of samples fed so far, never the wall clock, so tests can feed audio as fast
as they like and get the same decisions at the same stream times.

A frame is *loud* when its RMS level reaches the threshold. The start message's ``threshold`` (0..1) maps
linearly onto a level in dBFS (:func:`threshold_dbfs`): 0 -> -60 dBFS, 1 -> 0 dBFS, so Speakr's default 0.18
is -49.2 dBFS. Digital silence is -inf dBFS and never loud.

Speech *starts* after :data:`ONSET_FRAMES` consecutive loud frames (40 ms), which ignores clicks and pops up
to ~20 ms long; its *onset* is the first of those frames. The utterance then holds ``prefixPadding`` seconds
of audio before the onset (from a short history ring), the speech, and the pauses inside it.

:class:`TurnDetector` has three states:

- ``LISTENING``: no speech. An onset while the agent is silent starts the caller's turn (:class:`SpeechStart`,
  -> ``SPEECH``). An onset while the agent is speaking is a possible interruption (:class:`BargeIn`: the agent
  sends ``pause``; -> ``BARGE_IN``).
- ``BARGE_IN``: the caller spoke over the agent. If the speech goes on for :data:`BARGE_IN_MS` from its onset
  (gaps shorter than :data:`HANGOVER_MS` do not end it) it is a real interruption (:class:`Interruption`: the
  agent sends ``clear``; -> ``SPEECH``, and that speech becomes the next utterance). If it stops first (quiet
  for :data:`HANGOVER_MS`) it was a back-channel ("okay", "mm-hm") (:class:`BackChannel`: the agent sends
  ``continue``; -> ``LISTENING``, the audio is dropped).
- ``SPEECH``: the caller's turn. It ends after ``silenceDuration`` ms without a loud frame
  (:class:`Utterance`, with its PCM: prefix + speech + :data:`UTTERANCE_TAIL_MS`; -> ``LISTENING``).

Everything is bounded: the history ring holds the prefix padding (at most 5 s), an utterance at most
``max_utterance_s`` (longer speech is cut: the rest is dropped and the utterance marked ``truncated``, but the
turn still ends with the caller's silence, so a noisy line never makes the agent talk over the caller).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np

from bridge._twilio import SAMPLE_RATE

__all__ = [
    "BARGE_IN_MS",
    "FRAME_MS",
    "HANGOVER_MS",
    "MAX_UTTERANCE_S",
    "ONSET_FRAMES",
    "SAMPLE_RATE",
    "UTTERANCE_TAIL_MS",
    "BackChannel",
    "BargeIn",
    "Interruption",
    "SpeechStart",
    "TurnDetector",
    "TurnEvent",
    "TurnState",
    "Utterance",
    "VadSettings",
    "frame_levels_dbfs",
    "threshold_dbfs",
]

#: Analysis frame: 10 ms = 80 samples = 160 bytes.
FRAME_MS: Final = 10
_FRAME_SAMPLES: Final = SAMPLE_RATE * FRAME_MS // 1000
_FRAME_BYTES: Final = 2 * _FRAME_SAMPLES
#: Consecutive loud frames that make an onset (40 ms): a click of up to ~20 ms covers at most 3 frames.
ONSET_FRAMES: Final = 4
#: Speech over the agent that lasts this long from its onset is a real interruption (``clear``), not a
#: back-channel (``continue``).
BARGE_IN_MS: Final = 700
#: Quiet this long ends speech over the agent (decides ``continue``); shorter gaps are inside a phrase.
HANGOVER_MS: Final = 250
#: Audio kept after the last loud frame of an utterance, so decays are not clipped.
UTTERANCE_TAIL_MS: Final = 100
#: Longest utterance kept (prefix included); what is longer is cut.
MAX_UTTERANCE_S: Final = 15.0
#: The mapping of ``threshold`` onto dBFS: ``threshold`` 0 -> this level, 1 -> 0 dBFS.
FLOOR_DBFS: Final = -60.0
#: Bounds of the start-message fields, as far as the detector is concerned.
_MAX_PREFIX_S: Final = 5.0
_MIN_SILENCE_MS: Final = 10


def threshold_dbfs(threshold: float) -> float:
    """The frame level (dBFS) at which audio counts as speech, for a start-message ``threshold``.

    Linear in dB: 0 -> -60 dBFS (almost anything above the noise of a quiet line), 1 -> 0 dBFS (only a
    full-scale square wave), 0.18 (Speakr's default) -> -49.2 dBFS.

    Raises:
        ValueError: ``threshold`` is not a finite number in [0, 1].
    """
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return FLOOR_DBFS * (1.0 - float(threshold))


def frame_levels_dbfs(pcm: bytes) -> np.ndarray:
    """RMS level in dBFS (full scale = 32768) of each whole 10 ms frame of PCM16LE 8 kHz; -inf for silence."""
    n = len(pcm) // _FRAME_BYTES
    samples = np.frombuffer(pcm, dtype="<i2", count=n * _FRAME_SAMPLES).astype(np.float64)
    power = np.mean(np.square(samples.reshape(n, _FRAME_SAMPLES)), axis=1) if n else np.empty(0)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(power / (32768.0 * 32768.0))


@dataclass(frozen=True, slots=True)
class VadSettings:
    """The start message's turn-taking fields, as the detector uses them.

    Args:
        threshold: 0..1, see :func:`threshold_dbfs`.
        silence_ms: silence that ends the caller's turn (``silenceDuration``), >= 10 ms.
        prefix_padding_s: audio before the onset included in an utterance (``prefixPadding``), 0..5 s.
        max_utterance_s: longest utterance kept, prefix included.

    Raises:
        ValueError: a value out of range.
    """

    threshold: float = 0.18
    silence_ms: int = 1000
    prefix_padding_s: float = 0.7
    max_utterance_s: float = MAX_UTTERANCE_S

    def __post_init__(self) -> None:
        threshold_dbfs(self.threshold)  # validates
        if not (isinstance(self.silence_ms, int | float) and _MIN_SILENCE_MS <= self.silence_ms <= 60_000):
            raise ValueError(
                f"silence_ms must be between {_MIN_SILENCE_MS} and 60000, got {self.silence_ms!r}"
            )
        prefix = self.prefix_padding_s
        if not (isinstance(prefix, int | float) and 0.0 <= prefix <= _MAX_PREFIX_S):
            raise ValueError(
                f"prefix_padding_s must be between 0 and {_MAX_PREFIX_S}, got {self.prefix_padding_s!r}"
            )
        if not (isinstance(self.max_utterance_s, int | float) and 0.1 <= self.max_utterance_s <= 120.0):
            raise ValueError(f"max_utterance_s must be between 0.1 and 120, got {self.max_utterance_s!r}")


# ----------------------------------------------------------------------------------------------------
# Decisions. ``time_s`` is the stream time at which the decision was made (end of the deciding frame).


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """The caller started a turn while the agent was silent; ``onset_s``: first loud frame."""

    time_s: float
    onset_s: float


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller started speaking while the agent speaks: the agent should ``pause``."""

    time_s: float
    onset_s: float


@dataclass(frozen=True, slots=True)
class BackChannel:
    """The speech over the agent stopped before :data:`BARGE_IN_MS`: the agent should ``continue``."""

    time_s: float
    speech_s: float


@dataclass(frozen=True, slots=True)
class Interruption:
    """The speech over the agent went on past :data:`BARGE_IN_MS`: the agent should ``clear`` and listen."""

    time_s: float
    onset_s: float


@dataclass(frozen=True, slots=True, repr=False)
class Utterance:
    """The caller's turn ended: ``pcm`` (PCM16LE 8 kHz) spans ``start_s`` .. ``end_s`` in stream time.

    ``start_s`` is the onset less the prefix padding (as much of it as was heard), ``end_s`` the end of the
    last loud frame plus :data:`UTTERANCE_TAIL_MS`; ``truncated``: it was cut at the maximum length.
    """

    time_s: float
    start_s: float
    end_s: float
    onset_s: float
    pcm: bytes
    truncated: bool

    def __repr__(self) -> str:
        return (
            f"Utterance(time_s={self.time_s:.3f}, start_s={self.start_s:.3f}, end_s={self.end_s:.3f}, "
            f"onset_s={self.onset_s:.3f}, pcm=<{len(self.pcm)} bytes>, truncated={self.truncated})"
        )


TurnEvent: TypeAlias = SpeechStart | BargeIn | BackChannel | Interruption | Utterance


class TurnState(enum.Enum):
    """Where the detector is; see the module's theory of operation."""

    LISTENING = "listening"
    BARGE_IN = "barge_in"
    SPEECH = "speech"


class TurnDetector:
    """Feeds on the caller's audio and decides turns, barge-ins, back-channels and interruptions.

    Args:
        settings: threshold, silence and prefix padding (from the start message).
    """

    __slots__ = (
        "_dropped_frames",
        "_frame_index",
        "_history",
        "_last_loud",
        "_loud_run",
        "_max_frames",
        "_onset",
        "_pending",
        "_prefix_frames",
        "_settings",
        "_silence_frames",
        "_speech_start",
        "_state",
        "_threshold_db",
        "_truncated",
        "_utterance",
    )

    def __init__(self, settings: VadSettings | None = None) -> None:
        self._settings = settings or VadSettings()
        self._threshold_db = threshold_dbfs(self._settings.threshold)
        self._prefix_frames = round(self._settings.prefix_padding_s * 1000 / FRAME_MS)
        self._silence_frames = max(1, math.ceil(self._settings.silence_ms / FRAME_MS))
        self._max_frames = round(self._settings.max_utterance_s * 1000 / FRAME_MS)
        # The last prefix + onset frames, to reach back before an onset.
        self._history: deque[bytes] = deque(maxlen=self._prefix_frames + ONSET_FRAMES)
        self._pending = bytearray()  # less than one frame
        self._frame_index = 0  # frames analysed so far
        self._state = TurnState.LISTENING
        self._loud_run = 0
        self._onset = 0  # frame index of the current speech's onset
        self._speech_start = 0  # frame index of the first frame in _utterance
        self._last_loud = 0  # frame index of the last loud frame of the current speech
        self._utterance: list[bytes] = []
        self._truncated = False
        self._dropped_frames = 0

    @property
    def settings(self) -> VadSettings:
        """The settings in use."""
        return self._settings

    @property
    def state(self) -> TurnState:
        """The current state."""
        return self._state

    @property
    def time_s(self) -> float:
        """Stream time analysed so far (whole frames), in seconds."""
        return self._frame_index * FRAME_MS / 1000

    @property
    def threshold_db(self) -> float:
        """The speech level in dBFS that ``settings.threshold`` maps to."""
        return self._threshold_db

    @property
    def dropped_frames(self) -> int:
        """10 ms frames of speech dropped because utterances reached their maximum length."""
        return self._dropped_frames

    def feed(self, pcm: bytes, *, agent_speaking: bool = False) -> list[TurnEvent]:
        """Analyses more caller audio.

        Args:
            pcm: PCM16LE 8 kHz mono, any length (a partial frame or odd byte waits for the next call).
            agent_speaking: whether the agent is speaking now (an onset is then a :class:`BargeIn`).

        Returns:
            The decisions, in order of stream time (usually none).
        """
        self._pending += pcm
        whole = len(self._pending) // _FRAME_BYTES * _FRAME_BYTES
        if not whole:
            return []
        block = bytes(self._pending[:whole])
        del self._pending[:whole]
        events: list[TurnEvent] = []
        levels = frame_levels_dbfs(block)
        for i, level in enumerate(levels.tolist()):
            frame = block[i * _FRAME_BYTES : (i + 1) * _FRAME_BYTES]
            event = self._step(frame, level >= self._threshold_db, agent_speaking)
            if event is not None:
                events.append(event)
        return events

    def reset(self) -> None:
        """Forgets any speech in progress (back to ``LISTENING``); stream time goes on."""
        self._state = TurnState.LISTENING
        self._loud_run = 0
        self._utterance = []
        self._truncated = False

    # ------------------------------------------------------------------------------------------------

    def _seconds(self, frame_index: int) -> float:
        return frame_index * FRAME_MS / 1000

    def _append(self, frame: bytes) -> None:
        if len(self._utterance) < self._max_frames:
            self._utterance.append(frame)
        else:
            self._truncated = True
            self._dropped_frames += 1

    def _step(self, frame: bytes, loud: bool, agent_speaking: bool) -> TurnEvent | None:
        k = self._frame_index
        self._frame_index = k + 1
        now = self._seconds(k + 1)
        self._history.append(frame)
        state = self._state
        if state is TurnState.LISTENING:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run < ONSET_FRAMES:
                return None
            self._loud_run = 0
            self._onset = k - ONSET_FRAMES + 1
            self._last_loud = k
            held = list(self._history)  # ends with this frame; prefix + onset frames at most
            self._utterance = held[-self._max_frames :]
            self._truncated = False
            self._speech_start = k + 1 - len(self._utterance)
            onset_s = self._seconds(self._onset)
            if agent_speaking:
                self._state = TurnState.BARGE_IN
                return BargeIn(now, onset_s)
            self._state = TurnState.SPEECH
            return SpeechStart(now, onset_s)
        self._append(frame)
        if state is TurnState.BARGE_IN:
            if loud:
                self._last_loud = k
                if (k + 1 - self._onset) * FRAME_MS >= BARGE_IN_MS:
                    self._state = TurnState.SPEECH
                    return Interruption(now, self._seconds(self._onset))
            elif (k - self._last_loud) * FRAME_MS >= HANGOVER_MS:
                speech_s = self._seconds(self._last_loud + 1 - self._onset)
                self.reset()
                return BackChannel(now, speech_s)
            return None
        # SPEECH
        if loud:
            self._last_loud = k
            return None
        if k - self._last_loud < self._silence_frames:
            return None
        end = min(self._last_loud + 1 + UTTERANCE_TAIL_MS // FRAME_MS, k + 1)
        kept = max(0, min(end - self._speech_start, len(self._utterance)))
        utterance = Utterance(
            time_s=now,
            start_s=self._seconds(self._speech_start),
            end_s=self._seconds(self._speech_start + kept),
            onset_s=self._seconds(self._onset),
            pcm=b"".join(self._utterance[:kept]),
            truncated=self._truncated,
        )
        self.reset()
        return utterance
