"""The echo agent's energy VAD and turn-taking state machine, on synthesised audio and the bundled caller."""

from __future__ import annotations

import wave
from importlib import resources

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._vad import (
    BARGE_IN_MS,
    HANGOVER_MS,
    ONSET_FRAMES,
    UTTERANCE_TAIL_MS,
    BackChannel,
    BargeIn,
    Interruption,
    LikelyEnd,
    Resumed,
    SpeechStart,
    TurnDetector,
    TurnEvent,
    TurnState,
    Utterance,
    VadSettings,
    frame_levels_dbfs,
    threshold_dbfs,
)

RATE = 8000
ONSET_S = ONSET_FRAMES * 0.010


def tone(seconds: float, level_dbfs: float = -20.0, freq: float = 440.0) -> bytes:
    """A sine whose RMS level is ``level_dbfs``."""
    n = round(seconds * RATE)
    amplitude = 32768 * 10 ** (level_dbfs / 20) * np.sqrt(2)
    x = amplitude * np.sin(2 * np.pi * freq * np.arange(n) / RATE)
    return np.round(x).astype("<i2").tobytes()


def noise(seconds: float, level_dbfs: float = -25.0, seed: int = 1) -> bytes:
    """Gaussian noise whose RMS level is about ``level_dbfs`` (clipped to int16)."""
    n = round(seconds * RATE)
    x = np.random.default_rng(seed).standard_normal(n) * 32768 * 10 ** (level_dbfs / 20)
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * RATE))


def run(
    detector: TurnDetector, pcm: bytes, *, chunk: int = 512, speaking: tuple[float, float] | None = None
) -> list[TurnEvent]:
    """Feeds ``pcm`` in chunks; the agent is speaking while the stream time is inside ``speaking``."""
    events: list[TurnEvent] = []
    for offset in range(0, len(pcm), chunk):
        now = detector.time_s
        agent_speaking = speaking is not None and speaking[0] <= now < speaking[1]
        events += detector.feed(pcm[offset : offset + chunk], agent_speaking=agent_speaking)
    return events


def kinds(events: list[TurnEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------------------------------------ threshold mapping


def test_threshold_maps_linearly_from_minus_60_dbfs_to_full_scale() -> None:
    assert threshold_dbfs(0.0) == -60.0
    assert threshold_dbfs(1.0) == 0.0
    assert threshold_dbfs(0.5) == -30.0
    assert threshold_dbfs(0.18) == pytest.approx(-49.2)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), "0.5", None])
def test_threshold_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="threshold"):
        threshold_dbfs(bad)  # type: ignore[arg-type]


def test_frame_levels_measure_rms_in_dbfs() -> None:
    levels = frame_levels_dbfs(tone(0.1, -30.0, freq=400.0))  # 400 Hz: whole periods in each 10 ms frame
    assert len(levels) == 10
    assert levels == pytest.approx(-30.0, abs=0.05)
    assert np.all(np.isneginf(frame_levels_dbfs(silence(0.05))))


@pytest.mark.parametrize(
    ("threshold", "level", "heard"),
    [
        (0.18, -45.0, True),  # threshold at -49.2 dBFS
        (0.18, -53.0, False),
        (0.5, -35.0, False),  # threshold at -30 dBFS
        (0.5, -25.0, True),
        (0.0, -58.0, True),  # threshold at -60 dBFS
    ],
)
def test_speech_is_heard_only_above_the_mapped_threshold(threshold: float, level: float, heard: bool) -> None:
    detector = TurnDetector(VadSettings(threshold=threshold, silence_ms=300))
    events = run(detector, silence(0.5) + tone(0.8, level) + silence(1.0))
    assert kinds(events) == (["SpeechStart", "Utterance"] if heard else [])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="silence_ms"):
        VadSettings(silence_ms=0)
    with pytest.raises(ValueError, match="prefix_padding_s"):
        VadSettings(prefix_padding_s=6.0)
    with pytest.raises(ValueError, match="threshold"):
        VadSettings(threshold=2.0)


# ------------------------------------------------------------------------------------------ turn timing


@pytest.mark.parametrize("silence_ms", [300, 1000, 1700])
def test_turn_ends_silence_duration_after_the_last_loud_frame(silence_ms: int) -> None:
    detector = TurnDetector(VadSettings(silence_ms=silence_ms, prefix_padding_s=0.3))
    events = run(detector, silence(1.0) + noise(1.2) + silence(3.0))
    start, utterance = events
    assert isinstance(start, SpeechStart) and isinstance(utterance, Utterance)
    assert start.onset_s == pytest.approx(1.0, abs=0.011)
    assert start.time_s == pytest.approx(1.0 + ONSET_S, abs=0.011)
    assert utterance.time_s == pytest.approx(2.2 + silence_ms / 1000, abs=0.011)
    assert detector.state is TurnState.LISTENING


def test_pauses_shorter_than_silence_duration_stay_in_one_utterance() -> None:
    detector = TurnDetector(VadSettings(silence_ms=600))
    events = run(detector, silence(0.5) + noise(0.6) + silence(0.5) + noise(0.6, seed=2) + silence(1.0))
    assert kinds(events) == ["SpeechStart", "Utterance"]
    utterance = events[1]
    assert isinstance(utterance, Utterance)
    assert utterance.end_s == pytest.approx(2.2 + UTTERANCE_TAIL_MS / 1000, abs=0.011)


def test_utterance_is_the_audio_from_prefix_padding_before_onset_to_the_tail() -> None:
    # A quiet ramp before the onset (below threshold) proves the prefix holds the real preceding samples.
    quiet = (np.arange(8000) % 50 - 25).astype("<i2").tobytes()  # ~ -66 dBFS
    signal = silence(0.5) + quiet + noise(0.9) + silence(1.0)
    detector = TurnDetector(VadSettings(silence_ms=500, prefix_padding_s=0.4))
    *_, utterance = run(detector, signal)
    assert isinstance(utterance, Utterance)
    assert utterance.onset_s == pytest.approx(1.5, abs=0.011)
    assert utterance.start_s == pytest.approx(1.1, abs=0.011)
    start = round(utterance.start_s * RATE) * 2
    end = round(utterance.end_s * RATE) * 2
    assert utterance.pcm == signal[start:end]
    assert utterance.end_s == pytest.approx(2.4 + UTTERANCE_TAIL_MS / 1000, abs=0.011)
    assert not utterance.truncated


def test_prefix_padding_stops_at_the_start_of_the_stream() -> None:
    detector = TurnDetector(VadSettings(silence_ms=300, prefix_padding_s=0.7))
    *_, utterance = run(detector, silence(0.2) + noise(0.5) + silence(0.5))
    assert isinstance(utterance, Utterance)
    assert utterance.start_s == 0.0
    assert len(utterance.pcm) == round(utterance.end_s * RATE) * 2


@pytest.mark.parametrize("click_ms", [1, 5, 10, 20])
@pytest.mark.parametrize("phase_samples", [0, 37, 79])
def test_clicks_are_not_speech(click_ms: int, phase_samples: int) -> None:
    click = np.full(click_ms * 8, 30000, dtype="<i2").tobytes()
    gap = silence(0.3)
    signal = bytes(2 * phase_samples) + (click + gap) * 10
    detector = TurnDetector(VadSettings(threshold=0.0, silence_ms=200))
    assert run(detector, signal) == []


def test_long_speech_is_cut_at_the_maximum_and_the_turn_still_waits_for_silence() -> None:
    detector = TurnDetector(VadSettings(silence_ms=500, prefix_padding_s=0.0, max_utterance_s=2.0))
    events = run(detector, noise(3.0) + silence(1.0))
    assert kinds(events) == ["SpeechStart", "Utterance"]
    utterance = events[1]
    assert isinstance(utterance, Utterance)
    assert utterance.truncated
    assert len(utterance.pcm) == 2 * RATE * 2
    assert utterance.time_s == pytest.approx(3.5, abs=0.011)
    assert detector.dropped_frames > 0


# ------------------------------------------------------------------------------------------ barge-in


def test_short_speech_over_the_agent_is_a_back_channel() -> None:
    detector = TurnDetector(VadSettings(silence_ms=800))
    events = run(detector, silence(1.0) + noise(0.4) + silence(2.0), speaking=(0.0, 10.0))
    assert kinds(events) == ["BargeIn", "BackChannel"]
    barge_in, back_channel = events
    assert isinstance(barge_in, BargeIn) and isinstance(back_channel, BackChannel)
    assert barge_in.time_s == pytest.approx(1.0 + ONSET_S, abs=0.011)
    assert back_channel.time_s == pytest.approx(1.4 + HANGOVER_MS / 1000, abs=0.011)
    assert back_channel.speech_s == pytest.approx(0.4, abs=0.011)
    assert detector.state is TurnState.LISTENING


def test_long_speech_over_the_agent_is_an_interruption_and_the_next_utterance() -> None:
    detector = TurnDetector(VadSettings(silence_ms=500, prefix_padding_s=0.2))
    # 300 ms, a 150 ms gap (shorter than the hang-over), then 800 ms more: one stretch of speech.
    speech = noise(0.3) + silence(0.15) + noise(0.8, seed=3)
    events = run(detector, silence(1.0) + speech + silence(1.0), speaking=(0.0, 1.2))
    assert kinds(events) == ["BargeIn", "Interruption", "Utterance"]
    barge_in, interruption, utterance = events
    assert isinstance(interruption, Interruption) and isinstance(utterance, Utterance)
    assert interruption.time_s == pytest.approx(1.0 + BARGE_IN_MS / 1000, abs=0.011)
    assert utterance.onset_s == pytest.approx(1.0, abs=0.011)
    assert utterance.start_s == pytest.approx(0.8, abs=0.011)
    assert utterance.time_s == pytest.approx(2.25 + 0.5, abs=0.011)


def test_speech_when_the_agent_is_silent_never_pauses_it() -> None:
    detector = TurnDetector(VadSettings(silence_ms=500))
    events = run(detector, silence(0.5) + noise(2.0) + silence(1.0), speaking=None)
    assert kinds(events) == ["SpeechStart", "Utterance"]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=8))
def test_decisions_do_not_depend_on_how_the_audio_is_chunked(sizes: list[int]) -> None:
    signal = silence(0.3) + noise(0.5) + silence(0.4) + noise(1.0, seed=5) + silence(0.7)
    reference = run(TurnDetector(VadSettings(silence_ms=500)), signal, speaking=(0.0, 1.3))
    detector = TurnDetector(VadSettings(silence_ms=500))
    events: list[TurnEvent] = []
    offset, i = 0, 0
    while offset < len(signal):
        piece = signal[offset : offset + sizes[i % len(sizes)]]
        agent_speaking = detector.time_s < 1.3
        events += detector.feed(piece, agent_speaking=agent_speaking)
        offset += len(piece)
        i += 1
    # Chunks decide when `agent_speaking` is sampled; with 10 ms frames it is the same around 1.3 s.
    assert [(type(e), e.time_s) for e in events] == [(type(e), e.time_s) for e in reference]
    assert kinds(reference) == ["BargeIn", "BackChannel", "BargeIn", "Interruption", "Utterance"]


# ------------------------------------------------------------------------------------------ bundled caller


def test_bundled_caller_track_gives_the_documented_turns_at_the_documented_times() -> None:
    """AUDIO-LICENSE.txt: speech at 4.8 s, a back-channel at 10.8 s, an interruption at 12.3 s.

    The agent is taken to speak from 0.2 s after the first turn ends until it is interrupted. The ends of
    speech (8.51, 11.24, 14.69 s) were measured on the file at -49.2 dBFS in 10 ms frames.
    """
    data = resources.files("bridge").joinpath("data/demo_caller.wav").read_bytes()
    import io

    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        pcm = wav.readframes(wav.getnframes())
    detector = TurnDetector(VadSettings(threshold=0.18, silence_ms=1000, prefix_padding_s=0.7))
    events: list[TurnEvent] = []
    speaking_from: float | None = None
    interrupted = False
    for offset in range(0, len(pcm), 512):
        now = detector.time_s
        speaking = speaking_from is not None and now >= speaking_from and not interrupted
        for event in detector.feed(pcm[offset : offset + 512], agent_speaking=speaking):
            events.append(event)
            if isinstance(event, Utterance) and speaking_from is None:
                speaking_from = event.time_s + 0.2
            interrupted = interrupted or isinstance(event, Interruption)
    expected = [
        (SpeechStart, 4.8 + ONSET_S),
        (Utterance, 8.51 + 1.0),
        (BargeIn, 10.8 + ONSET_S),
        (BackChannel, 11.24 + HANGOVER_MS / 1000),
        (BargeIn, 12.3 + ONSET_S),
        (Interruption, 12.3 + BARGE_IN_MS / 1000),
        (Utterance, 14.69 + 1.0),
    ]
    assert [type(e) for e in events] == [kind for kind, _ in expected]
    for event, (_, when) in zip(events, expected, strict=True):
        assert event.time_s == pytest.approx(when, abs=0.1), event
    first, last = events[1], events[6]
    assert isinstance(first, Utterance) and isinstance(last, Utterance)
    assert first.start_s == pytest.approx(4.8 - 0.7, abs=0.1)
    assert last.start_s == pytest.approx(12.3 - 0.7, abs=0.1)  # the interruption's speech, with its prefix


# ------------------------------------------------------------------------------------ early end of turn


def test_a_short_pause_is_a_likely_end_then_resumed_and_the_final_audio_equals_the_likely_one() -> None:
    detector = TurnDetector(VadSettings(silence_ms=800, prefix_padding_s=0.2, early_silence_ms=300))
    events = run(detector, silence(0.5) + noise(0.6) + silence(0.4) + noise(0.6, seed=2) + silence(1.5))
    assert kinds(events) == ["SpeechStart", "LikelyEnd", "Resumed", "LikelyEnd", "Utterance"]
    first, resumed, likely, final = events[1], events[2], events[3], events[4]
    assert isinstance(first, LikelyEnd) and isinstance(resumed, Resumed) and isinstance(likely, LikelyEnd)
    assert first.time_s == pytest.approx(1.1 + 0.3, abs=0.011)
    assert resumed.time_s == pytest.approx(1.5 + 0.01, abs=0.011)
    assert likely.time_s == pytest.approx(2.1 + 0.3, abs=0.011)
    assert isinstance(final, Utterance) and final.time_s == pytest.approx(2.1 + 0.8, abs=0.011)
    assert likely.utterance.pcm == final.pcm and likely.utterance.end_s == final.end_s


def test_without_early_silence_there_are_no_early_events() -> None:
    detector = TurnDetector(VadSettings(silence_ms=800))
    events = run(detector, silence(0.5) + noise(0.6) + silence(0.4) + noise(0.6, seed=2) + silence(1.5))
    assert kinds(events) == ["SpeechStart", "Utterance"]


@pytest.mark.parametrize("early", [50, 800, 900])
def test_early_silence_out_of_range_is_refused(early: int) -> None:
    with pytest.raises(ValueError):
        VadSettings(silence_ms=800, early_silence_ms=early)
