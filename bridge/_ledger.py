"""The playback ledger: which agent audio Twilio has played, and what to do on pause/continue/clear.

Theory of operation
-------------------
Speakr sends answers as messages, each named by ``(session_id, sequence_id)``. Speakr must hear ``status`` for
a message only once every byte of it has actually been played to the caller. Twilio tells us what it played
with marks: a mark we send after some audio comes back when that audio has played. But ``clear`` makes Twilio
drop its buffer and send back every pending mark *at once*: those echoes mean "cleared", not "played".

So each message is cut into *pieces* of at most ``piece_bytes`` μ-law bytes, and each piece is sent as
``media`` + ``mark`` with a mark name used once only (a resent piece gets a new name). Each piece remembers
the *epoch* it was sent in; the epoch goes up every time we send Twilio a ``clear``. When a mark comes back:

* its piece was sent in an older epoch -> it is a "cleared" echo: no status, whatever Twilio did with it;
* otherwise the piece has played; when the last unplayed piece of a message plays, that message's ``status``
  is emitted (exactly once, because each piece's mark is taken out of the name table when it comes back).

The race: a piece that finished playing just before Twilio got our ``clear`` has its mark in flight; it
arrives after the clear and is treated as cleared. That is the safe side (we never claim audio was played when
we cannot know it was); the price is that ``continue`` may replay it. So a ``continue`` repeats at most the
piece Twilio was in the middle of (< ``piece_bytes``, 100 ms by default) plus the pieces whose marks were in
flight when Twilio got the clear (one uplink latency's worth).

States (every transition is in this module)::

    PLAYING --pause()--> PAUSED     send clear; the unconfirmed pieces become the "cut-off" list
    PAUSED --resume()--> PLAYING    resend cut-off pieces in order (new marks), then the held messages
    any --clear()--> PLAYING        send clear; drop cut-off, held and unconfirmed pieces (no status, ever)
    PLAYING: agent_media() sends at once; PAUSED: agent_media() holds the message

``pause()`` in PAUSED and ``resume()`` in PLAYING do nothing and are counted.

Memory is bounded while paused: the cut-off plus held audio never exceeds ``max_buffered_bytes``. When a pause
cuts off more than that, the cut-off list keeps its oldest pieces and the rest is dropped; when a held message
would not fit, it is dropped, and so is every later message until the pause ends, so that what does get played
is always a prefix of the answer, never an answer with a hole in it. Dropped audio is counted in
``overflow_bytes`` and its messages never get a status. While playing, the unconfirmed pieces are kept for a
possible resend; their size is bounded by what Twilio accepts to buffer (10 minutes).

Cost per event is O(1) amortised: a dict maps mark names to pieces, a deque keeps the pieces of the current
epoch in send order (confirmed pieces are popped from its head), and each message counts its unplayed pieces.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias

__all__ = [
    "Action",
    "LedgerState",
    "LedgerStats",
    "PlaybackLedger",
    "SendClear",
    "SendMark",
    "SendMedia",
    "SendStatus",
]

#: 800 μ-law bytes = 100 ms at 8 kHz: a ``continue`` repeats at most about this much (plus in-flight marks).
DEFAULT_PIECE_BYTES: Final = 800
#: 120 s of μ-law at 8 kHz: the most audio kept aside while paused (cut off + held).
DEFAULT_MAX_BUFFERED_BYTES: Final = 8000 * 120


class LedgerState(enum.Enum):
    """Whether agent audio goes to Twilio as it arrives (PLAYING) or waits for continue/clear (PAUSED)."""

    PLAYING = "playing"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class SendMedia:
    """Send this μ-law 8 kHz audio to Twilio as one ``media`` message (never empty)."""

    payload: bytes

    def __repr__(self) -> str:
        return f"SendMedia(<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True)
class SendMark:
    """Send Twilio a ``mark`` with this name; its return goes to :meth:`PlaybackLedger.twilio_mark`."""

    name: str


@dataclass(frozen=True, slots=True)
class SendClear:
    """Send Twilio a ``clear``: it drops its buffered audio and echoes every pending mark."""


@dataclass(frozen=True, slots=True)
class SendStatus:
    """Tell Speakr this message has been played in full; the ids are echoed exactly as received."""

    session_id: Any
    sequence_id: Any


Action: TypeAlias = SendMedia | SendMark | SendClear | SendStatus


@dataclass(slots=True)
class LedgerStats:
    """Counters of what the ledger did; bytes are μ-law bytes (8000 per second)."""

    pieces_sent: int = 0
    media_bytes_sent: int = 0
    marks_played: int = 0
    marks_cleared: int = 0
    statuses_sent: int = 0
    resent_bytes: int = 0
    dropped_bytes: int = 0
    overflow_bytes: int = 0
    unknown_marks: int = 0
    ignored_continues: int = 0
    ignored_pauses: int = 0


class _Message:
    """One Speakr media message; ``unplayed`` counts its pieces not yet confirmed played."""

    __slots__ = ("owes_status", "session_id", "sequence_id", "unplayed")

    def __init__(self, session_id: Any, sequence_id: Any, *, owes_status: bool = True) -> None:
        self.session_id = session_id
        self.sequence_id = sequence_id
        self.unplayed = 0
        self.owes_status = owes_status


class _Piece:
    """One ``media`` + ``mark`` pair as sent to Twilio (payload may be empty: a mark-only piece)."""

    __slots__ = ("epoch", "message", "name", "payload", "played")

    def __init__(self, name: str, message: _Message, payload: bytes, epoch: int) -> None:
        self.name = name
        self.message = message
        self.payload = payload
        self.epoch = epoch
        self.played = False


class PlaybackLedger:
    """Turns agent audio and Twilio marks into the messages to send to Twilio and the statuses owed to Speakr.

    Pure: no I/O, no clock. Every method returns the actions to perform, in order.

    Args:
        piece_bytes: μ-law bytes per marked piece; bounds what a ``continue`` repeats (800 = 100 ms).
        max_buffered_bytes: the most audio kept aside while paused (cut off + held); beyond it the newest
            audio is dropped (see the module docstring).
    """

    __slots__ = (
        "_by_name",
        "_cut",
        "_cut_bytes",
        "_epoch",
        "_held",
        "_held_bytes",
        "_live",
        "_live_bytes",
        "_max_buffered_bytes",
        "_overflowing",
        "_pending_bytes",
        "_piece_bytes",
        "_serial",
        "_state",
        "_stats",
    )

    def __init__(
        self,
        *,
        piece_bytes: int = DEFAULT_PIECE_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        if piece_bytes < 1:
            raise ValueError(f"piece_bytes must be at least 1, not {piece_bytes!r}")
        if max_buffered_bytes < 0:
            raise ValueError(f"max_buffered_bytes must not be negative, not {max_buffered_bytes!r}")
        self._piece_bytes = piece_bytes
        self._max_buffered_bytes = max_buffered_bytes
        self._state = LedgerState.PLAYING
        self._epoch = 0
        self._serial = 0
        # Every piece whose mark has not come back yet, whatever its epoch.
        self._by_name: dict[str, _Piece] = {}
        self._pending_bytes = 0
        # Pieces of the current epoch in send order; confirmed ones are popped from the head.
        self._live: deque[_Piece] = deque()
        self._live_bytes = 0  # unconfirmed bytes in _live
        # While paused: pieces cut off by the pause (to resend), then messages that arrived since.
        self._cut: deque[tuple[_Message, bytes]] = deque()
        self._cut_bytes = 0
        self._held: deque[tuple[_Message, bytes]] = deque()
        self._held_bytes = 0
        self._overflowing = False
        self._stats = LedgerStats()

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> LedgerState:
        """PLAYING or PAUSED."""
        return self._state

    @property
    def pending_bytes(self) -> int:
        """Bytes sent to Twilio whose mark has not come back: neither confirmed played nor known cleared."""
        return self._pending_bytes

    @property
    def unplayed_bytes(self) -> int:
        """Bytes of the current answer the caller has yet to hear: sent and unconfirmed, or held while
        paused. Unlike :attr:`pending_bytes`, audio already cleared from Twilio does not count."""
        return self._live_bytes + self._cut_bytes + self._held_bytes

    @property
    def held_bytes(self) -> int:
        """Bytes kept aside while paused: pieces cut off by the pause plus messages held since."""
        return self._cut_bytes + self._held_bytes

    @property
    def idle(self) -> bool:
        """True when no mark is outstanding and nothing is cut off or held: all audio is accounted for."""
        return not self._by_name and not self._cut and not self._held

    @property
    def stats(self) -> LedgerStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    # ------------------------------------------------------------------ events

    def agent_media(self, session_id: Any, sequence_id: Any, ulaw: bytes) -> list[Action]:
        """Speakr sent audio (already μ-law 8 kHz): send it now, or hold it while paused.

        An empty ``ulaw`` (the resampler held all of a tiny message back) still becomes a mark-only piece, so
        the message gets its status once everything sent before it has played.
        """
        return self._arrive(_Message(session_id, sequence_id), bytes(ulaw))

    def tail(self, ulaw: bytes) -> list[Action]:
        """Audio that is no message of its own: the resampler's last samples, flushed at ``end``.

        It is played, marked, held and cleared like any other audio (so waiting for :attr:`idle` covers it),
        but it never yields a status.
        """
        if not ulaw:
            return []
        return self._arrive(_Message(None, None, owes_status=False), bytes(ulaw))

    def _arrive(self, message: _Message, ulaw: bytes) -> list[Action]:
        if self._state is LedgerState.PLAYING:
            actions: list[Action] = []
            self._send_message(message, ulaw, actions)
            return actions
        # PAUSED: hold, within the memory bound.
        if self._overflowing or self._cut_bytes + self._held_bytes + len(ulaw) > self._max_buffered_bytes:
            self._overflowing = True
            self._stats.overflow_bytes += len(ulaw)
            return []
        self._held.append((message, ulaw))
        self._held_bytes += len(ulaw)
        return []

    def twilio_mark(self, name: str) -> list[Action]:
        """Twilio sent a mark back: a piece has played, or (if sent before our latest clear) was cleared."""
        piece = self._by_name.pop(name, None)
        if piece is None:
            self._stats.unknown_marks += 1
            return []
        self._pending_bytes -= len(piece.payload)
        if piece.epoch != self._epoch:
            # Sent before our latest clear: an echo of the clear, or a race we resolve on the safe side.
            self._stats.marks_cleared += 1
            return []
        self._stats.marks_played += 1
        piece.played = True
        self._live_bytes -= len(piece.payload)
        live = self._live
        while live and live[0].played:
            live.popleft()
        message = piece.message
        message.unplayed -= 1
        if message.unplayed or not message.owes_status:
            return []
        self._stats.statuses_sent += 1
        return [SendStatus(message.session_id, message.sequence_id)]

    def pause(self) -> list[Action]:
        """Speakr's ``pause``: clear Twilio at once, keep the unconfirmed pieces, hold new media."""
        if self._state is LedgerState.PAUSED:
            self._stats.ignored_pauses += 1
            return []
        self._epoch += 1
        budget = self._max_buffered_bytes
        cut = self._cut  # empty in PLAYING
        for piece in self._live:
            if piece.played:
                continue
            size = len(piece.payload)
            if self._overflowing or self._cut_bytes + size > budget:
                self._overflowing = True
                self._stats.overflow_bytes += size
                continue
            cut.append((piece.message, piece.payload))
            self._cut_bytes += size
        self._live.clear()
        self._live_bytes = 0
        self._state = LedgerState.PAUSED
        return [SendClear()]

    def resume(self) -> list[Action]:
        """Speakr's ``continue``: resend what the pause cut off, in order, then the held messages.

        Without a pause in force it does nothing (counted in ``ignored_continues``).
        """
        if self._state is LedgerState.PLAYING:
            self._stats.ignored_continues += 1
            return []
        self._state = LedgerState.PLAYING
        self._overflowing = False
        actions: list[Action] = []
        for message, payload in self._cut:
            self._send_piece(message, payload, actions)
        self._stats.resent_bytes += self._cut_bytes
        self._cut.clear()
        self._cut_bytes = 0
        for message, ulaw in self._held:
            self._send_message(message, ulaw, actions)
        self._held.clear()
        self._held_bytes = 0
        return actions

    def clear(self) -> list[Action]:
        """Speakr's ``clear``: a real interruption. Clear Twilio and drop every byte not yet played."""
        self._epoch += 1
        self._stats.dropped_bytes += self._live_bytes + self._cut_bytes + self._held_bytes
        self._live.clear()
        self._live_bytes = 0
        self._cut.clear()
        self._cut_bytes = 0
        self._held.clear()
        self._held_bytes = 0
        self._overflowing = False
        self._state = LedgerState.PLAYING
        return [SendClear()]

    # ------------------------------------------------------------------ helpers

    def _send_message(self, message: _Message, ulaw: bytes, actions: list[Action]) -> None:
        step = self._piece_bytes
        if not ulaw:
            message.unplayed = 1
            self._send_piece(message, b"", actions)
            return
        message.unplayed = -(-len(ulaw) // step)
        if len(ulaw) <= step:
            self._send_piece(message, ulaw, actions)
            return
        for start in range(0, len(ulaw), step):
            self._send_piece(message, ulaw[start : start + step], actions)

    def _send_piece(self, message: _Message, payload: bytes, actions: list[Action]) -> None:
        self._serial += 1
        name = f"m{self._serial}"
        piece = _Piece(name, message, payload, self._epoch)
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
