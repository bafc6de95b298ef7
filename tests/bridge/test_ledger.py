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
    Action,
    LedgerState,
    PlaybackLedger,
    SendClear,
    SendMark,
    SendMedia,
    SendStatus,
)


def _media(actions: list[Action]) -> list[bytes]:
    return [a.payload for a in actions if isinstance(a, SendMedia)]


def _marks(actions: list[Action]) -> list[str]:
    return [a.name for a in actions if isinstance(a, SendMark)]


# ---------------------------------------------------------------------------------------------- unit tests


def test_media_is_cut_into_pieces_each_followed_by_a_unique_mark() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    actions = ledger.agent_media("s", 1, b"abcdefghij")
    assert [type(a) for a in actions] == [SendMedia, SendMark] * 3
    assert _media(actions) == [b"abcd", b"efgh", b"ij"]
    names = _marks(actions) + _marks(ledger.agent_media("s", 2, b"kl"))
    assert len(set(names)) == 4
    assert ledger.pending_bytes == 12
    assert ledger.stats.pieces_sent == 4 and ledger.stats.media_bytes_sent == 12


def test_default_piece_is_100_ms() -> None:
    ledger = PlaybackLedger()
    actions = ledger.agent_media("s", 1, bytes(8000))  # 1 s
    assert [len(p) for p in _media(actions)] == [800] * 10


def test_status_comes_once_when_every_piece_of_the_message_has_played() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    first, second, third = _marks(ledger.agent_media("sess", 7, bytes(10)))
    assert ledger.twilio_mark(first) == []
    assert ledger.twilio_mark(second) == []
    assert ledger.twilio_mark(third) == [SendStatus("sess", 7)]
    assert ledger.twilio_mark(third) == []  # a duplicate is not a second status
    assert ledger.stats.statuses_sent == 1 and ledger.stats.unknown_marks == 1
    assert ledger.idle and ledger.pending_bytes == 0


def test_ids_are_echoed_unchanged_whatever_their_json_type() -> None:
    ledger = PlaybackLedger()
    session: dict[str, Any] = {"a": [1, 2]}
    (name,) = _marks(ledger.agent_media(session, None, b"x"))
    (status,) = ledger.twilio_mark(name)
    assert isinstance(status, SendStatus)
    assert status.session_id is session and status.sequence_id is None


def test_empty_audio_is_a_mark_only_piece_that_still_gets_its_status() -> None:
    ledger = PlaybackLedger()
    before = _marks(ledger.agent_media("s", 1, b"abc"))
    actions = ledger.agent_media("s", 2, b"")
    assert actions == [SendMark(_marks(actions)[0])]  # no empty media to Twilio
    assert ledger.twilio_mark(before[0]) == [SendStatus("s", 1)]
    assert ledger.twilio_mark(_marks(actions)[0]) == [SendStatus("s", 2)]


def test_unknown_marks_are_counted_and_ignored() -> None:
    ledger = PlaybackLedger()
    assert ledger.twilio_mark("who?") == []
    assert ledger.stats.unknown_marks == 1
    assert ledger.idle


def test_pause_clears_twilio_and_holds_new_media() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    ledger.agent_media("s", 1, bytes(8))
    assert ledger.pause() == [SendClear()]
    assert ledger.state is LedgerState.PAUSED
    assert ledger.agent_media("s", 2, bytes(6)) == []
    assert ledger.held_bytes == 8 + 6  # cut off + held
    assert not ledger.idle


def test_cleared_echoes_after_a_pause_are_not_statuses() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    marks = _marks(ledger.agent_media("s", 1, bytes(8)))
    ledger.pause()
    assert [ledger.twilio_mark(m) for m in marks] == [[], []]
    assert ledger.stats.marks_cleared == 2 and ledger.stats.statuses_sent == 0
    assert ledger.pending_bytes == 0


def test_continue_resends_from_the_first_unconfirmed_piece_then_the_held_media() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    marks = _marks(ledger.agent_media("s", 1, b"aaaabbbbcc"))
    assert ledger.twilio_mark(marks[0]) == []  # "aaaa" played
    ledger.pause()
    ledger.agent_media("s", 2, b"dddddd")
    for m in marks[1:]:
        ledger.twilio_mark(m)  # the clear's echoes
    actions = ledger.resume()
    assert ledger.state is LedgerState.PLAYING
    assert _media(actions) == [b"bbbb", b"cc", b"dddd", b"dd"]
    new_marks = _marks(actions)
    assert not set(new_marks) & set(marks)  # a resend gets new names
    assert ledger.stats.resent_bytes == 6
    statuses = [s for m in new_marks for s in ledger.twilio_mark(m)]
    assert statuses == [SendStatus("s", 1), SendStatus("s", 2)]
    assert ledger.idle


def test_continue_without_a_pause_is_ignored_and_counted() -> None:
    ledger = PlaybackLedger()
    ledger.agent_media("s", 1, b"abc")
    assert ledger.resume() == []
    assert ledger.stats.ignored_continues == 1
    assert ledger.state is LedgerState.PLAYING


def test_a_second_pause_is_ignored_and_counted() -> None:
    ledger = PlaybackLedger()
    ledger.pause()
    assert ledger.pause() == []
    assert ledger.stats.ignored_pauses == 1
    assert ledger.state is LedgerState.PAUSED


def test_pause_with_nothing_sent_then_continue_plays_the_held_media() -> None:
    ledger = PlaybackLedger()
    assert ledger.pause() == [SendClear()]
    ledger.agent_media("s", 1, b"abc")
    ledger.agent_media("s", 2, b"")
    actions = ledger.resume()
    assert _media(actions) == [b"abc"] and len(_marks(actions)) == 2


def test_clear_drops_everything_unplayed_and_the_next_media_is_the_new_answer() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    old = _marks(ledger.agent_media("old", 1, bytes(8)))
    ledger.twilio_mark(old[0])
    assert ledger.clear() == [SendClear()]
    assert ledger.stats.dropped_bytes == 4
    new = ledger.agent_media("new", 1, b"xy")
    assert _media(new) == [b"xy"]
    assert ledger.twilio_mark(old[1]) == []  # echo of the clear: message "old" never gets a status
    assert ledger.twilio_mark(_marks(new)[0]) == [SendStatus("new", 1)]
    assert ledger.stats.marks_cleared == 1 and ledger.idle


def test_clear_while_paused_drops_cut_off_and_held_audio() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    old = _marks(ledger.agent_media("s", 1, bytes(8)))
    ledger.pause()
    ledger.agent_media("s", 2, bytes(3))
    assert ledger.clear() == [SendClear()]
    assert ledger.state is LedgerState.PLAYING
    assert ledger.held_bytes == 0 and ledger.stats.dropped_bytes == 11
    assert ledger.resume() == []  # nothing to continue any more
    assert [ledger.twilio_mark(m) for m in old] == [[], []]
    assert ledger.idle


def test_a_mark_played_just_before_the_clear_counts_as_cleared_and_its_piece_is_replayed() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    first, second = _marks(ledger.agent_media("s", 1, b"aaaabbbb"))
    ledger.pause()  # Twilio had played "aaaa" but its mark was still on the wire
    ledger.twilio_mark(first)
    ledger.twilio_mark(second)
    assert ledger.stats.statuses_sent == 0
    actions = ledger.resume()
    assert _media(actions) == [b"aaaa", b"bbbb"]  # one piece repeated, never a false status
    statuses = [s for m in _marks(actions) for s in ledger.twilio_mark(m)]
    assert statuses == [SendStatus("s", 1)]


def test_a_held_message_that_does_not_fit_is_dropped_with_every_later_one() -> None:
    ledger = PlaybackLedger(piece_bytes=4, max_buffered_bytes=10)
    ledger.agent_media("s", 1, bytes(4))
    ledger.pause()
    assert ledger.agent_media("s", 2, bytes(4)) == []
    ledger.agent_media("s", 3, bytes(4))  # 12 > 10: dropped
    ledger.agent_media("s", 4, b"")  # would fit, but after a hole: dropped too
    assert ledger.held_bytes == 8 and ledger.stats.overflow_bytes == 4
    actions = ledger.resume()
    assert len(_media(actions)) == 2 and len(_marks(actions)) == 2
    statuses = [s for m in _marks(actions) for s in ledger.twilio_mark(m)]
    assert statuses == [SendStatus("s", 1), SendStatus("s", 2)]
    # After the pause, media flows again.
    assert _media(ledger.agent_media("s", 5, b"z")) == [b"z"]


def test_a_pause_cutting_off_more_than_the_bound_keeps_the_oldest_pieces() -> None:
    ledger = PlaybackLedger(piece_bytes=4, max_buffered_bytes=9)
    ledger.agent_media("s", 1, bytes(12))
    ledger.agent_media("s", 2, bytes(2))
    ledger.pause()
    assert ledger.held_bytes == 8 and ledger.stats.overflow_bytes == 6
    assert ledger.agent_media("s", 3, b"") == []  # dropped: the cut-off list already lost audio
    actions = ledger.resume()
    assert [len(p) for p in _media(actions)] == [4, 4]
    statuses = [s for m in _marks(actions) for s in ledger.twilio_mark(m)]
    assert statuses == []  # message 1 lost its last piece, message 2 everything


def test_pending_bytes_counts_until_the_mark_comes_back_played_or_cleared() -> None:
    ledger = PlaybackLedger(piece_bytes=4)
    marks = _marks(ledger.agent_media("s", 1, bytes(6)))
    assert ledger.pending_bytes == 6 and not ledger.idle
    ledger.twilio_mark(marks[0])
    assert ledger.pending_bytes == 2
    ledger.clear()
    assert ledger.pending_bytes == 2 and not ledger.idle  # the echo has not arrived yet
    ledger.twilio_mark(marks[1])
    assert ledger.pending_bytes == 0 and ledger.idle


def test_stats_is_a_snapshot() -> None:
    ledger = PlaybackLedger()
    snapshot = ledger.stats
    ledger.twilio_mark("x")
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
    units: range
    answer: int  # how many Speakr clears had happened when it arrived
    statuses: int = 0


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

    def __post_init__(self) -> None:
        self.ledger = PlaybackLedger(piece_bytes=self.piece_bytes, max_buffered_bytes=self.max_buffered_bytes)

    # -- plumbing

    def send(self, actions: list[Action]) -> None:
        for action in actions:
            assert not isinstance(action, SendStatus), "statuses only come from marks"
            if isinstance(action, SendMedia):
                for i in range(0, len(action.payload), UNIT):
                    unit = _unit(action.payload, i)
                    # Nothing of an old answer after a clear.
                    assert self.messages[self.owner[unit]].answer == self.clears
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
            for action in self.ledger.twilio_mark(name):
                assert isinstance(action, SendStatus)
                self.on_status(action)

    def on_status(self, status: SendStatus) -> None:
        index = status.sequence_id
        msg = self.messages[index]
        assert status.session_id == msg.session_id
        assert msg.statuses == 0, "a status is sent once"
        assert msg.answer == self.clears, "no status for a message dropped by a clear"
        played = set(self.twilio.played)
        assert all(u in played for u in msg.units), "status only for audio played in full"
        assert index > self.last_status, "statuses in message order"
        self.last_status = index
        msg.statuses += 1

    # -- events

    def media(self, units: int) -> None:
        start = len(self.owner)
        index = len(self.messages)
        self.messages.append(_Msg(f"answer-{self.clears}", range(start, start + units), self.clears))
        self.owner.extend([index] * units)
        audio = b"".join(u.to_bytes(UNIT, "big") for u in range(start, start + units))
        if self.ledger.state is LedgerState.PAUSED and units:
            self.held.append(index)
        self.send(self.ledger.agent_media(f"answer-{self.clears}", index, audio))

    def play(self, units: int) -> None:
        already = len(self.twilio.played)
        self.twilio.play(units)
        self.played_since_sent.update(self.twilio.played[already:])

    def pause(self) -> None:
        if self.ledger.state is LedgerState.PLAYING:
            in_flight = self.twilio.played_marks_in_flight_bytes()
            if self.instant:
                assert in_flight == 0
            # What a continue may repeat: the piece Twilio was playing, plus pieces whose marks are in flight.
            self.pause_bound = self.piece_bytes + in_flight
            self.send(self.ledger.pause())
        else:
            assert self.ledger.pause() == []

    def resume(self) -> None:
        if self.ledger.state is LedgerState.PAUSED:
            actions = self.ledger.resume()
            resent = [_unit(p, i) for p in _media(actions) for i in range(0, len(p), UNIT)]
            # The replay this continue causes: resent units the caller heard since they were last sent.
            replay_units = sum(1 for u in resent if u in self.played_since_sent)
            # Held audio dropped by the memory bound leaves no hole: what is sent is a prefix of the held.
            sent_held = [i for i in self.held if self.messages[i].units[0] in resent]
            assert sent_held == self.held[: len(sent_held)]
            self.held.clear()
            assert replay_units * UNIT <= self.pause_bound
            self.replay_units_total += replay_units
            self.send(actions)
        else:
            assert self.ledger.resume() == []

    def clear(self) -> None:
        self.clears += 1
        self.held.clear()
        actions = self.ledger.clear()
        assert actions == [SendClear()]
        self.send(actions)

    def step(self, kind: str, arg: int) -> None:
        if kind == "media":
            self.media(arg)
        elif kind == "play":
            self.play(arg)
            if self.instant:
                self.deliver(len(self.twilio.to_bridge))
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
            assert self.ledger.twilio_mark(f"bogus-{arg}") == []
        self.check_invariants()

    def check_invariants(self) -> None:
        pending = sum(self.twilio.piece_bytes[n] for n in self.outstanding)
        assert self.ledger.pending_bytes == pending
        assert self.ledger.held_bytes <= self.max_buffered_bytes

    def drain(self) -> None:
        """Speakr continues if paused; Twilio plays everything and every mark comes back."""
        self.resume()
        for _ in range(3):
            self.play(len(self.owner) + 1)
            self.deliver(len(self.twilio.to_bridge))
        assert not self.twilio.buffer and not self.twilio.to_bridge
        assert self.ledger.idle and self.ledger.pending_bytes == 0 and self.ledger.held_bytes == 0
        self.check_invariants()


def _check_outcome(h: Harness) -> None:
    stats = h.ledger.stats
    assert stats.statuses_sent == sum(m.statuses for m in h.messages)
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
    wanted = [u for m in survivors for u in m.units]
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


def test_tail_is_played_and_awaited_but_never_owes_a_status():
    ledger = PlaybackLedger(piece_bytes=800)
    sent = ledger.agent_media("s", 1, b"\x01" * 800)
    tail = ledger.tail(b"\x02" * 18)
    assert [type(a) for a in tail] == [SendMedia, SendMark]
    assert ledger.pending_bytes == 818 and not ledger.idle
    marks = [a.name for a in sent + tail if isinstance(a, SendMark)]
    assert ledger.twilio_mark(marks[0]) == [SendStatus("s", 1)]
    assert ledger.twilio_mark(marks[1]) == []  # the tail played: no status for it
    assert ledger.idle
    assert ledger.tail(b"") == []
