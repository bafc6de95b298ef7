"""The playback ledger: which audio the listener has heard, and what to do on pause, resume and clear.

Theory of operation
-------------------
The ledger sits between a source of audio that speaks in *segments* and a playback buffer that plays what it
is sent, in order, and answers *marks*. It knows neither of them: segment keys are opaque, and what it returns
are abstract actions (send audio, send a mark, send a clear; a segment was played; a segment was interrupted
after so many milliseconds) that the caller turns into its own wire messages. No I/O, no clock.

Segments
    Audio arrives for a segment named by an opaque hashable key: for example a ``(session_id, sequence_id)``
    pair per message, an assistant item id that many deltas add to, or one key per spoken answer that many
    frames add to until the answer is done. A segment is *open* while audio may still be added to it
    (:meth:`PlaybackLedger.append`) and *closed* once none will come (:meth:`PlaybackLedger.close_segment`, or
    ``append(..., close=True)`` for a message that is a whole segment). A closed segment is never reopened:
    audio under its key starts a new segment. :class:`SegmentPlayed` is reported exactly once for a segment,
    when it is closed *and* every byte of it has been confirmed played. A new segment with empty audio
    becomes a mark-only piece, so that it too is reported once everything sent before it has played.

Pieces and marks
    Audio is cut into *pieces* of at most ``piece_bytes`` bytes; each piece is sent as :class:`SendMedia` +
    :class:`SendMark` with a mark name used once only (a resent piece gets a new name). The playback buffer
    returns a mark when everything queued before it has played; but a clear makes it drop its audio and
    return every pending mark *at once*: those echoes mean "cleared", not "played". Each piece remembers the
    *epoch* it was sent in, and the epoch goes up at every :class:`SendClear`. When a mark comes back
    (:meth:`PlaybackLedger.mark_returned`):

    * its piece was sent in an older epoch -> a "cleared" echo: never counted as played, whatever happened;
    * otherwise the piece has played; when the last unconfirmed piece of a closed segment plays, the segment
      is reported (exactly once: a mark's name leaves the name table when it comes back).

    The race: a piece that finished playing just before the buffer got our clear has its mark in flight; it
    arrives after the clear and is treated as cleared. That is the safe side for "played" (never claimed when
    we cannot know); the price is that a resume may replay it. So a resume repeats at most the piece that
    was playing (< ``piece_bytes``, 100 ms by default at 8000 bytes per second) plus the pieces whose marks
    were in flight at the clear (one return trip's worth).

Time and "heard"
    Events that send or confirm audio take ``now`` (seconds, any monotonic origin, never going backwards)
    from the caller. The buffer plays pieces back to back, so the *piece in flight* (the first sent piece with
    audio whose mark has not come back) started playing when the previous piece's mark came back or, if the
    buffer had run dry, when it reached the listener: when it was sent plus the *playout delay*, whichever is
    later. The playout delay is measured: for the latest piece that was sent into a dry buffer, the time from
    sending it to its mark coming back, minus its duration (so a listener that buffers audio before playing
    it is accounted for). Until the first such mark it is 0, and a piece is timed from when it was sent: an
    error of at most one piece. At any instant::

        heard(segment) = its confirmed bytes + min(now - start, duration) of the piece in flight, if its own

    kept from going backwards across a pause (the resent piece plays from its start again). Marks travel back
    after their audio ended, so this errs low by the marks' return trip.

Interruptions
    :meth:`PlaybackLedger.pause` (soft: can be resumed) and :meth:`PlaybackLedger.clear` (hard) return, after
    the :class:`SendClear`, one :class:`Interrupted` per segment not yet played in full, in the order the
    segments were opened, with the milliseconds of it the listener heard (0 if none) and, for a clear, the
    milliseconds dropped for good. :meth:`PlaybackLedger.heard_ms` answers the same at any time for an
    unfinished segment, and keeps answering the final value of a cleared one (for the last
    :data:`CLEARED_KEYS_KEPT` keys). A segment cleared while still open is *dead*: audio added to it later is
    dropped (``late_bytes``) and closing it does nothing, so the rest of an interrupted segment never plays.

States (every transition is in this module)::

    PLAYING --pause()--> PAUSED     send clear; the unconfirmed pieces become the "cut-off" list
    PAUSED --resume()--> PLAYING    resend cut-off pieces in order (new marks), then the held audio
    any --clear()--> PLAYING        send clear; drop cut-off, held and unconfirmed pieces (never "played")
    PLAYING: append() sends at once; PAUSED: append() holds the audio

``pause()`` in PAUSED and ``resume()`` in PLAYING do nothing and are counted. :meth:`PlaybackLedger.tail`
takes audio that belongs to no segment: it is played, marked, held and cleared like the rest (so waiting for
:attr:`PlaybackLedger.idle` covers it), but it is never reported.

Memory is bounded while paused: the cut-off plus held audio never exceeds ``max_buffered_bytes``. When a
pause cuts off more than that, the cut-off list keeps its oldest pieces and the rest is dropped; when held
audio would not fit, it is dropped, and so is all later audio until the pause ends, so that what does get
played is always a prefix, never audio with a hole in it. A segment that lost audio this way is never reported
played, and later audio added to it is dropped too. Dropped audio is counted in ``overflow_bytes``. While
playing, the unconfirmed pieces are kept for a possible resend; their size is bounded by what the caller lets
the buffer hold.

Accounting: every byte given to the ledger (``received_bytes``, not counting ``late_bytes``) is exactly one of
played (confirmed by a mark of its epoch), cleared (dropped by a clear), overflow, or :attr:`unplayed_bytes`
(sent and unconfirmed in this epoch, cut off, or held).

Cost per event is O(1) amortised: a dict maps mark names to pieces, a deque keeps the pieces of the current
epoch in send order (confirmed pieces are popped from its head), each segment counts its unconfirmed pieces,
and insertion-ordered dicts hold the unfinished segments and their keys. ``pause``, ``resume`` and ``clear``
cost O(pieces and segments they cut off, resend or drop).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

__all__ = [
    "Action",
    "Interrupted",
    "LedgerState",
    "LedgerStats",
    "PlaybackLedger",
    "SegmentPlayed",
    "SendClear",
    "SendMark",
    "SendMedia",
]

#: 800 bytes = 100 ms at 8000 bytes per second: a resume repeats at most about this much (plus in-flight
#: marks), and a piece timed before any playout delay is known is off by at most this much.
DEFAULT_PIECE_BYTES: Final = 800
#: 120 s at 8000 bytes per second: the most audio kept aside while paused (cut off + held).
DEFAULT_MAX_BUFFERED_BYTES: Final = 8000 * 120
#: μ-law at 8 kHz: one byte per sample.
DEFAULT_BYTES_PER_SECOND: Final = 8000
#: Keys of cleared segments kept for heard_ms() and to drop late audio of a dead segment. A clear retires the
#: segment it interrupted last, so this only has to cover the latest few interruptions.
CLEARED_KEYS_KEPT: Final = 64


class LedgerState(enum.Enum):
    """Whether audio is sent as it arrives (PLAYING) or waits for resume/clear (PAUSED)."""

    PLAYING = "playing"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class SendMedia:
    """Send this audio to the playback buffer (never empty)."""

    payload: bytes

    def __repr__(self) -> str:
        return f"SendMedia(<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True)
class SendMark:
    """Queue a mark with this name behind the audio sent; its return goes to ``mark_returned()``."""

    name: str


@dataclass(frozen=True, slots=True)
class SendClear:
    """Make the playback buffer drop its audio (it then returns every pending mark)."""


@dataclass(frozen=True, slots=True)
class SegmentPlayed:
    """The closed segment ``key`` has been played in full: ``played_ms`` of audio, all confirmed by marks."""

    key: Hashable
    played_ms: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """A pause or clear cut segment ``key`` short after the listener heard ``heard_ms`` of it.

    ``cleared_ms`` is what a clear dropped of it for good (always 0 for a pause, which keeps it to resend).
    """

    key: Hashable
    heard_ms: int
    cleared_ms: int


Action: TypeAlias = SendMedia | SendMark | SendClear | SegmentPlayed | Interrupted


@dataclass(slots=True)
class LedgerStats:
    """Counters of what the ledger did, in bytes of audio (``bytes_per_second`` of them per second)."""

    bytes_per_second: int = DEFAULT_BYTES_PER_SECOND
    received_bytes: int = 0
    pieces_sent: int = 0
    media_bytes_sent: int = 0
    marks_played: int = 0
    marks_cleared: int = 0
    played_bytes: int = 0
    cleared_bytes: int = 0
    segments_played: int = 0
    segments_interrupted: int = 0
    resent_bytes: int = 0
    overflow_bytes: int = 0
    late_bytes: int = 0
    unknown_marks: int = 0
    ignored_continues: int = 0
    ignored_pauses: int = 0
    ignored_closes: int = 0

    @property
    def played_ms(self) -> int:
        """Audio confirmed played by marks, in milliseconds."""
        return self.played_bytes * 1000 // self.bytes_per_second

    @property
    def cleared_ms(self) -> int:
        """Audio dropped by clears without being confirmed played, in milliseconds."""
        return self.cleared_bytes * 1000 // self.bytes_per_second


class _Segment:
    """One segment: its counters, and whether it can still grow and must be reported."""

    __slots__ = (
        "closed",
        "dead",
        "floor_ms",
        "indexed",
        "key",
        "lost",
        "played_bytes",
        "reports",
        "unplayed_bytes",
        "waiting",
    )

    def __init__(self, key: Hashable, *, reports: bool, indexed: bool) -> None:
        self.key = key
        self.reports = reports  # False for tail audio: never reported, never interrupted
        self.indexed = indexed  # reachable by key (False for tail audio and unhashable keys)
        self.closed = False
        self.dead = False  # cleared while open: later audio under its key is dropped
        self.lost = False  # some of its audio was dropped by the memory bound: never reported played
        self.waiting = 0  # pieces sent, cut off or held chunks, not yet confirmed played
        self.played_bytes = 0
        self.unplayed_bytes = 0  # accepted and neither played nor dropped
        self.floor_ms = 0  # heard at the latest pause; the final value once cleared


class _Piece:
    """One media + mark pair as sent (payload may be empty: a mark-only piece)."""

    __slots__ = ("epoch", "name", "payload", "played", "segment", "sent_at")

    def __init__(self, name: str, segment: _Segment, payload: bytes, epoch: int, sent_at: float) -> None:
        self.name = name
        self.segment = segment
        self.payload = payload
        self.epoch = epoch
        self.sent_at = sent_at
        self.played = False


class PlaybackLedger:
    """Turns segment audio and returned marks into what to send, what was played and what was heard.

    Pure: no I/O, no clock (``now`` comes from the caller). Every event returns the actions to perform, in
    order.

    Args:
        piece_bytes: bytes per marked piece; bounds what a resume repeats (800 = 100 ms at 8 kHz μ-law).
        max_buffered_bytes: the most audio kept aside while paused (cut off + held); beyond it the newest
            audio is dropped (see the module docstring).
        bytes_per_second: the audio's byte rate, to turn bytes into milliseconds and time into bytes.
    """

    __slots__ = (
        "_active",
        "_by_name",
        "_bytes_per_second",
        "_cut",
        "_cut_bytes",
        "_delay_s",
        "_epoch",
        "_cleared",
        "_held",
        "_held_bytes",
        "_last_played_at",
        "_live",
        "_live_bytes",
        "_max_buffered_bytes",
        "_overflowing",
        "_pending_bytes",
        "_piece_bytes",
        "_segments",
        "_serial",
        "_state",
        "_stats",
        "on_played",
    )

    def __init__(
        self,
        *,
        piece_bytes: int = DEFAULT_PIECE_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        bytes_per_second: int = DEFAULT_BYTES_PER_SECOND,
    ) -> None:
        if piece_bytes < 1:
            raise ValueError(f"piece_bytes must be at least 1, not {piece_bytes!r}")
        if max_buffered_bytes < 0:
            raise ValueError(f"max_buffered_bytes must not be negative, not {max_buffered_bytes!r}")
        if bytes_per_second < 1:
            raise ValueError(f"bytes_per_second must be at least 1, not {bytes_per_second!r}")
        self._piece_bytes = piece_bytes
        self._max_buffered_bytes = max_buffered_bytes
        self._bytes_per_second = bytes_per_second
        self._state = LedgerState.PLAYING
        self._epoch = 0
        self._serial = 0
        # Every piece whose mark has not come back yet, whatever its epoch.
        self._by_name: dict[str, _Piece] = {}
        self._pending_bytes = 0
        # Pieces of the current epoch in send order; confirmed ones are popped from the head.
        self._live: deque[_Piece] = deque()
        self._live_bytes = 0  # unconfirmed bytes in _live
        # While paused: pieces cut off by the pause (to resend), then audio that arrived since.
        self._cut: deque[tuple[_Segment, bytes]] = deque()
        self._cut_bytes = 0
        self._held: deque[tuple[_Segment, bytes]] = deque()
        self._held_bytes = 0
        self._overflowing = False
        # Unfinished segments in the order they were opened (tail audio excluded), and the newest per key.
        self._active: dict[_Segment, None] = {}
        self._segments: dict[Hashable, _Segment] = {}
        # Segments finished by a clear, by key, oldest first, at most CLEARED_KEYS_KEPT.
        self._cleared: dict[Hashable, _Segment] = {}
        self._last_played_at = -math.inf  # when the latest mark of this epoch came back "played"
        self._delay_s = 0.0  # measured playout delay (see the module docstring)
        self._stats = LedgerStats(bytes_per_second=bytes_per_second)
        #: Called with each piece's audio when its mark confirms it played (in its own epoch), in play
        #: order: the one place that knows exactly what the listener heard (e.g. a call recording).
        self.on_played: Callable[[bytes], None] | None = None

    # ------------------------------------------------------------------ properties and queries

    @property
    def state(self) -> LedgerState:
        """PLAYING or PAUSED."""
        return self._state

    @property
    def pending_bytes(self) -> int:
        """Bytes sent whose mark has not come back: neither confirmed played nor known cleared."""
        return self._pending_bytes

    @property
    def unplayed_bytes(self) -> int:
        """Bytes of the current answer the caller has yet to hear: sent and unconfirmed, or held while
        paused. Unlike :attr:`pending_bytes`, audio already cleared from Twilio does not count."""
        return self._live_bytes + self._cut_bytes + self._held_bytes

    @property
    def held_bytes(self) -> int:
        """Bytes kept aside while paused: pieces cut off by the pause plus audio held since."""
        return self._cut_bytes + self._held_bytes

    @property
    def idle(self) -> bool:
        """True when no mark is outstanding and nothing is cut off or held: all audio is accounted for."""
        return not self._by_name and not self._cut and not self._held

    @property
    def playout_delay_s(self) -> float:
        """The measured playout delay: how long audio sent into a dry buffer waits before it plays."""
        return self._delay_s

    @property
    def stats(self) -> LedgerStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def heard_ms(self, key: Hashable, now: float) -> int | None:
        """Milliseconds of segment ``key`` the listener has heard by ``now`` (see the module docstring).

        Returns:
            For an unfinished segment, its confirmed audio plus the timed part of its piece in flight; for a
            recently cleared one, its final value; ``None`` for a segment already played in full (see
            :class:`SegmentPlayed`), a key not known, or an unhashable one.
        """
        try:
            segment = self._segments.get(key)
            if segment is None:
                segment = self._cleared.get(key)
                return None if segment is None else segment.floor_ms
        except TypeError:  # unhashable: never indexed
            return None
        return self._heard_ms(segment, self._in_flight(now))

    # ------------------------------------------------------------------ events

    def append(self, key: Hashable, audio: bytes, now: float, *, close: bool = False) -> list[Action]:
        """Audio for segment ``key`` arrived: send it now, or hold it while paused.

        ``key`` names the open segment to grow, or opens a new one (a closed segment is never reopened).
        ``close=True`` closes it after this audio. A new segment with empty ``audio`` still becomes a
        mark-only piece, so it is reported once everything sent before it has played. Audio for a segment
        cleared while open is dropped (counted in ``late_bytes``). An unhashable key works for a segment
        closed at once, but such a segment cannot be found again by key.
        """
        data = bytes(audio)
        try:
            segment = self._segments.get(key)
            if segment is None and self._cleared:
                cleared = self._cleared.get(key)
                if cleared is not None and cleared.dead:
                    self._stats.late_bytes += len(data)
                    return []
        except TypeError:  # an unhashable key: a segment of its own
            segment = None
            indexed = False
        else:
            indexed = True
        actions: list[Action] = []
        if segment is None or segment.closed:
            segment = _Segment(key, reports=True, indexed=indexed)
            self._active[segment] = None
            if indexed:
                self._segments[key] = segment
            self._accept(segment, data, now, actions)
        elif data:
            self._accept(segment, data, now, actions)
        if close:
            segment.closed = True
            if not segment.waiting:
                self._settle(segment, actions)
        return actions

    def close_segment(self, key: Hashable) -> list[Action]:
        """No more audio will come for segment ``key``: it is reported once its audio has all played.

        Returns :class:`SegmentPlayed` at once if it has. Closing a key that names no open segment (unknown,
        already closed, reported or cleared) does nothing, counted in ``ignored_closes``: to have an empty
        segment reported, ``append(key, b"", now, close=True)``.
        """
        try:
            segment = self._segments.get(key)
        except TypeError:
            segment = None
        if segment is None or segment.closed:
            self._stats.ignored_closes += 1
            return []
        segment.closed = True
        actions: list[Action] = []
        if not segment.waiting:
            self._settle(segment, actions)
        return actions

    def tail(self, audio: bytes, now: float) -> list[Action]:
        """Audio that belongs to no segment (e.g. a resampler's last samples, flushed at the end).

        It is played, marked, held and cleared like any other audio (so waiting for :attr:`idle` covers it),
        but it is never reported.
        """
        if not audio:
            return []
        segment = _Segment(None, reports=False, indexed=False)
        segment.closed = True
        actions: list[Action] = []
        self._accept(segment, bytes(audio), now, actions)
        return actions

    def mark_returned(self, name: str, now: float) -> list[Action]:
        """A mark came back: its piece has played or (if sent before our latest clear) was cleared."""
        piece = self._by_name.pop(name, None)
        if piece is None:
            self._stats.unknown_marks += 1
            return []
        size = len(piece.payload)
        self._pending_bytes -= size
        if piece.epoch != self._epoch:
            # Sent before our latest clear: an echo of the clear, or a race we resolve on the safe side.
            self._stats.marks_cleared += 1
            return []
        stats = self._stats
        stats.marks_played += 1
        stats.played_bytes += size
        piece.played = True
        self._live_bytes -= size
        if size and self.on_played is not None:
            self.on_played(piece.payload)
        if size and self._last_played_at <= piece.sent_at:
            # It was sent into a dry buffer: what it waited beyond its own duration is the playout delay.
            self._delay_s = max(0.0, now - piece.sent_at - size / self._bytes_per_second)
        self._last_played_at = now
        live = self._live
        while live and live[0].played:
            live.popleft()
        segment = piece.segment
        segment.played_bytes += size
        segment.unplayed_bytes -= size
        segment.waiting -= 1
        if segment.waiting or not segment.closed:
            return []
        actions: list[Action] = []
        self._settle(segment, actions)
        return actions

    def pause(self, now: float) -> list[Action]:
        """A soft interruption: clear the buffer at once, keep the unconfirmed pieces, hold new audio.

        Returns :class:`SendClear`, then :class:`Interrupted` (``cleared_ms`` 0) per unfinished segment.
        """
        if self._state is LedgerState.PAUSED:
            self._stats.ignored_pauses += 1
            return []
        actions: list[Action] = [SendClear()]
        in_flight = self._in_flight(now)
        for segment in self._active:
            heard = self._heard_ms(segment, in_flight)
            segment.floor_ms = heard
            actions.append(Interrupted(segment.key, heard, 0))
        self._stats.segments_interrupted += len(self._active)
        self._new_epoch()
        budget = self._max_buffered_bytes
        cut = self._cut  # empty in PLAYING
        for piece in self._live:
            if piece.played:
                continue
            size = len(piece.payload)
            if self._overflowing or self._cut_bytes + size > budget:
                self._overflowing = True
                self._stats.overflow_bytes += size
                segment = piece.segment
                segment.lost = True
                segment.waiting -= 1
                segment.unplayed_bytes -= size
                continue
            cut.append((piece.segment, piece.payload))
            self._cut_bytes += size
        self._live.clear()
        self._live_bytes = 0
        self._state = LedgerState.PAUSED
        return actions

    def resume(self, now: float) -> list[Action]:
        """End a pause: resend what it cut off, in order (new marks), then the audio held since.

        Without a pause in force it does nothing (counted in ``ignored_continues``).
        """
        if self._state is LedgerState.PLAYING:
            self._stats.ignored_continues += 1
            return []
        self._state = LedgerState.PLAYING
        self._overflowing = False
        actions: list[Action] = []
        for segment, payload in self._cut:
            self._send_piece(segment, payload, now, actions)
        self._stats.resent_bytes += self._cut_bytes
        self._cut.clear()
        self._cut_bytes = 0
        for segment, data in self._held:
            segment.waiting -= 1  # the held chunk becomes its pieces
            self._send_audio(segment, data, now, actions)
        self._held.clear()
        self._held_bytes = 0
        for segment in [s for s in self._active if s.closed and not s.waiting]:
            self._settle(segment, actions)  # segments whose only unplayed audio the pause dropped
        return actions

    def clear(self, now: float) -> list[Action]:
        """A hard interruption: clear the buffer and drop every byte not yet played.

        Returns :class:`SendClear`, then :class:`Interrupted` per unfinished segment, which is finished: it is
        never reported played, and if it was open, later audio for it is dropped.
        """
        actions: list[Action] = [SendClear()]
        in_flight = self._in_flight(now)
        bps = self._bytes_per_second
        for segment in self._active:
            heard = self._heard_ms(segment, in_flight)
            actions.append(Interrupted(segment.key, heard, segment.unplayed_bytes * 1000 // bps))
            segment.floor_ms = heard
            segment.dead = not segment.closed
            self._retire(segment)
        self._stats.segments_interrupted += len(self._active)
        self._active.clear()
        self._segments.clear()
        self._stats.cleared_bytes += self._live_bytes + self._cut_bytes + self._held_bytes
        self._new_epoch()
        self._live.clear()
        self._live_bytes = 0
        self._cut.clear()
        self._cut_bytes = 0
        self._held.clear()
        self._held_bytes = 0
        self._overflowing = False
        self._state = LedgerState.PLAYING
        return actions

    # ------------------------------------------------------------------ helpers

    def _accept(self, segment: _Segment, data: bytes, now: float, actions: list[Action]) -> None:
        """Take new audio for ``segment``: send it, hold it, or drop it to keep the memory bound."""
        size = len(data)
        self._stats.received_bytes += size
        if self._state is LedgerState.PAUSED and not segment.lost:
            if self._overflowing or self._cut_bytes + self._held_bytes + size > self._max_buffered_bytes:
                self._overflowing = True
                segment.lost = True
        if segment.lost:
            self._stats.overflow_bytes += size
            return
        segment.unplayed_bytes += size
        if self._state is LedgerState.PLAYING:
            self._send_audio(segment, data, now, actions)
            return
        segment.waiting += 1
        self._held.append((segment, data))
        self._held_bytes += size

    def _send_audio(self, segment: _Segment, data: bytes, now: float, actions: list[Action]) -> None:
        step = self._piece_bytes
        if len(data) <= step:  # also the empty, mark-only piece
            segment.waiting += 1
            self._send_piece(segment, data, now, actions)
            return
        segment.waiting += -(-len(data) // step)
        for start in range(0, len(data), step):
            self._send_piece(segment, data[start : start + step], now, actions)

    def _send_piece(self, segment: _Segment, payload: bytes, now: float, actions: list[Action]) -> None:
        self._serial += 1
        name = f"m{self._serial}"
        piece = _Piece(name, segment, payload, self._epoch, now)
        self._by_name[name] = piece
        self._live.append(piece)
        size = len(payload)
        self._live_bytes += size
        self._pending_bytes += size
        self._stats.pieces_sent += 1
        if size:
            self._stats.media_bytes_sent += size
            actions.append(SendMedia(payload))
        actions.append(SendMark(name))

    def _settle(self, segment: _Segment, actions: list[Action]) -> None:
        """A closed segment has nothing unconfirmed left: report it (unless lost) and forget it."""
        if not segment.reports:
            return
        del self._active[segment]
        played_ms = segment.played_bytes * 1000 // self._bytes_per_second
        if not segment.lost:
            self._stats.segments_played += 1
            actions.append(SegmentPlayed(segment.key, played_ms))
        if segment.indexed and self._segments.get(segment.key) is segment:
            del self._segments[segment.key]

    def _retire(self, segment: _Segment) -> None:
        """Remember a segment finished by a clear, by key, within CLEARED_KEYS_KEPT."""
        if not segment.indexed:
            return
        cleared = self._cleared
        cleared.pop(segment.key, None)
        cleared[segment.key] = segment
        if len(cleared) > CLEARED_KEYS_KEPT:
            del cleared[next(iter(cleared))]

    def _new_epoch(self) -> None:
        self._epoch += 1
        self._last_played_at = -math.inf

    def _in_flight(self, now: float) -> tuple[_Segment, int] | None:
        """The piece playing at ``now`` (the first unconfirmed one with audio) and its bytes played so far."""
        for piece in self._live:
            if piece.played or not piece.payload:
                continue
            start = max(piece.sent_at + self._delay_s, self._last_played_at)
            size = len(piece.payload)
            played = min(size, max(0, round((now - start) * self._bytes_per_second)))
            return piece.segment, played
        return None

    def _heard_ms(self, segment: _Segment, in_flight: tuple[_Segment, int] | None) -> int:
        heard = segment.played_bytes
        if in_flight is not None and in_flight[0] is segment:
            heard += in_flight[1]
        return max(segment.floor_ms, heard * 1000 // self._bytes_per_second)
