"""The cascade agent leg end to end: a real bridge, the Twilio caller emulator and the cascade emulator.

Every test runs a real Hypercorn server (``start_bridge`` with ``AGENT=cascade``), a :class:`CascadeServer`
on 127.0.0.1 with scripted transcripts, replies, pacing and faults, and a :class:`TwilioCaller` speaking a
scripted PCM track in real time (``speed=1``: the cascade's stage latencies are wall-clock). What the tests
read: what the phone received and heard, the requests the emulator recorded, the bridge's metrics, the call's
record (``GET /calls/{sid}``) and the leg's per-turn timings (:data:`RECENT_CALLS`).

Timing bars (pipelining, barge-in within a frame) print their figures with ``-s``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

import codec
from bridge._secret import Secret
from bridge._vad import ONSET_FRAMES
from bridge.agents.cascade import (
    DEFAULT_API_KEY,
    DEMO_TRANSCRIPTS,
    CascadeServer,
    CascadeSettings,
    ChatReply,
    SpokenSentence,
    demo_caller_audio,
    demo_server,
    demo_settings,
    heard_text,
    speech_ms,
    split_sentences,
    synthesize,
    tokenize,
    turn_report,
)
from bridge.agents.cascade._leg import (
    APOLOGY,
    CHECKIN,
    IDLE_GOODBYE,
    NOT_HEARD,
    RECENT_CALLS,
    CascadeCallStats,
)
from bridge.emulators import CallRecord, TwilioCaller
from bridge.emulators._phone import SILENCE_ULAW

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bridge: the end-to-end helpers
from e2e_helpers import RunningBridge, best_alignment, start_bridge  # noqa: E402

TOKEN = "api-token-cascade-0123456789"
LIMIT_S = 40.0
RATE = 8000
#: The caller's end of turn: our VAD's silence (the configuration's default).
SILENCE_MS = 1000


def sid(n: int) -> str:
    return "CA" + f"{n:032x}"


def speech(seconds: float, seed: int) -> bytes:
    """Caller speech: band-limited noise with a syllable envelope, every 10 ms frame above the threshold."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(freqs < 300) | (freqs > 3000)] = 0
    noise = np.fft.irfft(spectrum, n)
    noise /= np.max(np.abs(noise))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / RATE)
    return (5000 * noise * envelope).astype("<i2").tobytes()


def quiet(seconds: float) -> bytes:
    return bytes(2 * round(seconds * RATE))


def track(*parts: tuple[float, float, int]) -> bytes:
    """``(start_s, length_s, seed)`` bursts of speech on silence."""
    out = b""
    for start, length, seed in parts:
        out += quiet(start - len(out) / 2 / RATE) + speech(length, seed)
    return out


@dataclass
class Call:
    record: CallRecord
    bridge: RunningBridge
    server: CascadeServer
    stats: CascadeCallStats
    view: dict[str, Any]

    def audible(self, min_gap_s: float = 0.2) -> list[tuple[float, float]]:
        """(start, end) phone times of what the caller heard, split at gaps of ``min_gap_s`` or more."""
        loud = np.frombuffer(bytes(self.record.heard_ulaw), np.uint8) != SILENCE_ULAW
        idx = np.flatnonzero(loud)
        if not len(idx):
            return []
        gaps = np.flatnonzero(np.diff(idx) >= min_gap_s * RATE)
        starts = [idx[0], *idx[gaps + 1]]
        ends = [*idx[gaps], idx[-1]]
        return [(s / RATE, (e + 1) / RATE) for s, e in zip(starts, ends, strict=True)]

    def metric(self, name: str, labels: Mapping[str, str]) -> float:
        return self.bridge.metric(name, dict(labels))


async def cascade_call(
    *,
    audio: bytes,
    transcripts: Sequence[str] = (),
    replies: Sequence[ChatReply | str] = (),
    params: Mapping[str, str] | None = None,
    hangup_after_s: float | None = None,
    n: int = 1,
    server: Mapping[str, Any] | None = None,
    faults: Sequence[tuple[str, str, int]] = (),
    caller: Mapping[str, Any] | None = None,
    api_key_override: str | None = None,
    **settings: Any,
) -> Call:
    """One call through a fresh bridge to a fresh cascade emulator; returns once the call's record exists."""
    pacing = {"stt_latency_s": 0.05, "first_token_s": 0.05, "tokens_per_s": 200.0, **(server or {})}
    async with trio.open_nursery() as nursery:
        async with CascadeServer(transcripts=transcripts, replies=replies, **pacing) as emulator:
            for stage, fault, times in faults:
                emulator.fail_next(stage, fault, times)
            cascade = CascadeSettings(
                stt_url=emulator.stt_url, llm_url=emulator.llm_url, tts_url=emulator.tts_url,
                api_key=Secret(api_key_override or DEFAULT_API_KEY), **settings,
            )
            bridge = await start_bridge(
                nursery, agent="cascade", cascade=cascade, bridge_api_token=Secret(TOKEN),
                silence_duration_ms=SILENCE_MS,
            )
            with trio.fail_after(LIMIT_S):
                record = await TwilioCaller(
                    stream_url=bridge.stream_url, audio=audio, hangup_after_s=hangup_after_s,
                    custom_parameters=dict(params or {}), call_sid=sid(n), **(caller or {}),
                ).run()
                await bridge.wait_idle()
                async with httpx.AsyncClient(base_url=bridge.base_url, timeout=10) as client:
                    auth = {"Authorization": f"Bearer {TOKEN}"}
                    view = (await client.get(f"/calls/{sid(n)}", headers=auth)).json()
            stats = next(s for s in reversed(RECENT_CALLS) if s.call_sid == sid(n))
        nursery.cancel_scope.cancel()  # the bridge
    return Call(record, bridge, emulator, stats, view)


def first_audio_after(call: Call, phone_s: float) -> float:
    """Phone time at which the first agent audio sent after ``phone_s`` reached the caller."""
    return next(e.phone_s for e in call.record.events_of("media_received") if e.phone_s > phone_s)


# --------------------------------------------------------------------------------------------- pipelining

STT_S, FIRST_TOKEN_S, TOKENS_PER_S, TTS_FIRST_BYTE_S, TTS_REALTIME = 0.3, 0.4, 30.0, 0.2, 4.0
ANSWER = "Sure, I can help with that. We have small, medium and large pizzas. Which size would you like?"
FIRST_SENTENCE = "Sure, I can help with that."


@pytest.mark.parametrize("early", [False, True], ids=["early_start_off", "early_start_on"])
async def test_first_audio_follows_the_critical_path_not_the_sequential_one(early: bool) -> None:
    speech_end = 3.2
    call = await cascade_call(
        audio=track((2.0, speech_end - 2.0, 1)),
        transcripts=["I'd like to order a pizza."],
        replies=[ANSWER],
        params={"greeting": "Hi."},
        hangup_after_s=speech_end + 9.0,
        server={
            "stt_latency_s": STT_S, "first_token_s": FIRST_TOKEN_S, "tokens_per_s": TOKENS_PER_S,
            "tts_first_byte_s": TTS_FIRST_BYTE_S, "tts_realtime_factor": TTS_REALTIME,
        },
        llm_early_start=early,
    )
    measured = first_audio_after(call, speech_end) - speech_end
    # The first sentence is complete when the token after it (its space) arrives.
    first_sentence_s = FIRST_TOKEN_S + len(tokenize(FIRST_SENTENCE)) / TOKENS_PER_S
    critical = SILENCE_MS / 1000 + STT_S + first_sentence_s + TTS_FIRST_BYTE_S
    sequential = (
        SILENCE_MS / 1000 + STT_S + FIRST_TOKEN_S + (len(tokenize(ANSWER)) + 1) / TOKENS_PER_S
        + TTS_FIRST_BYTE_S + speech_ms(ANSWER) / 1000 / TTS_REALTIME
    )
    turn = call.stats.turns[1]
    print(
        f"\n[pipelining, early start {'on' if early else 'off'}] caller's end of speech -> first audio: "
        f"{measured * 1000:.0f} ms; critical path (VAD {SILENCE_MS} ms + STT {STT_S * 1000:.0f} + LLM to the "
        f"first sentence {first_sentence_s * 1000:.0f} + TTS first byte {TTS_FIRST_BYTE_S * 1000:.0f}) "
        f"{critical * 1000:.0f} ms; seeds' sequential design (same silence wait + full STT + full LLM + full "
        f"TTS) {sequential * 1000:.0f} ms\n  stages: {turn}"
    )
    assert turn.user_text == "I'd like to order a pizza." and turn.agent_text == ANSWER
    # The same path from the stage times this call measured (loopback HTTP and scheduling included): what
    # the pipeline adds on top of its stages must stay within 50 ms.
    assert turn.stt_ms is not None and turn.llm_first_sentence_ms is not None
    assert turn.tts_first_byte_ms is not None
    stages = (turn.stt_ms + turn.llm_first_sentence_ms + turn.tts_first_byte_ms) / 1000
    measured_critical = SILENCE_MS / 1000 + stages - (turn.early_ms or 0) / 1000
    print(f"  critical path from this call's stage times: {measured_critical * 1000:.0f} ms")
    assert measured <= measured_critical + 0.050
    assert measured <= critical + 0.150  # and the stages themselves kept to their emulated latencies
    if early:
        assert turn.early_ms is not None and turn.early_ms > 0 and call.stats.early_used == 1
        assert measured < critical - 0.3  # the early start's head start (~600 ms) shows
    else:
        assert turn.early_ms is None and measured >= critical - 0.050
    assert sequential - measured > 1.0


# ---------------------------------------------------------------------------------------------- barge-in

LONG = (
    "Our menu has many pizzas to choose from today. The margherita comes with tomato and fresh basil. "
    "The pepperoni is the most popular one we have. The vegetarian has peppers, onions and olives."
)


def onset_decided(burst_start: float) -> float:
    """Phone time at which our VAD can decide an onset that starts at ``burst_start`` (frame aligned)."""
    return burst_start + ONSET_FRAMES * 0.010


async def test_a_back_channel_pauses_within_a_frame_and_resumes_repeating_little() -> None:
    burst = 2.0
    call = await cascade_call(
        audio=track((burst, 0.3, 7)),
        params={"greeting": LONG},
        hangup_after_s=12.0,
    )
    clears = call.record.events_of("clear_received")
    assert len(clears) == 1
    lag = clears[0].phone_s - onset_decided(burst)
    assert call.view["barge_ins"] == {"pause": 1, "continue": 1}
    # What the caller heard of the answer, in order: the part before the pause, then the rest from the piece
    # that was cut. Repeated = end of the first part - where the second part starts, in the answer's audio.
    heard = np.frombuffer(call.record.heard_pcm, "<i2").astype(np.float64)
    answer = np.frombuffer(_answer_8k(LONG), "<i2").astype(np.float64)
    first_audible = call.audible(min_gap_s=0.25)[0][0]
    cut = clears[0].phone_s
    played_before = cut - first_audible  # the answer's audio heard before the clear
    resumed_at = next(s for s, _ in call.audible(min_gap_s=0.05) if s > cut)
    window = heard[int(resumed_at * RATE) : int((resumed_at + 0.4) * RATE)]
    offset, peak = best_alignment(answer, window)
    repeated = played_before - offset / RATE
    print(f"\n[barge-in] clear {lag * 1000:.1f} ms after our VAD could decide the onset; resumed "
          f"{repeated * 1000:.0f} ms back (correlation {peak:.2f})")
    assert lag <= 0.020 + 0.005  # within one 20 ms uplink frame (5 ms of loopback scheduling allowed)
    assert peak > 0.8
    assert -0.030 <= repeated <= 0.200
    assert call.stats.turns[0].agent_text == LONG  # the answer went on to its end


def _answer_8k(text: str) -> bytes:
    """The emulator's speech of ``text`` as the bridge sends it (24 kHz -> 8 kHz μ-law), decoded."""
    encoder = codec.DownlinkEncoder()
    ulaw = b"".join(encoder.process(synthesize(s)) for s in split_sentences(text)) + encoder.flush()
    return codec.ulaw_decode(ulaw)


async def test_an_interruption_clears_cancels_and_the_next_request_holds_only_what_was_heard() -> None:
    burst = 2.5
    call = await cascade_call(
        audio=track((burst, 1.2, 8)),
        transcripts=["Just the pepperoni, please."],
        replies=[ChatReply(LONG, tokens_per_s=10.0), "One pepperoni coming up."],
        hangup_after_s=8.0,
    )
    clears = call.record.events_of("clear_received")
    assert clears and clears[0].phone_s - onset_decided(burst) <= 0.025
    assert call.view["barge_ins"] == {"pause": 1, "clear": 1}
    opening = call.stats.turns[0]
    assert opening.interrupted and opening.heard_text
    # The model's next request: its history holds the heard part of the opening, then the caller's words.
    request = call.server.chat_requests[-1]
    assistant = [m for m in request.messages if m["role"] == "assistant"]
    assert [m["content"] for m in assistant] == [opening.heard_text]
    assert request.messages[-1] == {"role": "user", "content": "Just the pepperoni, please."}
    heard = opening.heard_text
    assert LONG.startswith(heard) and len(heard) < len(LONG)
    # Against the phone: the caller heard the opening from its first audio to the clear.
    first_audible = call.audible()[0][0]
    heard_ms = (clears[0].phone_s - first_audible) * 1000
    sentences = [SpokenSentence(s, speech_ms(s)) for s in split_sentences(LONG)]
    shortest, longest = heard_text(sentences, heard_ms - 150), heard_text(sentences, heard_ms + 150)
    print(f"\n[interruption] heard {heard_ms:.0f} ms: history keeps {heard!r}")
    assert len(shortest) <= len(heard) <= len(longest)
    # The model was still writing (10 tokens/s): its stream was cancelled, the rest never spoken.
    spoken = [r.input for r in call.server.speech_requests]
    assert "The vegetarian has peppers, onions and olives." not in spoken
    assert call.stats.turns[-1].agent_text == "One pepperoni coming up."


# ------------------------------------------------------------------------------- silence and time limits


async def test_a_silent_caller_gets_a_check_in_then_a_goodbye_and_the_call_ends_on_time() -> None:
    checkin_s, hangup_s = 1.5, 1.5
    call = await cascade_call(
        audio=b"",
        params={"greeting": "Hi.", "idle_checkin_s": str(checkin_s), "idle_hangup_s": str(hangup_s)},
        server={"ms_per_char": 40},
    )
    spoken = [r.input for r in call.server.speech_requests]
    assert spoken == ["Hi.", CHECKIN, *split_sentences(IDLE_GOODBYE)]
    greeting, checkin, goodbye = call.audible(min_gap_s=0.5)
    print(f"\n[idle] check-in {checkin[0] - greeting[1]:.2f} s after the greeting ended, goodbye "
          f"{goodbye[0] - checkin[1]:.2f} s after the check-in ended")
    # On time: the quiet runs from when the agent's words finished playing (marks), plus the TTS's answer.
    assert checkin_s <= checkin[0] - greeting[1] <= checkin_s + 0.25
    assert hangup_s <= goodbye[0] - checkin[1] <= hangup_s + 0.25
    assert call.record.outcome == "bridge_closed" and call.view["end_reason"] == "idle_timeout"
    assert call.record.duration_s <= goodbye[1] + 1.0  # hung up once the goodbye had played
    assert [t["role"] for t in call.view["transcript"]] == ["agent", "agent", "agent"]
    assert call.stats.checkins == 1


async def test_caller_speech_resets_the_idle_timer() -> None:
    call = await cascade_call(
        audio=track((1.5, 0.6, 3)),
        transcripts=["Hello?"],
        replies=["Yes, I'm here."],
        params={"greeting": "Hi.", "idle_checkin_s": "2.5", "idle_hangup_s": "1"},
        hangup_after_s=6.0,
    )
    assert CHECKIN not in [r.input for r in call.server.speech_requests]
    assert call.view["end_reason"] == "twilio_stop"


async def test_the_longest_call_ends_politely() -> None:
    call = await cascade_call(
        audio=b"",
        params={"greeting": LONG, "max_call_s": "2"},
        server={"ms_per_char": 40},
    )
    assert call.view["end_reason"] == "max_duration"
    assert [r.input for r in call.server.speech_requests][-2:] == split_sentences(
        "We've reached the time limit for this call. Thank you, and goodbye!"
    )
    assert call.view["barge_ins"] == {}  # the answer in progress was cleared by us, not by the caller
    assert call.audible()[-1][1] <= call.record.duration_s


# --------------------------------------------------------------------------------------- goal and end_call

GOAL = "Order 2 large pepperoni pizzas for delivery to 12 Oak Street."


async def test_a_goal_call_ends_with_end_call_and_its_outcome_in_the_record() -> None:
    summary = "Ordered 2 large pepperonis, delivery in 30 minutes."
    call = await cascade_call(
        audio=track((4.0, 1.0, 4)),
        transcripts=["Sure, that's 30 dollars, it'll be there in 30 minutes."],
        replies=[
            "Hi, I'd like to order two large pepperoni pizzas for delivery, please.",
            ChatReply.end_call("Great, thank you. Goodbye!", achieved=True, summary=summary),
        ],
        params={"goal": GOAL},
        server={"ms_per_char": 40},
    )
    first = call.server.chat_requests[0]
    assert first.messages[0]["role"] == "system" and GOAL in first.messages[0]["content"]
    assert len(first.messages) == 1 and first.tools == ("end_call",)  # the first words are the model's
    assert call.view["outcome"] == {"achieved": True, "summary": summary}
    assert call.view["end_reason"] == "end_call" and call.record.outcome == "bridge_closed"
    assert [(t["role"], t["text"]) for t in call.view["transcript"]] == [
        ("agent", "Hi, I'd like to order two large pepperoni pizzas for delivery, please."),
        ("caller", "Sure, that's 30 dollars, it'll be there in 30 minutes."),
        ("agent", "Great, thank you. Goodbye!"),
    ]
    # The goodbye played to its end before the hang-up.
    goodbye_ms = speech_ms("Great, thank you.") + speech_ms("Goodbye!")
    assert call.audible()[-1][1] - call.audible()[-1][0] >= goodbye_ms / 1000 * 0.6


async def test_a_key_press_is_a_user_message() -> None:
    call = await cascade_call(
        audio=b"", params={"greeting": "Hi."}, replies=["Five, noted."], hangup_after_s=4.0,
        caller={"dtmf": [(2.0, "5")]},
    )
    users = [m["content"] for r in call.server.chat_requests for m in r.messages if m["role"] == "user"]
    assert users == ["(The caller pressed 5 on the keypad.)"]
    assert [r.input for r in call.server.speech_requests] == ["Hi.", "Five, noted."]


# ----------------------------------------------------------------------------------- early start, thrown away


async def test_an_early_answer_is_thrown_away_when_the_caller_goes_on() -> None:
    # A 600 ms pause: past the likely end (400 ms), short of the end of turn (1000 ms).
    call = await cascade_call(
        audio=track((1.5, 0.8, 5), (2.9, 0.8, 6)),
        transcripts=["I want", "I want a large pizza."],
        replies=["Which one?", "A large pizza, sure."],
        params={"greeting": "Hi."},
        hangup_after_s=7.0,
        server={"stt_latency_s": 0.1},
    )
    assert call.stats.early_discarded == 1 and call.stats.early_used == 1
    assert [t.discarded for t in call.stats.turns] == [False, True, False]
    assert call.metric("bridge_cascade_early_starts_total", {"outcome": "discarded"}) == 1
    users = [m["content"] for m in call.server.chat_requests[-1].messages if m["role"] == "user"]
    assert users == ["I want a large pizza."]
    assert [t["text"] for t in call.view["transcript"] if t["role"] == "caller"] == ["I want a large pizza."]
    spoken_after = [t["text"] for t in call.view["transcript"] if t["role"] == "agent"]
    assert spoken_after == ["Hi.", "A large pizza, sure."]


# ---------------------------------------------------------------------------------------------- failures


def _fault_id(value: object) -> str | None:
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return "-".join(f"{stage}_{fault}" for stage, fault, _ in value)
    return None


@pytest.mark.parametrize(
    ("faults", "transcripts", "counted", "spoken"),
    [
        ([("stt", "500", 2)], ["Hello."], {("stt", "http_5xx"): 2}, APOLOGY),
        ([("stt", "stall", 1)], ["Hello."], {("stt", "timeout"): 1}, APOLOGY),
        # (the emulator spends a transcript on the malformed answer too)
        ([("stt", "malformed", 1)], ["Hello.", "Hello."], {("stt", "malformed"): 1}, "You said: Hello."),
        ([], [""], {("stt", "empty"): 1}, NOT_HEARD),
        ([("llm", "500", 2)], ["Hello."], {("llm", "http_5xx"): 2}, APOLOGY),
        ([("llm", "429", 1)], ["Hello."], {("llm", "rate_limited"): 1}, "You said: Hello."),
        ([("llm", "malformed_sse", 2)], ["Hello."], {("llm", "malformed"): 2}, APOLOGY),
        ([("llm", "stall", 1)], ["Hello."], {("llm", "timeout"): 1}, APOLOGY),
        ([("llm", "cut", 1)], ["Hello."], {("llm", "incomplete"): 1}, "You said: Hello."),
        ([("llm", "error_event", 2)], ["Hello."], {("llm", "http_5xx"): 2}, APOLOGY),
        ([("llm", "malformed", 1)], ["Hello."], {("llm", "malformed"): 1}, "You said: Hello."),
        ([("tts", "500", 2)], ["Hello."], {("tts", "http_5xx"): 2}, None),
        ([("tts", "cut", 1)], ["Hello."], {("tts", "incomplete"): 1}, None),
        ([("tts", "empty", 1)], ["Hello."], {("tts", "empty"): 1}, None),
    ],
    ids=_fault_id,
)
async def test_a_failing_endpoint_is_answered_by_audio_and_counted(
    faults: list[tuple[str, str, int]],
    transcripts: list[str],
    counted: dict[tuple[str, str], int],
    spoken: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    speech_end = 2.0
    call = await cascade_call(
        audio=track((1.2, speech_end - 1.2, 9)),
        transcripts=transcripts,
        params={"greeting": "Hi."},
        hangup_after_s=speech_end + SILENCE_MS / 1000 + 3.5,
        faults=faults,
        server={"stall_s": 5.0, "ms_per_char": 40},
        request_timeout_s=0.8,
    )
    for (stage, kind), times in counted.items():
        assert call.metric("bridge_cascade_errors_total", {"stage": stage, "kind": kind}) == times
    assert sum(call.stats.errors.values()) == sum(counted.values())
    # Never silence: every turn that met a failure still played audio.
    failing = [t for t in call.stats.turns if t.errors]
    assert failing and all(t.first_audio_ms is not None for t in failing)
    said = [t["text"] for t in call.view["transcript"] if t["role"] == "agent"]
    if spoken is not None:  # the caller's turn failed: an apology (or, retried, the answer) after it
        answer = [(s, e) for s, e in call.audible() if s > speech_end]
        assert answer and answer[0][1] - answer[0][0] >= 0.3
        assert said[-1] == spoken
    else:  # the TTS failed on the first words (the greeting): the chime stood in for them
        assert failing == call.stats.turns[:1]
        first = call.audible()[0]
        assert first[0] < 0.5 and first[1] - first[0] >= 0.3
    assert DEFAULT_API_KEY not in caplog.text and DEFAULT_API_KEY not in repr(call.stats)


async def test_a_wrong_key_is_answered_by_the_chime_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    call = await cascade_call(
        audio=b"", params={"greeting": "Hi."}, hangup_after_s=2.0, api_key_override="sk-wrong-key-123456",
    )
    assert call.metric("bridge_cascade_errors_total", {"stage": "tts", "kind": "http_4xx"}) == 1
    assert call.audible() and "sk-wrong-key-123456" not in caplog.text


# ---------------------------------------------------------------------------------------------- the demo


async def test_the_demo_conversation_is_interrupted_once_and_ends_with_its_goal() -> None:
    """The scripted demo call (``demo_server`` + ``demo_caller_audio``); ``-s`` prints its transcript with
    the latencies of every turn by stage."""
    async with trio.open_nursery() as nursery, demo_server() as server:
        bridge = await start_bridge(
            nursery, agent="cascade", cascade=demo_settings(server), bridge_api_token=Secret(TOKEN),
            silence_duration_ms=SILENCE_MS,
        )
        with trio.fail_after(LIMIT_S):
            record = await TwilioCaller(
                stream_url=bridge.stream_url, audio=demo_caller_audio(), call_sid=sid(77)
            ).run()
            await bridge.wait_idle()
        nursery.cancel_scope.cancel()
    stats = next(s for s in reversed(RECENT_CALLS) if s.call_sid == sid(77))
    report = turn_report(stats)
    print("\n[demo call]\n" + "\n".join(report))
    assert record.outcome == "bridge_closed" and stats.end_reason == "end_call"
    assert [t.kind for t in stats.turns] == ["opening", "reply", "reply", "reply"]
    assert [t.interrupted for t in stats.turns] == [False, True, False, False]
    assert stats.outcome == (True, "Took a delivery order for one large pepperoni pizza.")
    assert [t.user_text for t in stats.turns[1:]] == list(DEMO_TRANSCRIPTS)
    menu = stats.turns[1]
    assert menu.heard_text and menu.agent_text.startswith(menu.heard_text)
    assert menu.heard_text != menu.agent_text
    assert len(record.events_of("clear_received")) == 2  # the pause at the onset, then the clear
