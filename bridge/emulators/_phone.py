"""The caller's phone as Twilio plays audio to it: a pure model of Twilio's playback buffer.

Theory of operation
-------------------
Twilio buffers the ``media`` the bridge sends and plays it in order at 8 kHz; a ``mark`` is queued behind that
audio and comes back when everything queued before it has been played (at once when nothing is queued); a
``clear`` drops the buffered audio and sends back every pending mark at once.

The phone clock advances in spans of ``n`` samples (20 ms in the caller). :meth:`PhonePlayback.tick` is called
at the *start* of a span: it takes the next ``n`` samples off the queue for the speaker (silence where the
queue runs dry) and returns the marks that became due at that instant, i.e. whose audio finished in the span
before. A mark whose audio ends inside the span that is playing now is "in flight": it is returned by the next
tick, when its audio has really finished, not 20 ms early. Invariant: at the start of a tick the queue never
begins with a mark (marks reached by the speaker are moved to "in flight" right away), so audio enqueued
before tick ``k`` starts playing exactly at span ``k``: sample ``i`` of everything the ticks returned is phone
time ``i / 8000`` s.

``clear`` while a span plays: the span was already handed to the speaker and counts as heard (the model is
exact to one span, 20 ms); its in-flight marks are pending, so they come back with the others. No I/O, no
clock: the caller drives it, tests call it directly.

A handset that buffers before it plays (``start_delay_samples``): audio enqueued when the ticks so far have
handed out ``t`` samples does not play before sample ``t + start_delay_samples``; the speaker plays silence
until then, and the marks behind that audio come back correspondingly late. With the default 0 nothing
changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["SILENCE_ULAW", "PhonePlayback"]

#: μ-law code of a zero sample: what the speaker plays when nothing is queued.
SILENCE_ULAW: Final = 0xFF


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


class PhonePlayback:
    """Twilio's per-call playback buffer and the speaker that drains it, in samples of μ-law 8 kHz.

    Attributes:
        played_audio_samples: samples of queued audio played so far (silence fill not counted).
        cleared_samples: samples of queued audio dropped by :meth:`clear`.
    """

    def __init__(self, *, start_delay_samples: int = 0) -> None:
        if start_delay_samples < 0:
            raise ValueError(f"start_delay_samples must be >= 0, got {start_delay_samples!r}")
        self._start_delay = start_delay_samples
        self._clock = 0  # samples handed to the speaker by the ticks so far
        self._ready_at: deque[int] = deque()  # per queued audio item: the first sample it may play at
        self._queue: deque[bytes | _Mark] = deque()
        self._head_offset = 0  # bytes of the queue's first audio item already played
        self._queued_samples = 0
        self._in_flight: list[str] = []  # marks whose audio ends within the span playing now
        self._span_has_audio = False  # the span playing now carries queued audio
        self.played_audio_samples = 0
        self.cleared_samples = 0

    @property
    def queued_samples(self) -> int:
        """Samples of audio queued and not yet handed to the speaker."""
        return self._queued_samples

    @property
    def idle(self) -> bool:
        """True when nothing is queued, playing or waiting to be confirmed."""
        return not self._queue and not self._in_flight and not self._span_has_audio

    def enqueue_media(self, ulaw: bytes) -> None:
        """Queues audio behind everything already queued. Empty audio is ignored (nothing to play)."""
        if ulaw:
            self._queue.append(bytes(ulaw))
            self._ready_at.append(self._clock + self._start_delay)
            self._queued_samples += len(ulaw)

    def enqueue_mark(self, name: str) -> list[str]:
        """Queues a mark behind the queued audio.

        Returns:
            ``[name]`` when it is due at once (nothing queued nor playing before it), else ``[]``: it comes
            back from a later :meth:`tick` or :meth:`clear`, in order with the other marks.
        """
        if self._queue:
            self._queue.append(_Mark(name))
            return []
        if self._span_has_audio or self._in_flight:
            # Its audio is the span playing now: due when that span ends, after the marks already in flight.
            self._in_flight.append(name)
            return []
        return [name]

    def clear(self) -> list[str]:
        """Drops all queued audio; returns every pending mark (in flight, then queued), in order."""
        released = self._in_flight
        self._in_flight = []
        for item in self._queue:
            if isinstance(item, _Mark):
                released.append(item.name)
        self.cleared_samples += self._queued_samples
        self._queue.clear()
        self._ready_at.clear()
        self._head_offset = 0
        self._queued_samples = 0
        self._span_has_audio = False
        return released

    def tick(self, n_samples: int) -> tuple[bytes, list[str]]:
        """Starts the next span of ``n_samples``: what the speaker plays in it, and the marks due now.

        Returns:
            ``(played, marks_due)``: ``played`` is exactly ``n_samples`` μ-law bytes (queued audio, then
            silence); ``marks_due`` are the marks whose audio finished by the start of this span, in order.
        """
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples!r}")
        due = self._in_flight
        self._in_flight = []
        out = bytearray()
        played = 0
        queue = self._queue
        while True:
            while queue and isinstance(queue[0], _Mark):
                head = queue.popleft()
                assert isinstance(head, _Mark)
                self._in_flight.append(head.name)
            if len(out) >= n_samples or not queue:
                break
            item = queue[0]
            assert isinstance(item, bytes)
            wait = self._ready_at[0] - (self._clock + len(out))
            if wait > 0:  # a buffering handset: silence until this audio may play
                out += bytes([SILENCE_ULAW]) * min(wait, n_samples - len(out))
                continue
            take = min(len(item) - self._head_offset, n_samples - len(out))
            out += item[self._head_offset : self._head_offset + take]
            played += take
            self._head_offset += take
            if self._head_offset == len(item):
                queue.popleft()
                self._ready_at.popleft()
                self._head_offset = 0
        self._clock += n_samples
        self._queued_samples -= played
        self.played_audio_samples += played
        self._span_has_audio = played > 0
        if len(out) < n_samples:
            out += bytes([SILENCE_ULAW]) * (n_samples - len(out))
        return bytes(out), due
