"""The uplink framer: exact 512-byte frames, every sample once, in order; a bounded preroll before ready."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._uplink import FRAME_BYTES, UplinkFramer


def _audio(n_bytes: int, seed: int = 0) -> bytes:
    """Distinct-looking PCM so that a reordering or a gap shows in a comparison."""
    return bytes((seed + i * 7 + i // 251) % 256 for i in range(n_bytes))


def test_frame_size_is_256_samples() -> None:
    assert FRAME_BYTES == 512


def test_twilio_frames_are_reframed_without_padding_or_gaps() -> None:
    framer = UplinkFramer()
    assert framer.start() == []
    audio = _audio(320 * 8)  # 8 Twilio frames = 160 ms = 2560 bytes = 5 Speakr frames exactly
    out: list[bytes] = []
    for i in range(0, len(audio), 320):
        out += framer.feed(audio[i : i + 320])
    assert [len(f) for f in out] == [512] * 5
    assert b"".join(out) == audio
    assert framer.buffered_bytes == 0
    assert framer.finish() is None


def test_frames_come_out_as_soon_as_complete() -> None:
    framer = UplinkFramer()
    framer.start()
    assert framer.feed(_audio(320)) == []
    frames = framer.feed(_audio(320, 1))
    assert len(frames) == 1 and len(frames[0]) == 512
    assert framer.buffered_bytes == 128


def test_before_ready_nothing_goes_out_and_start_flushes_the_preroll() -> None:
    framer = UplinkFramer()
    audio = _audio(320 * 10)
    for i in range(0, len(audio), 320):
        assert framer.feed(audio[i : i + 320]) == []
    assert not framer.ready
    frames = framer.start()
    assert framer.ready
    assert b"".join(frames) == audio[: len(frames) * 512]
    assert len(frames) == len(audio) // 512
    assert framer.buffered_bytes == len(audio) % 512
    assert framer.dropped_bytes == 0


def test_preroll_keeps_the_most_recent_second_and_counts_the_rest() -> None:
    framer = UplinkFramer()
    audio = _audio(320 * 60)  # 1.2 s
    for i in range(0, len(audio), 320):
        framer.feed(audio[i : i + 320])
    assert framer.buffered_bytes == 16000
    assert framer.dropped_bytes == len(audio) - 16000
    frames = framer.start()
    rest = framer.finish()
    assert rest is not None
    kept = b"".join(frames) + rest
    assert kept[:16000] == audio[-16000:]
    assert kept[16000:] == bytes(len(kept) - 16000)


def test_finish_pads_only_the_last_frame_with_zero_samples() -> None:
    framer = UplinkFramer()
    framer.start()
    assert framer.feed(_audio(700)) != []
    last = framer.finish()
    assert last == _audio(700)[512:] + bytes(512 - 188)
    assert framer.finish() is None


def test_finish_before_ready_sends_nothing() -> None:
    framer = UplinkFramer()
    framer.feed(_audio(320))
    assert framer.finish() is None


def test_odd_byte_count_is_a_caller_bug_and_changes_nothing() -> None:
    framer = UplinkFramer()
    framer.start()
    framer.feed(_audio(10))
    with pytest.raises(ValueError, match="even"):
        framer.feed(b"\x01\x02\x03")
    assert framer.buffered_bytes == 10


@pytest.mark.parametrize("preroll", [-2, 3])
def test_bad_preroll_is_refused(preroll: int) -> None:
    with pytest.raises(ValueError):
        UplinkFramer(preroll_bytes=preroll)


def test_second_start_is_harmless() -> None:
    framer = UplinkFramer()
    framer.feed(_audio(600))
    assert len(framer.start()) == 1
    assert framer.start() == []
    assert framer.buffered_bytes == 88


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(st.integers(0, 400).map(lambda n: n * 2), max_size=30),
    after=st.lists(st.integers(0, 700).map(lambda n: n * 2), max_size=30),
    preroll_samples=st.integers(0, 3000),
    finish=st.booleans(),
)
def test_any_chunking_gives_exact_frames_of_exactly_the_input(
    before: list[int], after: list[int], preroll_samples: int, finish: bool
) -> None:
    preroll = preroll_samples * 2
    framer = UplinkFramer(preroll_bytes=preroll)
    fed = bytearray()
    out: list[bytes] = []
    for i, n in enumerate(before):
        chunk = _audio(n, seed=len(fed) + i)
        fed += chunk
        assert framer.feed(chunk) == []
    pre_ready = len(fed)
    dropped = max(0, pre_ready - preroll)
    assert framer.dropped_bytes == dropped
    assert framer.buffered_bytes == pre_ready - dropped
    out += framer.start()
    for i, n in enumerate(after):
        chunk = _audio(n, seed=len(fed) + 3 * i)
        fed += chunk
        out += framer.feed(chunk)
    assert all(len(frame) == FRAME_BYTES for frame in out)
    expected = bytes(fed[dropped:])  # exactly the oldest bytes were dropped
    sent = b"".join(out)
    assert sent == expected[: len(sent)]
    assert len(expected) - len(sent) == framer.buffered_bytes < FRAME_BYTES
    assert framer.dropped_bytes == dropped
    if finish:
        last = framer.finish()
        tail = expected[len(sent) :]
        if tail:
            assert last == tail + bytes(FRAME_BYTES - len(tail))
        else:
            assert last is None
        assert framer.buffered_bytes == 0
