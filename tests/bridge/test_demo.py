"""``speakr-bridge demo``: one whole loopback call, run in-process faster than real time, and its recording.

The demo's core (:func:`bridge._demo.run_demo`) runs the real server (Hypercorn on 127.0.0.1, port 0), the
built-in echo agent and the emulated Twilio caller. :data:`SPEED` is the phone clock rate used here: the
agent's VAD runs on audio time and its speech pace follows the speed, so the bundled sample's pause→continue
and pause→clear hold there. They held up to 10x on an idle 2-core machine; at 5x with both cores busy the
caller's 4 ms ticks ran up to 200 ms late, at 4x about 40 ms: 4x it is. Phone-time windows below widen by
``speed * max_tick_lateness_s``, the caller's own bound on its clock's error.
"""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import trio

import codec
from bridge._demo import DEFAULT_OUTPUT, run_demo
from bridge._simulate import InputAudioError, default_hangup_s, load_input
from bridge._twilio import SAMPLE_RATE
from bridge.agents.speakr._local_agent import greeting_pcm

SPEED = 4.0
#: The bundled sample's timeline (bridge/data/AUDIO-LICENSE.txt), seconds of phone time.
FIRST_WORDS_S = 4.8
INTERRUPTION_S = 12.3


def read_stereo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, SAMPLE_RATE)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0].astype(np.float64), frames[:, 1].astype(np.float64)


def best_match(signal: np.ndarray, template: np.ndarray, lo_s: float, hi_s: float) -> tuple[float, float]:
    """Best normalised cross-correlation of ``template`` starting in ``signal[lo_s .. hi_s]``: (ncc, at s)."""
    lo, hi = int(lo_s * SAMPLE_RATE), int(hi_s * SAMPLE_RATE)
    window = signal[lo : hi + len(template)]
    n = len(template)
    corr = np.correlate(window, template, mode="valid")
    energy = np.sqrt(np.convolve(window**2, np.ones(n), mode="valid"))
    ncc = corr / (energy * np.linalg.norm(template) + 1e-9)
    i = int(np.argmax(ncc))
    return float(ncc[i]), (lo + i) / SAMPLE_RATE


def ulaw_round_trip(pcm: bytes) -> np.ndarray:
    return np.frombuffer(codec.ulaw_decode(codec.ulaw_encode(pcm)), dtype="<i2").astype(np.float64)


async def test_bundled_demo_call_is_healthy_recorded_aligned_and_summarised(tmp_path: Path) -> None:
    output = tmp_path / "call.wav"
    progress = io.StringIO()
    with trio.fail_after(30):
        result = await run_demo(output_path=output, speed=SPEED, progress=progress)

    assert result.healthy, result.problems
    # The bundled sample's back-channel and interruption, as the bridge received them.
    assert result.barge_in == {"pause": 2, "continue": 1, "clear": 1}
    assert result.agent is not None and (
        result.agent.pauses,
        result.agent.continues,
        result.agent.clears,
    ) == (
        2,
        1,
        1,
    )
    hangup_s = default_hangup_s(load_input(None))
    assert result.outcome == "hung_up" and result.duration_s == pytest.approx(hangup_s)
    assert "twilio_stop" in result.bridge_end_reasons
    assert result.protocol_errors == 0

    left, right = read_stereo(output)
    # Left: exactly what the caller said, μ-law coded as on the line, then silence until the hang-up.
    said = ulaw_round_trip(load_input(None).pcm)
    assert len(left) == pytest.approx(hangup_s * SAMPLE_RATE, abs=160)
    assert np.array_equal(left[: len(said)], said) and not left[len(said) :].any()
    # Right: the greeting from the first moments of the call, as the bridge's downlink codes it.
    encoder = codec.DownlinkEncoder()
    greeting = np.frombuffer(
        codec.ulaw_decode(encoder.process(greeting_pcm()) + encoder.flush()), dtype="<i2"
    ).astype(np.float64)
    ncc, at_s = best_match(right, greeting, 0.0, 0.5)
    assert ncc > 0.99 and at_s < 0.2
    # ... then the echo of the caller's first words (they start at 4.8 s; the agent answers after 1 s of
    # silence), time-aligned with the caller's track: the same speech, later, on the other channel.
    first_words = left[int(FIRST_WORDS_S * SAMPLE_RATE) : int((FIRST_WORDS_S + 0.5) * SAMPLE_RATE)]
    ncc, echo_s = best_match(right, first_words, 9.0, 11.0)
    assert ncc > 0.9, ncc
    assert not right[int(FIRST_WORDS_S * SAMPLE_RATE) : int(8.5 * SAMPLE_RATE)].any(), (
        "agent silent while caller speaks"
    )
    # The interruption: the bridge cleared the phone's queue, the rest of the first echo never played (silence
    # while the caller speaks), and the echo of the interrupting words follows.
    # (Twilio gets a clear at each pause, and one at the agent's clear.)
    clears = result.record.events_of("clear_received")
    # The back-channel at 10.8 s, the interruption at 12.3 s, its clear once it lasted 0.7 s (VAD stream time;
    # the phone sees each a little later: the bridge's and agent's latency, times SPEED).
    slack_s = 0.5 + SPEED * result.max_tick_lateness_s
    assert len(clears) == 3, clears
    for clear, decided_s in zip(clears, (10.8, INTERRUPTION_S, INTERRUPTION_S + 0.7), strict=True):
        assert decided_s <= clear.phone_s < decided_s + slack_s, (clear, decided_s, slack_s)
    assert clears[1].size > 0, "the audio queued at the phone was dropped at the interruption"
    assert not right[int((clears[1].phone_s + 0.05) * SAMPLE_RATE) : int(15.5 * SAMPLE_RATE)].any()
    interrupting = left[int(INTERRUPTION_S * SAMPLE_RATE) : int((INTERRUPTION_S + 0.5) * SAMPLE_RATE)]
    ncc, last_echo_s = best_match(right, interrupting, 15.5, 18.0)
    assert ncc > 0.9, ncc

    # The summary's figures.
    assert result.frames["twilio_in"] == round(hangup_s / 0.02)
    assert result.frames["speakr_out"] == math.ceil(result.frames["twilio_in"] * 320 / 512)
    assert result.frames["speakr_in"] > 0 and result.frames["twilio_out"] > 0
    assert result.marks["sent"] == result.marks["echoed"] > 0
    assert len(result.uplink_hop_s) > 600 and len(result.downlink_hop_s) == result.frames["speakr_in"]
    assert result.start_to_ready_s is not None and 0 < result.start_to_ready_s < 1.0
    assert result.codec_implementation == codec.IMPLEMENTATION
    assert result.heard_s > 5.0 and result.first_audio_s is not None and result.first_audio_s < 0.2
    summary = result.summary()
    for needle in (
        "frames",
        "pause 2, continue 1, clear 1",
        "uplink hop",
        "downlink hop",
        "p50",
        "p99",
        "start → ready",
        f"codec            {codec.IMPLEMENTATION}",
        str(output),
        "healthy",
    ):
        assert needle in summary, needle
    # Progress went to its stream while the call ran, barge-in events included.
    shown = progress.getvalue()
    assert "caller→bridge" in shown and "agent speaking" in shown
    assert [word for word in ("pause", "continue", "pause", "clear") if word in shown] == [
        "pause",
        "continue",
        "pause",
        "clear",
    ]


def speech(seconds: float, level_dbfs: float, seed: int, rate: int) -> np.ndarray:
    """Speech-like: three partials in the telephone band, amplitude-modulated at a syllable rate."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(300, 2500, size=3))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t))
    return np.asarray(x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (level_dbfs / 20))


async def test_44k_stereo_input_is_mixed_down_resampled_and_answered(tmp_path: Path) -> None:
    rate = 44100
    # 5 s of quiet (the greeting plays), 1.5 s of speech, 0.5 s of quiet; the channels differ.
    words = speech(1.5, -20.0, seed=3, rate=rate)
    left_in = np.concatenate([np.zeros(5 * rate), words, np.zeros(rate // 2)])
    right_in = np.concatenate([np.zeros(5 * rate), 0.5 * words, np.zeros(rate // 2)])
    stereo = np.clip(np.round(np.stack([left_in, right_in], axis=1)), -32768, 32767).astype("<i2")
    source = tmp_path / "caller-44k-stereo.wav"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(stereo.tobytes())
    output = tmp_path / "call.wav"

    with trio.fail_after(20):
        result = await run_demo(input_path=source, output_path=output, speed=SPEED)

    assert result.healthy, result.problems
    assert (result.input.source_rate, result.input.source_channels, result.input.bundled) == (rate, 2, False)
    assert (
        result.agent is not None
        and result.agent.turns == 1
        and result.barge_in
        == {
            "pause": 0,
            "continue": 0,
            "clear": 0,
        }
    )
    # The caller's channel is the mix-down (mean of the channels), resampled to 8 kHz, μ-law coded.
    mixed = np.round(stereo.astype(np.float64).mean(axis=1)).astype("<i2").tobytes()
    resampler = codec.Resampler(rate, SAMPLE_RATE)
    expected = ulaw_round_trip(resampler.process(mixed) + resampler.flush())
    left, right = read_stereo(output)
    assert len(expected) == math.ceil(len(stereo) * SAMPLE_RATE / rate)
    assert np.array_equal(left[: len(expected)], expected) and not left[len(expected) :].any()
    # And the agent said it back after the caller's turn ended (1 s of silence after 6.5 s).
    said = left[int(5.0 * SAMPLE_RATE) : int(6.0 * SAMPLE_RATE)]
    ncc, echo_s = best_match(right, said, 6.5, 10.0)
    assert ncc > 0.9 and 7.5 <= echo_s <= 8.5 + SPEED * result.max_tick_lateness_s, (ncc, echo_s)
    assert "44100 Hz, 2 ch" in result.summary()


async def test_demo_refuses_unusable_input_before_starting_anything(tmp_path: Path) -> None:
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes(800))
    odd_rate = tmp_path / "odd-rate.wav"
    with wave.open(str(odd_rate), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(12345)
        wav.writeframes(bytes(2000))
    not_wav = tmp_path / "notes.txt"
    not_wav.write_text("hello")
    cases = [
        (eight_bit, "only 16-bit PCM"),
        (odd_rate, "12345 Hz"),
        (not_wav, "not a WAV file"),
        (tmp_path / "missing.wav", "cannot read"),
    ]
    with trio.fail_after(5):
        for path, message in cases:
            with pytest.raises(InputAudioError, match=message):
                await run_demo(input_path=path, output_path=tmp_path / DEFAULT_OUTPUT, speed=SPEED)
    assert not (tmp_path / DEFAULT_OUTPUT).exists()


async def test_agent_speech_reaches_the_phone_bit_exact_at_real_time(tmp_path: Path) -> None:
    """Faster demos hide wall-clock effects (the agent's messages come closer together): one at 1x."""
    quiet = tmp_path / "quiet.wav"
    with wave.open(str(quiet), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(bytes(2 * SAMPLE_RATE))  # 1 s of silence: the caller listens, hangs up at 3 s
    output = tmp_path / "call.wav"
    with trio.fail_after(15):
        result = await run_demo(input_path=quiet, output_path=output, speed=1.0)
    assert result.outcome == "hung_up" and result.first_audio_s is not None
    _, right = read_stereo(output)
    encoder = codec.DownlinkEncoder()
    greeting = np.frombuffer(
        codec.ulaw_decode(encoder.process(greeting_pcm()) + encoder.flush()), dtype="<i2"
    ).astype(np.float64)
    start = int(np.flatnonzero(right)[0]) - int(np.flatnonzero(greeting)[0])
    heard = right[start : start + int(2.5 * SAMPLE_RATE)]
    assert np.array_equal(heard, greeting[: len(heard)])
