"""The playback ledger: statuses only for audio Twilio played; pause, continue and clear as PROTOCOLS.md says.

Unit tests walk every transition; property tests drive the ledger against a faithful model of Twilio's buffer
(media and marks queue in order, a played mark comes back when the audio before it has played, ``clear`` drops
the audio and echoes every pending mark at once) with marks that may still be in flight when events happen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._ledger import (
    CLEARED_KEYS_KEPT,
    Action,
    Interrupted,
    LedgerState,
    PlaybackLedger,
    SegmentPlayed,
    SendClear,
    SendMark,
    SendMedia,
)
from bridge.emulators import PhonePlayback


def agent_media(
    ledger: PlaybackLedger, session_id: Any, sequence_id: Any, ulaw: bytes, now: float = 0.0
) -> list[Action]:
    """A message that is a whole segment, keyed ``(session_id, sequence_id)`` (as the Speakr path does)."""
    return ledger.append((session_id, sequence_id), ulaw, now, close=True)


def played(session_id: Any, sequence_id: Any, n_bytes: int) -> SegmentPlayed:
    """The report for a message of ``n_bytes`` of 8 kHz μ-law played in full."""
    return SegmentPlayed((session_id, sequence_id), n_bytes // 8)


def _media(actions: list[Action]) -> list[bytes]:
    return [a.payload for a in actions if isinstance(a, SendMedia)]


def _marks(actions: list[Action]) -> list[str]:
    return [a.name for a in actions if isinstance(a, SendMark)]


# ---------------------------------------------------------------------------------------------- unit tests


def test_media_is_cut_into_pieces_each_followed_by_a_unique_mark() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    actions = agent_media(ledger, "s", 1, b"abcdefghij")
    assert [type(a) for a in actions] == [SendMedia, SendMark] * 3
    assert _media(actions) == [b"abcd", b"efgh", b"ij"]
    names = _marks(actions) + _marks(agent_media(ledger, "s", 2, b"kl"))
    assert len(set(names)) == 4
    assert ledger.pending_bytes == 12
    assert ledger.stats.pieces_sent == 4 and ledger.stats.media_bytes_sent == 12


def test_default_piece_is_100_ms() -> None:
    ledger = PlaybackLedger()
    actions = agent_media(ledger, "s", 1, bytes(8000))  # 1 s
    assert [len(p) for p in _media(actions)] == [800] * 10


def test_status_comes_once_when_every_piece_of_the_message_has_played() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    first, second, third = _marks(agent_media(ledger, "sess", 7, bytes(10)))
    assert ledger.mark_returned(first, 0.0) == []
    assert ledger.mark_returned(second, 0.0) == []
    assert ledger.mark_returned(third, 0.0) == [played("sess", 7, 10)]
    assert ledger.mark_returned(third, 0.0) == []  # a duplicate is not a second status
    assert ledger.stats.segments_played == 1 and ledger.stats.unknown_marks == 1
    assert ledger.idle and ledger.pending_bytes == 0


def test_ids_are_echoed_unchanged_whatever_their_json_type() -> None:
    ledger = PlaybackLedger()
    session: dict[str, Any] = {"a": [1, 2]}
    (name,) = _marks(agent_media(ledger, session, None, b"x"))
    (status,) = ledger.mark_returned(name, 0.0)
    assert isinstance(status, SegmentPlayed)
    assert status.key[0] is session and status.key[1] is None  # type: ignore[index]


def test_empty_audio_is_a_mark_only_piece_that_still_gets_its_status() -> None:
    ledger = PlaybackLedger()
    before = _marks(agent_media(ledger, "s", 1, b"abc"))
    actions = agent_media(ledger, "s", 2, b"")
    assert actions == [SendMark(_marks(actions)[0])]  # no empty media to Twilio
    assert ledger.mark_returned(before[0], 0.0) == [played("s", 1, 3)]
    assert ledger.mark_returned(_marks(actions)[0], 0.0) == [played("s", 2, 0)]


def test_unknown_marks_are_counted_and_ignored() -> None:
    ledger = PlaybackLedger()
    assert ledger.mark_returned("who?", 0.0) == []
    assert ledger.stats.unknown_marks == 1
    assert ledger.idle


def test_pause_clears_twilio_and_holds_new_media() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    agent_media(ledger, "s", 1, bytes(8))
    assert ledger.pause(0.0) == [SendClear(), Interrupted(("s", 1), 0, 0)]
    assert ledger.state is LedgerState.PAUSED
    assert agent_media(ledger, "s", 2, bytes(6)) == []
    assert ledger.held_bytes == 8 + 6  # cut off + held
    assert not ledger.idle


def test_cleared_echoes_after_a_pause_are_not_statuses() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    marks = _marks(agent_media(ledger, "s", 1, bytes(8)))
    ledger.pause(0.0)
    assert [ledger.mark_returned(m, 0.0) for m in marks] == [[], []]
    assert ledger.stats.marks_cleared == 2 and ledger.stats.segments_played == 0
    assert ledger.pending_bytes == 0


def test_continue_resends_from_the_first_unconfirmed_piece_then_the_held_media() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    marks = _marks(agent_media(ledger, "s", 1, b"aaaabbbbcc"))
    assert ledger.mark_returned(marks[0], 0.0) == []  # "aaaa" played
    ledger.pause(0.0)
    agent_media(ledger, "s", 2, b"dddddd")
    for m in marks[1:]:
        ledger.mark_returned(m, 0.0)  # the clear's echoes
    actions = ledger.resume(0.0)
    assert ledger.state is LedgerState.PLAYING
    assert _media(actions) == [b"bbbb", b"cc", b"dddd", b"dd"]
    new_marks = _marks(actions)
    assert not set(new_marks) & set(marks)  # a resend gets new names
    assert ledger.stats.resent_bytes == 6
    statuses = [s for m in new_marks for s in ledger.mark_returned(m, 0.0)]
    assert statuses == [played("s", 1, 10), played("s", 2, 6)]
    assert ledger.idle


def test_continue_without_a_pause_is_ignored_and_counted() -> None:
    ledger = PlaybackLedger()
    agent_media(ledger, "s", 1, b"abc")
    assert ledger.resume(0.0) == []
    assert ledger.stats.ignored_continues == 1
    assert ledger.state is LedgerState.PLAYING


def test_a_second_pause_is_ignored_and_counted() -> None:
    ledger = PlaybackLedger()
    ledger.pause(0.0)
    assert ledger.pause(0.0) == []
    assert ledger.stats.ignored_pauses == 1
    assert ledger.state is LedgerState.PAUSED


def test_pause_with_nothing_sent_then_continue_plays_the_held_media() -> None:
    ledger = PlaybackLedger()
    assert ledger.pause(0.0) == [SendClear()]  # no segment to interrupt
    agent_media(ledger, "s", 1, b"abc")
    agent_media(ledger, "s", 2, b"")
    actions = ledger.resume(0.0)
    assert _media(actions) == [b"abc"] and len(_marks(actions)) == 2


def test_clear_drops_everything_unplayed_and_the_next_media_is_the_new_answer() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    old = _marks(agent_media(ledger, "old", 1, bytes(8)))
    ledger.mark_returned(old[0], 0.0)
    assert ledger.clear(0.0) == [SendClear(), Interrupted(("old", 1), 0, 0)]  # 4 bytes are 0.5 ms
    assert ledger.stats.cleared_bytes == 4
    new = agent_media(ledger, "new", 1, b"xy")
    assert _media(new) == [b"xy"]
    assert ledger.mark_returned(old[1], 0.0) == []  # echo of the clear: message "old" never gets a status
    assert ledger.mark_returned(_marks(new)[0], 0.0) == [played("new", 1, 2)]
    assert ledger.stats.marks_cleared == 1 and ledger.idle


def test_clear_while_paused_drops_cut_off_and_held_audio() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    old = _marks(agent_media(ledger, "s", 1, bytes(8)))
    ledger.pause(0.0)
    agent_media(ledger, "s", 2, bytes(3))
    assert ledger.clear(0.0) == [SendClear(), Interrupted(("s", 1), 0, 1), Interrupted(("s", 2), 0, 0)]
    assert ledger.state is LedgerState.PLAYING
    assert ledger.held_bytes == 0 and ledger.stats.cleared_bytes == 11
    assert ledger.resume(0.0) == []  # nothing to continue any more
    assert [ledger.mark_returned(m, 0.0) for m in old] == [[], []]
    assert ledger.idle


def test_a_mark_played_just_before_the_clear_counts_as_cleared_and_its_piece_is_replayed() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    first, second = _marks(agent_media(ledger, "s", 1, b"aaaabbbb"))
    ledger.pause(0.0)  # Twilio had played "aaaa" but its mark was still on the wire
    ledger.mark_returned(first, 0.0)
    ledger.mark_returned(second, 0.0)
    assert ledger.stats.segments_played == 0
    actions = ledger.resume(0.0)
    assert _media(actions) == [b"aaaa", b"bbbb"]  # one piece repeated, never a false status
    statuses = [s for m in _marks(actions) for s in ledger.mark_returned(m, 0.0)]
    assert statuses == [played("s", 1, 8)]


def test_a_held_message_that_does_not_fit_is_dropped_with_every_later_one() -> None:
    ledger = PlaybackLedger(piece_bytes=4, max_buffered_bytes=10)
    agent_media(ledger, "s", 1, bytes(4))
    ledger.pause(0.0)
    assert agent_media(ledger, "s", 2, bytes(4)) == []
    agent_media(ledger, "s", 3, bytes(4))  # 12 > 10: dropped
    agent_media(ledger, "s", 4, b"")  # would fit, but after a hole: dropped too
    assert ledger.held_bytes == 8 and ledger.stats.overflow_bytes == 4
    actions = ledger.resume(0.0)
    assert len(_media(actions)) == 2 and len(_marks(actions)) == 2
    statuses = [s for m in _marks(actions) for s in ledger.mark_returned(m, 0.0)]
    assert statuses == [played("s", 1, 4), played("s", 2, 4)]
    # After the pause, media flows again.
    assert _media(agent_media(ledger, "s", 5, b"z")) == [b"z"]


def test_a_pause_cutting_off_more_than_the_bound_keeps_the_oldest_pieces() -> None:
    ledger = PlaybackLedger(piece_bytes=4, max_buffered_bytes=9)
    agent_media(ledger, "s", 1, bytes(12))
    agent_media(ledger, "s", 2, bytes(2))
    ledger.pause(0.0)
    assert ledger.held_bytes == 8 and ledger.stats.overflow_bytes == 6
    assert agent_media(ledger, "s", 3, b"") == []  # dropped: the cut-off list already lost audio
    actions = ledger.resume(0.0)
    assert [len(p) for p in _media(actions)] == [4, 4]
    statuses = [s for m in _marks(actions) for s in ledger.mark_returned(m, 0.0)]
    assert statuses == []  # message 1 lost its last piece, message 2 everything


def test_pending_bytes_counts_until_the_mark_comes_back_played_or_cleared() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    marks = _marks(agent_media(ledger, "s", 1, bytes(6)))
    assert ledger.pending_bytes == 6 and not ledger.idle
    ledger.mark_returned(marks[0], 0.0)
    assert ledger.pending_bytes == 2
    ledger.clear(0.0)
    assert ledger.pending_bytes == 2 and not ledger.idle  # the echo has not arrived yet
    ledger.mark_returned(marks[1], 0.0)
    assert ledger.pending_bytes == 0 and ledger.idle


def test_stats_is_a_snapshot() -> None:
    ledger = PlaybackLedger()
    snapshot = ledger.stats
    ledger.mark_returned("x", 0.0)
    assert snapshot.unknown_marks == 0 and ledger.stats.unknown_marks == 1


def test_send_media_repr_does_not_dump_audio() -> None:
    assert repr(SendMedia(bytes(800))) == "SendMedia(<800 bytes>)"


@pytest.mark.parametrize("kwargs", [{"piece_bytes": 0}, {"max_buffered_bytes": -1}])
def test_bad_arguments_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PlaybackLedger(**kwargs)


# ---------------------------------------------------------------------------------------------- the model

# Audio in the property tests is made of 2-byte units, each holding its own global index (big-endian), so the
# model can tell which byte of which message Twilio played. Piece sizes are even, so units are never split.
UNIT = 2


def _unit(payload: bytes, offset: int) -> int:
    return int.from_bytes(payload[offset : offset + UNIT], "big")


class FakeTwilio:
    """Twilio's outbound buffer, as documented: FIFO of media and marks; marks come back in order."""

    def __init__(self) -> None:
        self.buffer: deque[list[Any]] = deque()  # ["media", payload, position] or ["mark", name]
        self.to_bridge: deque[tuple[str, bool]] = deque()  # (name, played?) on the wire back to us
        self.played: list[int] = []  # unit indices, in the order the caller heard them
        self.piece_bytes: dict[str, int] = {}  # bytes of the media right before each mark
        self.since_clear: set[str] = set()
        self._last: Action | None = None

    def receive(self, action: Action) -> None:
        if isinstance(action, SendMedia):
            assert action.payload, "never send Twilio an empty media payload"
            assert not isinstance(self._last, SendMedia), "each media is followed by its mark"
            self.buffer.append(["media", action.payload, 0])
        elif isinstance(action, SendMark):
            size = len(self._last.payload) if isinstance(self._last, SendMedia) else 0
            self.piece_bytes[action.name] = size
            self.since_clear.add(action.name)
            self.buffer.append(["mark", action.name])
            self._release()
        elif isinstance(action, SendClear):
            self.to_bridge.extend((item[1], False) for item in self.buffer if item[0] == "mark")
            self.buffer.clear()
            self.since_clear.clear()
        else:
            raise AssertionError(f"{action!r} is not for Twilio")
        self._last = action

    def _release(self) -> None:
        while self.buffer and self.buffer[0][0] == "mark":
            self.to_bridge.append((self.buffer.popleft()[1], True))

    def play(self, units: int) -> None:
        for _ in range(units):
            self._release()
            if not self.buffer:
                return
            item = self.buffer[0]
            payload, pos = item[1], item[2]
            self.played.append(_unit(payload, pos))
            item[2] = pos + UNIT
            if item[2] == len(payload):
                self.buffer.popleft()
        self._release()

    def played_marks_in_flight_bytes(self) -> int:
        """Bytes of pieces played since the latest clear whose mark has not reached the bridge yet."""
        return sum(self.piece_bytes[n] for n, played in self.to_bridge if played and n in self.since_clear)


@dataclass
class _Msg:
    session_id: str
    units: list[int]
    answer: int  # how many clears had happened when it arrived
    closed: bool = True  # False while a growing segment may still get audio
    statuses: int = 0
    sent: set[int] = field(default_factory=set)  # its units sent to Twilio at least once
    heard_ms: int = 0  # the highest heard_ms seen for it since it arrived


@dataclass
class Harness:
    piece_bytes: int
    max_buffered_bytes: int
    instant: bool  # marks reach the bridge the moment Twilio sends them
    ledger: PlaybackLedger = field(init=False)
    twilio: FakeTwilio = field(default_factory=FakeTwilio)
    messages: list[_Msg] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)  # unit -> message index
    clears: int = 0
    outstanding: set[str] = field(default_factory=set)
    played_since_sent: set[int] = field(default_factory=set)  # units Twilio played since we last sent them
    held: list[int] = field(default_factory=list)  # messages with audio that arrived during the current pause
    pause_bound: int = 0
    replay_units_total: int = 0
    bogus: int = 0
    last_status: int = -1
    now: float = 0.0  # seconds: Twilio plays in real time, 8000 bytes per second
    growing: int | None = None  # the message index of the open (growing) segment, if any
    late_bytes: int = 0  # audio given to a segment that a clear found open

    def __post_init__(self) -> None:
        self.ledger = PlaybackLedger(piece_bytes=self.piece_bytes, max_buffered_bytes=self.max_buffered_bytes)

    # -- plumbing

    def send(self, actions: list[Action]) -> None:
        for action in actions:
            assert not isinstance(action, SegmentPlayed), "statuses only come from marks"
            if isinstance(action, Interrupted):
                continue  # checked by pause() and clear(); nothing for Twilio
            if isinstance(action, SendMedia):
                for i in range(0, len(action.payload), UNIT):
                    unit = _unit(action.payload, i)
                    # Nothing of an old answer after a clear.
                    assert self.messages[self.owner[unit]].answer == self.clears
                    self.messages[self.owner[unit]].sent.add(unit)
                    self.played_since_sent.discard(unit)
            if isinstance(action, SendMark):
                assert action.name not in self.twilio.piece_bytes, "mark names are never reused"
                self.outstanding.add(action.name)
            self.twilio.receive(action)
        if self.instant:
            self.deliver(len(self.twilio.to_bridge))

    def deliver(self, count: int) -> None:
        for _ in range(min(count, len(self.twilio.to_bridge))):
            name, _ = self.twilio.to_bridge.popleft()
            self.outstanding.discard(name)
            for action in self.ledger.mark_returned(name, self.now):
                assert isinstance(action, SegmentPlayed)
                self.on_status(action)

    def on_status(self, status: SegmentPlayed) -> None:
        session_id, index = status.key  # type: ignore[misc]
        msg = self.messages[index]
        assert session_id == msg.session_id
        assert msg.closed, "played only once closed"
        assert msg.statuses == 0, "a status is sent once"
        assert msg.answer == self.clears, "no status for a message dropped by a clear"
        played = set(self.twilio.played)
        assert all(u in played for u in msg.units), "status only for audio played in full"
        assert status.played_ms == len(msg.units) * UNIT * 1000 // 8000
        if index not in self.grown:
            assert index > self.last_status, "statuses in message order"
            self.last_status = index
        msg.statuses += 1

    @property
    def grown(self) -> set[int]:
        return {i for i, m in enumerate(self.messages) if m.session_id.startswith("grow")}

    def _new_units(self, index: int, units: int) -> bytes:
        start = len(self.owner)
        self.messages[index].units.extend(range(start, start + units))
        self.owner.extend([index] * units)
        return b"".join(u.to_bytes(UNIT, "big") for u in range(start, start + units))

    def check_interrupted(self, actions: list[Action], cleared: bool) -> None:
        """One Interrupted per unfinished segment (all, if no overflow), heard within what was sent."""
        assert actions[0] == SendClear()
        reports = actions[1:]
        assert all(isinstance(a, Interrupted) for a in reports)
        keys = [a.key for a in reports if isinstance(a, Interrupted)]
        unfinished = [
            (m.session_id, i)
            for i, m in enumerate(self.messages)
            if m.answer == self.clears and m.statuses == 0
        ]
        assert set(keys) <= set(unfinished) and len(set(keys)) == len(keys)
        if not self.ledger.stats.overflow_bytes:
            order = {key: n for n, key in enumerate(unfinished)}
            assert sorted(keys, key=order.__getitem__) == keys  # in the order they were opened
        for action in reports:
            assert isinstance(action, Interrupted)
            msg = self.messages[action.key[1]]  # type: ignore[index]
            assert action.heard_ms <= len(msg.sent) * UNIT * 1000 // 8000, "never more than was sent"
            assert action.heard_ms >= msg.heard_ms, "heard never goes backwards"
            msg.heard_ms = action.heard_ms
            if not cleared:
                assert action.cleared_ms == 0
            else:
                assert action.cleared_ms <= len(msg.units) * UNIT * 1000 // 8000

    # -- events

    def media(self, units: int) -> None:
        index = len(self.messages)
        self.messages.append(_Msg(f"answer-{self.clears}", [], self.clears))
        audio = self._new_units(index, units)
        if self.ledger.state is LedgerState.PAUSED and units:
            self.held.append(index)
        self.send(agent_media(self.ledger, f"answer-{self.clears}", index, audio, self.now))

    def grow(self, units: int) -> None:
        """Audio for the open segment (opening one if there is none)."""
        if self.growing is None:
            self.growing = len(self.messages)
            self.messages.append(_Msg(f"grow-{self.clears}", [], self.clears, closed=False))
        index = self.growing
        msg = self.messages[index]
        late_before = self.ledger.stats.late_bytes
        audio = self._new_units(index, units)
        actions = self.ledger.append((msg.session_id, index), audio, self.now)
        if msg.answer != self.clears:  # a clear found it open: dead
            assert actions == []
            self.late_bytes += len(audio)
            assert self.ledger.stats.late_bytes == late_before + len(audio)
        self.send(actions)

    def close(self) -> None:
        if self.growing is None:
            return
        msg = self.messages[self.growing]
        msg.closed = True
        actions = self.ledger.close_segment((msg.session_id, self.growing))
        self.growing = None
        for action in actions:
            assert isinstance(action, SegmentPlayed)
            self.on_status(action)

    def play(self, units: int) -> None:
        already = len(self.twilio.played)
        self.twilio.play(units)
        self.played_since_sent.update(self.twilio.played[already:])
        self.now += units * UNIT / 8000

    def pause(self) -> None:
        if self.ledger.state is LedgerState.PLAYING:
            in_flight = self.twilio.played_marks_in_flight_bytes()
            if self.instant:
                assert in_flight == 0
            # What a continue may repeat: the piece Twilio was playing, plus pieces whose marks are in flight.
            self.pause_bound = self.piece_bytes + in_flight
            actions = self.ledger.pause(self.now)
            self.check_interrupted(actions, cleared=False)
            self.send(actions)
        else:
            assert self.ledger.pause(self.now) == []

    def resume(self) -> None:
        if self.ledger.state is LedgerState.PAUSED:
            actions = self.ledger.resume(self.now)
            resent = [_unit(p, i) for p in _media(actions) for i in range(0, len(p), UNIT)]
            # The replay this continue causes: resent units the caller heard since they were last sent.
            replay_units = sum(1 for u in resent if u in self.played_since_sent)
            # Held audio dropped by the memory bound leaves no hole: what is sent is a prefix of the held.
            sent_held = [i for i in self.held if self.messages[i].units[0] in resent]
            assert sent_held == self.held[: len(sent_held)]
            self.held.clear()
            assert replay_units * UNIT <= self.pause_bound
            self.replay_units_total += replay_units
            for action in actions:
                if isinstance(
                    action, SegmentPlayed
                ):  # a closed segment whose audio was all overflow or played
                    self.on_status(action)
            self.send([a for a in actions if not isinstance(a, SegmentPlayed)])
        else:
            assert self.ledger.resume(self.now) == []

    def clear(self) -> None:
        self.held.clear()
        actions = self.ledger.clear(self.now)
        self.check_interrupted(actions, cleared=True)
        self.clears += 1
        self.send(actions)

    def step(self, kind: str, arg: int) -> None:
        if kind == "media":
            self.media(arg)
        elif kind == "grow":
            self.grow(arg)
        elif kind == "close":
            self.close()
        elif kind == "play":
            self.play(arg)
            if self.instant:
                self.deliver(len(self.twilio.to_bridge))
        elif kind == "wait":  # time passes with nothing new for Twilio to play (or it plays what it has)
            self.play(arg)
            self.now += arg / 1000
        elif kind == "deliver":
            self.deliver(arg)
        elif kind == "pause":
            self.pause()
        elif kind == "continue":
            self.resume()
        elif kind == "clear":
            self.clear()
        elif kind == "bogus":
            self.bogus += 1
            assert self.ledger.mark_returned(f"bogus-{arg}", self.now) == []
        self.check_invariants()

    def check_invariants(self) -> None:
        pending = sum(self.twilio.piece_bytes[n] for n in self.outstanding)
        assert self.ledger.pending_bytes == pending
        assert self.ledger.held_bytes <= self.max_buffered_bytes
        # Every byte given is played, cleared, dropped by the bound or still unplayed; or late (dead segment).
        stats = self.ledger.stats
        given = len(self.owner) * UNIT
        assert stats.late_bytes == self.late_bytes
        assert stats.received_bytes == given - self.late_bytes
        unplayed = self.ledger.unplayed_bytes
        assert (
            stats.received_bytes == stats.played_bytes + stats.cleared_bytes + stats.overflow_bytes + unplayed
        )
        # Heard: never more than was sent, never backwards until a clear (a finished key keeps its value).
        for index, msg in enumerate(self.messages):
            if msg.answer != self.clears:
                continue
            heard = self.ledger.heard_ms((msg.session_id, index), self.now)
            if heard is None:  # played in full, or finished by losing audio to the memory bound
                assert msg.statuses == 1 or self.ledger.stats.overflow_bytes
                continue
            assert heard <= len(msg.sent) * UNIT * 1000 // 8000, "never more than was sent"
            assert heard >= msg.heard_ms, "heard never goes backwards"
            msg.heard_ms = heard

    def drain(self) -> None:
        """The agent closes its segment, continues if paused; Twilio plays it all, every mark comes back."""
        self.close()
        self.resume()
        for _ in range(3):
            self.play(len(self.owner) + 1)
            self.deliver(len(self.twilio.to_bridge))
        assert not self.twilio.buffer and not self.twilio.to_bridge
        assert self.ledger.idle and self.ledger.pending_bytes == 0 and self.ledger.held_bytes == 0
        self.check_invariants()


def _check_outcome(h: Harness) -> None:
    stats = h.ledger.stats
    assert stats.segments_played == sum(m.statuses for m in h.messages)
    assert stats.unknown_marks == h.bogus
    assert stats.marks_played + stats.marks_cleared == len(h.twilio.piece_bytes)
    # Nothing played twice except what a continue resent after it had played.
    counts: dict[int, int] = {}
    for unit in h.twilio.played:
        counts[unit] = counts.get(unit, 0) + 1
    assert sum(c - 1 for c in counts.values()) <= h.replay_units_total
    if stats.overflow_bytes:
        return
    # Nothing lost: every message of the current answer is played in full, in order, and reported once.
    survivors = [m for m in h.messages if m.answer == h.clears]
    assert all(m.statuses == 1 for m in survivors)
    wanted = sorted(u for m in survivors for u in m.units)  # units are numbered in the order they arrived
    wanted_set = set(wanted)
    first_plays: list[int] = []
    seen: set[int] = set()
    for unit in h.twilio.played:
        if unit in wanted_set and unit not in seen:
            seen.add(unit)
            first_plays.append(unit)
    assert first_plays == wanted


EVENT_KINDS = ["media"] * 4 + ["play"] * 3 + ["deliver"] * 2 + ["pause", "continue", "clear", "bogus"]
events = st.lists(st.tuples(st.sampled_from(EVENT_KINDS), st.integers(0, 30)), max_size=60)


def _run(piece_units: int, max_buffered_bytes: int, instant: bool, script: list[tuple[str, int]]) -> Harness:
    h = Harness(piece_bytes=piece_units * UNIT, max_buffered_bytes=max_buffered_bytes, instant=instant)
    for kind, arg in script:
        h.step(kind, arg)
    h.drain()
    _check_outcome(h)
    return h


@settings(max_examples=1500, deadline=None)
@given(piece_units=st.integers(1, 8), script=events)
def test_playback_against_twilio_with_marks_in_flight(
    piece_units: int, script: list[tuple[str, int]]
) -> None:
    _run(piece_units, 10**9, False, script)


@settings(max_examples=700, deadline=None)
@given(piece_units=st.integers(1, 8), script=events)
def test_a_continue_repeats_at_most_one_piece_when_marks_arrive_promptly(
    piece_units: int, script: list[tuple[str, int]]
) -> None:
    h = _run(piece_units, 10**9, True, script)
    counts: dict[int, int] = {}
    for unit in h.twilio.played:
        counts[unit] = counts.get(unit, 0) + 1
    continues = sum(1 for kind, _ in script if kind == "continue") + 1  # + the drain's
    assert sum(c - 1 for c in counts.values()) * UNIT <= continues * h.piece_bytes


@settings(max_examples=600, deadline=None)
@given(piece_units=st.integers(1, 8), max_units=st.integers(0, 40), script=events)
def test_the_memory_bound_drops_audio_but_never_lies_about_playback(
    piece_units: int, max_units: int, script: list[tuple[str, int]]
) -> None:
    _run(piece_units, max_units * UNIT, False, script)


GROWING_KINDS = EVENT_KINDS + ["grow"] * 4 + ["close", "wait"]
growing_events = st.lists(st.tuples(st.sampled_from(GROWING_KINDS), st.integers(0, 30)), max_size=80)


@settings(max_examples=1500, deadline=None)
@given(piece_units=st.integers(1, 8), max_units=st.sampled_from([10**9, 0, 5, 40]), script=growing_events)
def test_growing_segments_time_and_interruptions_keep_the_accounts(
    piece_units: int, max_units: int, script: list[tuple[str, int]]
) -> None:
    """Random media, growing segments, closes, marks, pauses, continues, clears and time steps: played +
    cleared + overflow + unplayed always equals what was given, a segment is played once and only once closed
    and heard in full, heard_ms never exceeds what was sent nor goes backwards until a clear, and audio given
    to a segment a clear found open never reaches Twilio."""
    _run(piece_units, max_units * UNIT, False, script)


def test_tail_is_played_and_awaited_but_never_owes_a_status():
    ledger = PlaybackLedger(piece_bytes=800)
    sent = agent_media(ledger, "s", 1, b"\x01" * 800)
    tail = ledger.tail(b"\x02" * 18, 0.0)
    assert [type(a) for a in tail] == [SendMedia, SendMark]
    assert ledger.pending_bytes == 818 and not ledger.idle
    marks = [a.name for a in sent + tail if isinstance(a, SendMark)]
    assert ledger.mark_returned(marks[0], 0.0) == [played("s", 1, 800)]
    assert ledger.mark_returned(marks[1], 0.0) == []  # the tail played: no status for it
    assert ledger.idle
    assert ledger.tail(b"", 0.0) == []


# ---------------------------------------------------------------------------------------- segments and time

PIECE = 800  # the default piece: 100 ms at 8000 bytes per second


def test_a_segment_grows_and_is_played_only_once_closed_and_fully_confirmed() -> None:
    ledger = PlaybackLedger()
    first = ledger.append("item", bytes(1200), 0.0)
    second = ledger.append("item", bytes(400), 0.05)
    assert _media(first) == [bytes(800), bytes(400)] and _media(second) == [bytes(400)]
    marks = _marks(first) + _marks(second)
    assert [ledger.mark_returned(m, 0.1 * (i + 1)) for i, m in enumerate(marks)] == [[], [], []]
    assert ledger.idle and ledger.stats.segments_played == 0  # all played, but more may come
    assert ledger.close_segment("item") == [SegmentPlayed("item", 200)]
    assert ledger.close_segment("item") == []  # closing it again does nothing
    assert ledger.stats.ignored_closes == 1
    assert ledger.heard_ms("item", 0.5) is None  # played in full: SegmentPlayed said so


def test_a_segment_closed_before_its_marks_come_back_is_played_at_its_last_mark() -> None:
    ledger = PlaybackLedger()
    marks = _marks(ledger.append("answer", bytes(1600), 0.0))
    assert ledger.close_segment("answer") == []
    assert ledger.mark_returned(marks[0], 0.1) == []
    assert ledger.mark_returned(marks[1], 0.2) == [SegmentPlayed("answer", 200)]
    assert ledger.heard_ms("answer", 0.15) is None  # played in full
    assert ledger.stats.played_ms == 200 and ledger.stats.cleared_ms == 0


def test_an_empty_segment_is_a_mark_only_piece_played_after_what_came_before() -> None:
    ledger = PlaybackLedger()
    before = _marks(ledger.append("a", bytes(8), 0.0, close=True))
    assert ledger.close_segment("b") == [] and ledger.stats.ignored_closes == 1  # closing a key never seen
    empty = ledger.append("b", b"", 0.0, close=True)
    assert [type(a) for a in empty] == [SendMark]
    assert ledger.mark_returned(before[0], 0.01) == [SegmentPlayed("a", 1)]
    assert ledger.mark_returned(_marks(empty)[0], 0.01) == [SegmentPlayed("b", 0)]


def test_a_closed_key_that_gets_audio_again_starts_a_new_segment_reported_on_its_own() -> None:
    ledger = PlaybackLedger()
    one = _marks(ledger.append("k", bytes(8), 0.0, close=True))
    two = _marks(ledger.append("k", bytes(16), 0.0, close=True))
    assert ledger.mark_returned(one[0], 0.0) == [SegmentPlayed("k", 1)]
    assert ledger.mark_returned(two[0], 0.0) == [SegmentPlayed("k", 2)]


def test_audio_for_a_segment_a_clear_found_open_is_dropped_and_closing_it_does_nothing() -> None:
    ledger = PlaybackLedger()
    marks = _marks(ledger.append("item", bytes(1600), 0.0))
    assert ledger.mark_returned(marks[0], 0.1) == []
    actions = ledger.clear(0.15)
    assert actions == [SendClear(), Interrupted("item", 150, 100)]
    assert ledger.append("item", bytes(800), 0.2) == []  # a late delta of the interrupted item
    assert ledger.close_segment("item") == []
    stats = ledger.stats
    assert stats.late_bytes == 800 and stats.ignored_closes == 1 and stats.received_bytes == 1600
    assert ledger.heard_ms("item", 5.0) == 150
    assert _media(ledger.append("next", bytes(8), 0.3)) == [bytes(8)]  # a new key plays


def test_heard_at_a_pause_is_the_confirmed_pieces_plus_the_piece_in_flight_timed_from_its_neighbour() -> None:
    ledger = PlaybackLedger()
    marks = _marks(ledger.append("item", bytes(3 * PIECE), 0.0, close=True))
    ledger.mark_returned(marks[0], 0.1)  # the second piece started playing now
    assert ledger.heard_ms("item", 0.13) == 130
    assert ledger.heard_ms("item", 0.5) == 200  # the piece in flight is capped at its length
    assert ledger.pause(0.16) == [SendClear(), Interrupted("item", 160, 0)]
    assert ledger.heard_ms("item", 0.2) == 160
    resent = ledger.resume(1.0)
    assert len(_media(resent)) == 2
    assert ledger.heard_ms("item", 1.05) == 160  # the resent piece plays from its start: no going back
    assert ledger.heard_ms("item", 1.07) == 170


def test_heard_when_the_buffer_ran_dry_times_the_piece_from_when_it_was_sent() -> None:
    ledger = PlaybackLedger()
    first = _marks(ledger.append("item", bytes(PIECE), 0.0))
    ledger.mark_returned(first[0], 0.1)  # played as soon as sent: no playout delay
    assert ledger.playout_delay_s == 0.0
    ledger.append("item", bytes(PIECE), 0.5)  # the buffer has been dry since 0.1
    assert ledger.heard_ms("item", 0.55) == 150  # 50 ms of it, not 100 (timed from the last mark)
    assert ledger.clear(0.58) == [SendClear(), Interrupted("item", 180, 100)]


def test_the_playout_delay_is_measured_on_a_piece_sent_into_a_dry_buffer() -> None:
    ledger = PlaybackLedger()
    marks = _marks(ledger.append("greeting", bytes(2 * PIECE), 0.0, close=True))
    ledger.mark_returned(marks[0], 0.3)  # 100 ms of audio came back after 300 ms: 200 ms of delay
    assert ledger.playout_delay_s == pytest.approx(0.2)
    ledger.mark_returned(marks[1], 0.4)  # queued behind the first: no new measurement
    assert ledger.playout_delay_s == pytest.approx(0.2)
    ledger.append("answer", bytes(2 * PIECE), 1.0)
    assert ledger.heard_ms("answer", 1.15) == 0  # still in the handset's buffer
    assert ledger.heard_ms("answer", 1.25) == 50
    ledger.append("empty", b"", 2.0)  # a mark-only piece never measures a delay
    assert ledger.playout_delay_s == pytest.approx(0.2)


def test_a_mark_in_flight_across_a_clear_is_heard_but_never_counted_played() -> None:
    ledger = PlaybackLedger()
    marks = _marks(ledger.append("item", bytes(2 * PIECE), 0.0, close=True))
    # The first piece has played (0-100 ms) but its mark is still on the wire at 120 ms.
    assert ledger.clear(0.12) == [SendClear(), Interrupted("item", 100, 200)]
    assert [ledger.mark_returned(m, 0.13) for m in marks] == [[], []]  # the clear's echoes
    stats = ledger.stats
    assert stats.marks_cleared == 2 and stats.played_bytes == 0 and stats.cleared_bytes == 2 * PIECE
    assert stats.played_ms == 0 and stats.cleared_ms == 200
    assert ledger.heard_ms("item", 1.0) == 100


def test_interrupted_lists_every_unfinished_segment_in_order_even_unheard_ones() -> None:
    ledger = PlaybackLedger()
    a = _marks(ledger.append("a", bytes(PIECE), 0.0, close=True))
    ledger.append("b", bytes(PIECE), 0.0)
    ledger.append("c", bytes(PIECE), 0.0, close=True)
    assert ledger.mark_returned(a[0], 0.1) == [SegmentPlayed("a", 100)]
    assert ledger.clear(0.14) == [SendClear(), Interrupted("b", 40, 100), Interrupted("c", 0, 100)]
    assert ledger.heard_ms("nobody", 0.2) is None
    assert ledger.heard_ms({"un": "hashable"}, 0.2) is None


def test_only_the_latest_cleared_keys_are_remembered() -> None:
    ledger = PlaybackLedger()
    for n in range(CLEARED_KEYS_KEPT):
        ledger.append(n, bytes(8), 0.0)
    (first,) = _marks(ledger.append("played", bytes(8), 0.0))  # one more: the 65th segment a clear finds
    ledger.mark_returned(first, 0.0)
    ledger.clear(1.0)
    assert ledger.heard_ms(0, 1.0) is None and ledger.heard_ms(1, 1.0) == 0
    assert ledger.heard_ms("played", 2.0) == 1
    assert ledger.append(0, bytes(8), 2.0) != []  # forgotten: no longer known to be dead
    assert ledger.append(1, bytes(8), 2.0) == [] and ledger.stats.late_bytes == 8


@pytest.mark.parametrize("kwargs", [{"bytes_per_second": 0}])
def test_bad_rates_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PlaybackLedger(**kwargs)


# -------------------------------------------------------------------------------------- a buffering handset

TICK_MS = 1
HANDSET_DELAY_MS = 200
#: The quality bar: what the ledger says was heard is within this of what the handset played.
TOLERANCE_MS = 40


@dataclass
class _Handset:
    """The ledger driving a PhonePlayback that starts playing audio 200 ms after it arrives, in 1 ms spans.

    Marks come back when the phone has played their audio, so they are late by the handset's delay too.
    """

    delay_ms: int = HANDSET_DELAY_MS
    t_ms: int = 0
    ledger: PlaybackLedger = field(default_factory=PlaybackLedger)
    phone: PhonePlayback = field(init=False)
    heard_bytes: dict[int, int] = field(default_factory=dict)  # byte value -> bytes the phone played
    reports: list[Action] = field(default_factory=list)
    first_sent_ms: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.phone = PhonePlayback(start_delay_samples=self.delay_ms * 8)

    @property
    def now(self) -> float:
        return self.t_ms / 1000

    def do(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendMedia):
                self.phone.enqueue_media(action.payload)
            elif isinstance(action, SendMark):
                for name in self.phone.enqueue_mark(action.name):
                    self.reports += self.ledger.mark_returned(name, self.now)
            elif isinstance(action, SendClear):
                for name in self.phone.clear():
                    self.reports += self.ledger.mark_returned(name, self.now)
            else:
                self.reports.append(action)

    def tick(self) -> None:
        """One 1 ms span starts now: the phone takes it for the speaker and returns the marks now due."""
        played, due = self.phone.tick(8 * TICK_MS)
        for value in played:
            if value != 0xFF:
                self.heard_bytes[value] = self.heard_bytes.get(value, 0) + 1
        for name in due:
            self.reports += self.ledger.mark_returned(name, self.now)

    def send(self, key: str, value: int, n_ms: int, *, close: bool) -> list[Action]:
        self.first_sent_ms.setdefault(key, self.t_ms)
        actions = self.ledger.append(key, bytes([value]) * (n_ms * 8), self.now, close=close)
        self.do(actions)
        return actions

    def heard_ms(self, value: int) -> int:
        return self.heard_bytes.get(value, 0) // 8


def _schedule(
    key: str, value: int, start_ms: int, total_ms: int, chunk_ms: int, period_ms: int
) -> dict[int, list[tuple[str, int, int, bool]]]:
    """An answer arriving as ``chunk_ms`` deltas every ``period_ms``, closed with its last delta."""
    count = total_ms // chunk_ms
    return {start_ms + i * period_ms: [(key, value, chunk_ms, i == count - 1)] for i in range(count)}


def _run_handset(
    schedule: dict[int, list[tuple[str, int, int, bool]]], interrupt_ms: int, end_ms: int
) -> tuple[_Handset, dict[str, Any]]:
    phone = _Handset()
    seen: dict[str, Any] = {}
    for t in range(end_ms):
        phone.t_ms = t
        phone.tick()
        for key, value, n_ms, close in schedule.get(t, []):
            actions = phone.send(key, value, n_ms, close=close)
            if t > interrupt_ms and key == "answer":
                assert actions == [], "nothing of the interrupted answer is sent after the clear"
        if t == interrupt_ms:
            seen["query_ms"] = phone.ledger.heard_ms("answer", phone.now)
            seen["wall_clock_ms"] = t - phone.first_sent_ms["answer"]
            actions = phone.ledger.clear(phone.now)
            seen["interrupted"] = [a for a in actions if isinstance(a, Interrupted) and a.key == "answer"]
            seen["played_by_then_ms"] = phone.heard_ms(2)
            phone.do(actions)
    return phone, seen


@pytest.mark.parametrize(
    "pattern", ["fast", "slow"]
)  # deltas faster than real time, or slower (buffer runs dry)
@pytest.mark.parametrize("offset_ms", [30, 150, 230, 333, 470, 901, 1299])
def test_heard_ms_matches_what_a_buffering_handset_played(pattern: str, offset_ms: int) -> None:
    """A handset plays audio 200 ms after it arrives; marks come back late accordingly. After a greeting
    (which teaches the ledger the playout delay), the answer is interrupted at various points: the heard ms
    the ledger reports (as Interrupted and as the heard_ms query) is what the handset played, within ±40 ms,
    where timing from the first send (the wall clock) is off by the handset's delay. Nothing of the answer
    plays after the clear, and the next answer plays whole."""
    period = 40 if pattern == "fast" else 150  # 100 ms deltas every 40 ms, or every 150 ms
    schedule = _schedule("greeting", 1, 0, 1000, 100, period)
    answer_start = 3000
    schedule.update(_schedule("answer", 2, answer_start, 1500, 100, period))
    schedule.update(_schedule("next", 3, 6000, 700, 100, period))
    phone, seen = _run_handset(schedule, answer_start + offset_ms, 8000)
    assert SegmentPlayed("greeting", 1000) in phone.reports
    assert phone.ledger.playout_delay_s == pytest.approx(HANDSET_DELAY_MS / 1000, abs=0.005)
    (interrupted,) = seen["interrupted"]
    actual = seen["played_by_then_ms"]
    assert abs(interrupted.heard_ms - actual) <= TOLERANCE_MS
    assert seen["query_ms"] == interrupted.heard_ms
    if offset_ms > HANDSET_DELAY_MS and actual < 1500:
        assert abs(seen["wall_clock_ms"] - actual) > TOLERANCE_MS  # the estimate the peers make
    assert phone.heard_ms(2) == actual  # nothing of the interrupted answer after the clear
    assert SegmentPlayed("next", 700) in phone.reports and phone.heard_ms(3) == 700
    assert not any(isinstance(r, SegmentPlayed) and r.key == "answer" for r in phone.reports)


def test_the_first_answer_is_exact_once_its_first_mark_is_back() -> None:
    """Before any mark came back the delay is unknown (a piece is timed from when it was sent, an error of at
    most one piece); from the first mark on, the pieces are timed from their neighbours."""
    schedule = _schedule("answer", 2, 0, 1500, 100, 40)
    for interrupt_ms in (320, 350, 777):
        phone, seen = _run_handset(schedule, interrupt_ms, 2000)
        (interrupted,) = seen["interrupted"]
        assert abs(interrupted.heard_ms - seen["played_by_then_ms"]) <= TOLERANCE_MS
    phone, seen = _run_handset(schedule, 150, 2000)  # nothing played yet; the estimate is off by < one piece
    (interrupted,) = seen["interrupted"]
    assert seen["played_by_then_ms"] == 0 and interrupted.heard_ms <= PIECE // 8
