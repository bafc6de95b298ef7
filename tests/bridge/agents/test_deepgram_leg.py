"""End to end: a real Hypercorn bridge between the Twilio caller emulator and the Deepgram agent emulator.

Everything runs on 127.0.0.1 with real sockets and the real clock, bounded by ``fail_after``. The emulator
answers on its own VAD (stream time, so it does not depend on machine speed) and paces its answers at 5x
real time; the phone runs at ``SPEED`` (slower than that), so an answer reaches Twilio ahead of its playback
and plays as one contiguous run.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import numpy as np
import pytest
import trio

import codec
from bridge._config import Config
from bridge._secret import Secret
from bridge._server import serve_in_process
from bridge.agents import deepgram as dg
from bridge.agents._settings import DeepgramSettings
from bridge.agents.deepgram._leg import END_CALL_RESULT, DeepgramLeg
from bridge.app import BridgeState, create_app
from bridge.emulators import CallRecord, TwilioCaller

SPEED = 2.0
LIMIT_S = 30
KEY = "dg-test-key-7f3a9c"  # must never reach a log line
SILENCE = 0xFF  # μ-law code of a zero sample
FRAME_S = 0.02


class Bridge:
    def __init__(self, base_url: str, state: BridgeState) -> None:
        self.stream_url = base_url.replace("http://", "ws://", 1) + "/twilio/stream"
        self.state = state

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        with trio.fail_after(timeout_s):
            while self.state.active_calls:  # noqa: ASYNC110 - server state has no event to wait on
                await trio.sleep(0.01)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        out = {}
        for metric in self.state.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == name:
                    out[tuple(sorted(sample.labels.items()))] = sample.value
        return out


async def start(
    nursery: trio.Nursery, script: Any = None, *, config: dict[str, Any] | None = None, **server: Any
) -> tuple[dg.DeepgramAgentServer, Bridge]:
    """A Deepgram emulator (``server`` options, ``script``) and a bridge whose agent is Deepgram."""
    agent = dg.DeepgramAgentServer(script, api_key=KEY, **server)
    await nursery.start(agent.serve)
    fields: dict[str, Any] = {
        "agent": "deepgram",
        "deepgram": DeepgramSettings(api_key=Secret(KEY), url=agent.url),
        **(config or {}),
    }
    app = create_app(Config(**fields))
    base_url = await nursery.start(partial(serve_in_process, app))
    return agent, Bridge(base_url, app.extensions["bridge"])


async def call(bridge: Bridge, **caller: Any) -> CallRecord:
    with trio.fail_after(LIMIT_S):
        return await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, **caller).run()


def speech(ms: int, seed: int = 0) -> bytes:
    """Caller speech, PCM16 8 kHz: loud for the emulator's VAD, different at every offset."""
    rng = np.random.default_rng(seed)
    buzz = dg.speech_like_pcm(ms, 8000).astype(np.float64)
    noise = rng.standard_normal(len(buzz)) * 300.0
    return np.clip(buzz + noise, -32768, 32767).astype("<i2").tobytes()


def quiet(ms: int) -> bytes:
    return b"\x00\x00" * (8 * ms)


def answer_ulaw(answer_ms: int) -> bytes:
    """The bytes the emulator speaks for an answer of ``answer_ms`` (μ-law 8 kHz)."""
    return codec.ulaw_encode(dg.speech_like_pcm(answer_ms, 8000).astype("<i2").tobytes())


def audible(data: bytes) -> bytes:
    """``data`` without the silence before and after it."""
    return bytes(data).strip(bytes([SILENCE]))


def heard_after(record: CallRecord, wall_s: float) -> bytes:
    """What the caller heard from the first 20 ms span that started after ``wall_s``."""
    span = math.floor(record.phone_time(wall_s) / FRAME_S) + 1
    return bytes(record.heard_ulaw[span * 160 :])


# --- session set-up ------------------------------------------------------------------------------------


async def test_settings_are_v1_mulaw_passthrough_with_the_calls_prompt_goal_and_end_call(nursery):
    agent, bridge = await start(nursery)
    params = {"system_prompt": "You book tables at Chez Nous.", "goal": "book a table for two"}
    record = await call(bridge, custom_parameters=params, hangup_after_s=1.0)
    assert record.outcome == "hung_up"
    session = agent.sessions[0]
    settings = session.settings
    assert settings is not None and session.rejected_status is None  # the Token header was accepted
    assert settings.input == dg.AudioFormat("mulaw", 8000, "none")
    assert settings.output == dg.AudioFormat("mulaw", 8000, "none")
    raw = settings.raw
    assert raw["audio"]["output"]["container"] == "none"
    assert type(raw["audio"]["input"]["sample_rate"]) is int
    assert settings.prompt == "You book tables at Chez Nous.\n\nYour goal on this call: book a table for two"
    assert settings.client_side_functions == {"end_call"}
    assert session.events_of("Settings")[0].wall_s >= session.events_of("Welcome")[0].wall_s
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "twilio_stop"}) == 1


async def test_the_configured_prompt_is_used_without_parameters_and_the_key_is_never_logged(nursery, caplog):
    caplog.set_level(logging.DEBUG)
    agent, bridge = await start(nursery, config={"system_prompt": "You are Speakr's receptionist."})
    await call(bridge, hangup_after_s=0.6)
    assert agent.sessions[0].settings.prompt == "You are Speakr's receptionist."
    await bridge.wait_idle()
    assert KEY not in caplog.text
    assert "deepgram settings sent" in caplog.text


async def test_no_audio_before_settings_applied_and_keepalive_while_the_audio_is_held(nursery, monkeypatch):
    monkeypatch.setattr(DeepgramLeg, "keepalive_interval_s", 0.1)
    agent, bridge = await start(nursery, settings_delay_s=0.6)
    record = await call(bridge, audio=speech(3000, seed=1), hangup_after_s=4.0)
    session = agent.sessions[0]
    assert session.audio_before_settings_applied == 0
    applied = session.events_of("SettingsApplied")[0].wall_s
    assert session.audio_frames and session.audio_frames[0].wall_s >= applied
    first_audio_ms = (session.audio_frames[0].wall_s - applied) * 1000
    print(f"SettingsApplied -> first caller audio: {first_audio_ms:.2f} ms")
    held = [t for t in session.keepalives if t < applied]
    assert len(held) >= 3, session.keepalives
    # The audio held meanwhile went out after SettingsApplied: the most recent second of it, then the rest.
    sent, received = bytes(record.sent_ulaw), session.received_audio
    assert 0 < len(sent) - len(received) <= 0.6 * SPEED * 8000 + 160
    assert received == sent[len(sent) - len(received) :]
    await bridge.wait_idle()
    assert bridge.metric("bridge_dropped_total", {"reason": "uplink_overflow"}) == 0


def test_the_uplink_channel_holds_the_held_second_of_any_legs_frames():
    """Released at once when the agent is ready, the preroll (1 s) must fit in the channel: 50 frames of
    μ-law for Deepgram and OpenAI; Speakr keeps its 32 items."""
    from bridge._caller import UPLINK_CHANNEL_ITEMS, uplink_channel_items
    from bridge.agents.speakr._leg import SpeakrLeg

    assert uplink_channel_items(DeepgramLeg.capabilities) == 50
    assert uplink_channel_items(SpeakrLeg.capabilities) == UPLINK_CHANNEL_ITEMS == 32


async def test_keepalive_while_the_line_is_silent_and_none_while_audio_flows(nursery, monkeypatch):
    monkeypatch.setattr(DeepgramLeg, "keepalive_interval_s", 0.2)
    agent, bridge = await start(nursery)
    gap = (1.0, 4.0)  # phone time without media: 1.5 s of wall time at SPEED
    record = await call(bridge, gaps=[gap], hangup_after_s=5.0)
    session = agent.sessions[0]
    start_wall = record.start_wall_s
    gap_wall = (start_wall + gap[0] / SPEED, start_wall + gap[1] / SPEED)
    in_gap = [t for t in session.keepalives if gap_wall[0] <= t <= gap_wall[1] + 0.05]
    assert len(in_gap) >= 5, session.keepalives
    assert len(in_gap) == len(session.keepalives)  # never while frames flowed every 10 ms
    with trio.fail_after(LIMIT_S):
        await session.closed.wait()
    assert session.closed_by == "peer" and session.close_code == 1000  # no CLIENT_MESSAGE_TIMEOUT
    assert session.received_audio == bytes(record.sent_ulaw)
    await bridge.wait_idle()


async def test_a_refused_key_hands_the_caller_to_the_fallback(nursery):
    agent = dg.DeepgramAgentServer(api_key="another-key")
    await nursery.start(agent.serve)
    config = Config(agent="deepgram", deepgram=DeepgramSettings(api_key=Secret(KEY), url=agent.url))
    app = create_app(config)
    bridge = Bridge(await nursery.start(partial(serve_in_process, app)), app.extensions["bridge"])
    record = await call(bridge)
    assert record.outcome == "bridge_closed"
    assert [s.rejected_status for s in agent.sessions] == [401]  # refused: not retried
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_connect_failed"}) == 1


# --- audio both ways -----------------------------------------------------------------------------------


async def test_caller_audio_arrives_byte_exact_and_the_caller_hears_exactly_the_agents_bytes(nursery):
    agent, bridge = await start(nursery, pace_s=0.0, turns=[dg.Turn(answer_ms=1500)])
    audio = speech(1000, seed=2) + quiet(5000)
    record = await call(bridge, audio=audio, hangup_after_s=4.0)
    session = agent.sessions[0]
    assert session.received_audio == bytes(record.sent_ulaw)
    assert {f.size for f in session.audio_frames} == {160}
    assert session.audio_before_settings_applied == 0
    # The caller heard the answer, byte for byte, and nothing else.
    assert len(session.answers) == 1 and session.answers[0].done
    assert session.sent_audio == answer_ulaw(1500)
    assert audible(record.heard_ulaw) == audible(session.sent_audio)
    assert record.counters.bytes_received == len(session.sent_audio)
    await bridge.wait_idle()
    assert bridge.metric("bridge_barge_in_events_total", {"event": "clear"}) == 0
    for direction in ("uplink", "downlink"):
        labels = {"direction": direction}
        count = bridge.metric("bridge_hop_latency_seconds_count", labels)
        mean_ms = bridge.metric("bridge_hop_latency_seconds_sum", labels) / count * 1000
        print(f"{direction} hop: {mean_ms:.3f} ms mean over {count:.0f} frames")


async def test_transcripts_and_latencies_of_a_turn(nursery, caplog):
    caplog.set_level(logging.INFO)
    agent, bridge = await start(nursery, latencies_s=(0.75, 0.25, 0.5))
    await call(bridge, audio=speech(1000, seed=3), hangup_after_s=5.0)
    await bridge.wait_idle()
    assert "caller: Hello, can you hear me?" in caplog.text
    assert "agent: Yes, I can hear you. How can I help?" in caplog.text
    labels = {"agent": "deepgram", "source": "agent"}
    assert bridge.metric("bridge_turn_latency_seconds_count", labels) == 1
    assert bridge.metric("bridge_turn_latency_seconds_sum", labels) == pytest.approx(0.75)
    # The bridge's own side: from the caller's transcript (the end of the turn) to the first audio sent.
    assert bridge.metric("bridge_turn_latency_seconds_count", {"agent": "deepgram", "source": "bridge"}) == 1


async def test_dtmf_goes_to_the_agent_as_a_user_message(nursery):
    agent, bridge = await start(nursery, turns=[dg.Turn(answer_ms=500)])
    await call(bridge, dtmf=[(0.4, "5")], hangup_after_s=3.0)
    session = agent.sessions[0]
    assert session.injected_user == ["(The caller pressed the 5 key.)"]
    assert session.answers and session.answers[0].done  # the agent answered it
    await bridge.wait_idle()


# --- barge-in ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("handset_delay_s", [0.0, 0.2])
async def test_nothing_of_the_old_answer_plays_after_user_started_speaking(nursery, handset_delay_s):
    long, short = 6000, 1500
    agent, bridge = await start(nursery, turns=[dg.Turn(answer_ms=long), dg.Turn(answer_ms=short)])
    # Speak, let the agent answer, interrupt it 1.6 s in, then let the second answer play to its end.
    audio = speech(1000, seed=4) + quiet(2000) + speech(800, seed=5) + quiet(5000)
    record = await call(bridge, audio=audio, handset_delay_s=handset_delay_s, hangup_after_s=9.0)
    session = agent.sessions[0]
    first, second = session.answers
    assert first.interrupted and not first.done and second.done
    assert record.counters.clears_received == 1
    clear = record.events_of("clear_received")[0]
    after = heard_after(record, clear.wall_s)
    started = session.events_of("UserStartedSpeaking")[1].wall_s
    print(f"UserStartedSpeaking -> Twilio clear: {(clear.wall_s - started) * 1000:.2f} ms")
    # After the clear the caller hears the second answer whole, and nothing else.
    assert audible(after) == audible(answer_ulaw(short))
    # Before it, only the beginning of the first answer.
    before = audible(bytes(record.heard_ulaw[: len(record.heard_ulaw) - len(after)]))
    assert 0 < len(before) < len(answer_ulaw(long))
    assert audible(answer_ulaw(long)).startswith(before)
    await bridge.wait_idle()
    assert bridge.metric("bridge_barge_in_events_total", {"event": "clear"}) == 1


async def test_audio_of_the_interrupted_answer_arriving_after_user_started_speaking_is_dropped(nursery):
    late = codec.ulaw_encode(dg.speech_like_pcm(400, 8000)[::-1].copy().tobytes())  # not like any answer

    async def script(session: dg.DeepgramSession) -> None:
        # A service that lets some of the old answer through after UserStartedSpeaking (a race).
        await session.wait_event("UserStartedSpeaking", 2)
        await session.send_raw(late)
        await session.send_raw(late)

    agent, bridge = await start(nursery, script, turns=[dg.Turn(answer_ms=6000), dg.Turn(answer_ms=1000)])
    audio = speech(1000, seed=6) + quiet(2000) + speech(800, seed=7) + quiet(4000)
    record = await call(bridge, audio=audio, hangup_after_s=8.0)
    session = agent.sessions[0]
    assert session.answers[1].done
    assert late not in bytes(record.heard_ulaw)
    clear = record.events_of("clear_received")[0]
    assert audible(heard_after(record, clear.wall_s)) == audible(answer_ulaw(1000))
    await bridge.wait_idle()
    assert bridge.metric("bridge_dropped_total", {"reason": "agent_after_barge_in"}) == 2


async def test_user_started_speaking_while_the_agent_is_silent_sends_no_clear(nursery):
    agent, bridge = await start(nursery, pace_s=0.0, turns=[dg.Turn(answer_ms=500)])
    # Two turns, each after the previous answer has played out.
    audio = speech(800, seed=8) + quiet(2500) + speech(800, seed=9) + quiet(2500)
    record = await call(bridge, audio=audio, hangup_after_s=6.5)
    session = agent.sessions[0]
    assert len(session.events_of("UserStartedSpeaking")) == 2 and len(session.answers) == 2
    assert record.counters.clears_received == 0
    assert audible(record.heard_ulaw).count(audible(answer_ulaw(500))) == 2
    await bridge.wait_idle()
    assert bridge.metric("bridge_barge_in_events_total", {"event": "clear"}) == 0


# --- endings -------------------------------------------------------------------------------------------


async def test_end_call_answers_the_function_plays_out_then_hangs_up(nursery):
    goodbye = dg.Turn(answer_text="Goodbye!", answer_ms=2000, end_call=True)
    agent, bridge = await start(nursery, turns=[goodbye])
    record = await call(bridge, audio=speech(1000, seed=10))  # no hang-up: the agent ends the call
    session = agent.sessions[0]
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    (request,) = session.function_requests
    (response,) = session.function_responses
    assert (response.id, response.name, response.content) == (request.id, "end_call", END_CALL_RESULT)
    # The whole goodbye was heard before the hang-up, though it was all sent long before it played.
    assert audible(record.heard_ulaw) == audible(answer_ulaw(2000))
    closed = record.events_of("closed")[-1].wall_s
    assert record.first_audio_heard_wall_s is not None
    assert closed >= record.first_audio_heard_wall_s + 2.0 / SPEED - 0.05
    assert session.events_of("AgentAudioDone")[0].wall_s < closed - 0.3  # sent well before it had played
    played_out = record.first_audio_heard_wall_s + 2.0 / SPEED
    print(f"end_call: stream closed {(closed - played_out) * 1000:.1f} ms after the goodbye finished playing")
    assert session.events_of("FunctionCallResponse")[0].wall_s < closed
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "end_call"}) == 1


async def test_a_caller_hang_up_mid_answer_closes_deepgram_with_1000_within_a_second(nursery):
    agent, bridge = await start(nursery, turns=[dg.Turn(answer_ms=8000)])
    record = await call(bridge, audio=speech(1000, seed=12), drop_after_s=2.5)
    assert record.outcome == "dropped"
    session = agent.sessions[0]
    with trio.fail_after(LIMIT_S):
        await session.closed.wait()
    assert session.answers[0].sent_bytes > 0 and session.close_code == 1000
    dropped = record.events_of("dropped")[-1].wall_s
    closed = session.events_of("closed")[-1].wall_s
    assert closed - dropped < 1.0
    print(f"caller drop mid-answer -> Deepgram closed (1000) in {(closed - dropped) * 1000:.1f} ms")
    sent = bytes(record.sent_ulaw)
    assert session.received_audio == sent[: len(session.received_audio)]
    await bridge.wait_idle()


async def test_the_call_can_choose_deepgram_when_another_agent_is_configured(nursery):
    agent = dg.DeepgramAgentServer(api_key=KEY)
    await nursery.start(agent.serve)
    config = Config(agent="speakr", deepgram=DeepgramSettings(api_key=Secret(KEY), url=agent.url))
    app = create_app(config)
    bridge = Bridge(await nursery.start(partial(serve_in_process, app)), app.extensions["bridge"])
    record = await call(bridge, custom_parameters={"agent": "deepgram"}, hangup_after_s=0.6)
    assert record.outcome == "hung_up"
    assert len(agent.sessions) == 1 and agent.sessions[0].settings_applied
    await bridge.wait_idle()


@pytest.mark.parametrize("how", ["close", "drop"])
async def test_a_deepgram_side_close_hands_the_caller_to_the_fallback(nursery, how):
    async def script(session: dg.DeepgramSession) -> None:
        await trio.sleep(0.2)
        await (session.close(1011, "internal") if how == "close" else session.drop())

    agent, bridge = await start(nursery, script)
    record = await call(bridge, audio=speech(500, seed=11))
    assert record.outcome == "bridge_closed"
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_disconnect"}) == 1


async def test_an_error_then_a_close_is_counted_and_ends_in_the_fallback(nursery):
    """A Settings the service cannot use: ``Error UNPARSABLE_CLIENT_MESSAGE``, then it closes."""

    async def script(session: dg.DeepgramSession) -> None:
        await session.error("We could not parse your message.", "UNPARSABLE_CLIENT_MESSAGE")
        await session.close(1000, "UNPARSABLE_CLIENT_MESSAGE")

    agent, bridge = await start(nursery, script)
    record = await call(bridge)
    assert record.outcome == "bridge_closed"
    await bridge.wait_idle()
    labels = {"agent": "deepgram", "code": "unparsable_client_message"}
    assert bridge.metric("bridge_agent_errors_total", labels) == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_disconnect"}) == 1


# --- what the service reports, and hostile input ---------------------------------------------------------


async def test_warnings_and_errors_are_counted_by_code(nursery):
    async def script(session: dg.DeepgramSession) -> None:
        await session.warning("Prompt truncated.", "PROMPT_TOO_LONG")
        await session.warning("Prompt truncated.", "PROMPT_TOO_LONG")
        await session.error("The LLM failed.", "THINK_REQUEST_FAILED")
        await session.warning("?", "A_CODE_NOBODY_KNOWS_" + "X" * 200)
        await session.error("", "")
        await session.request_function("end_call")

    agent, bridge = await start(nursery, script)
    record = await call(bridge)
    assert record.outcome == "bridge_closed"
    await bridge.wait_idle()
    errors = {dict(k)["code"]: v for k, v in bridge.samples("bridge_agent_errors_total").items()}
    assert errors == {"prompt_too_long": 2, "think_request_failed": 1, "other": 1, "unknown": 1}
    assert bridge.metric("bridge_calls_ended_total", {"reason": "end_call"}) == 1


BAD_FRAMES: list[str | bytes] = [
    "garbage",
    "",
    "[1, 2]",
    '{"type": 5}',
    '{"no": "type"}',
    '{"type": "' + "T" * 100 + '"}',
    '{"type": "AgentStartedSpeaking", "total_latency": "soon", "tts_latency": 0, "ttt_latency": 0}',
    '{"type": "AgentStartedSpeaking", "total_latency": -1, "tts_latency": 0, "ttt_latency": 0}',
    '{"type": "ConversationText", "role": "system", "content": "x"}',
    '{"type": "ConversationText", "role": "user"}',
    '{"type": "FunctionCallRequest", "functions": "end_call"}',
    '{"type": "FunctionCallRequest", "functions": [{"id": "1", "name": "end_call"}]}',
    '{"type": "Welcome"}',
    '{"type": "Warning", "code": 7}',
    "{" * 300_000,  # oversize text
    b"\x7f" * 200_000,  # oversize binary
]
UNKNOWN_FLOOD = 500
GARBAGE_FLOOD = 2000


async def test_hostile_input_is_counted_and_harmless(nursery, caplog):
    caplog.set_level(logging.INFO)

    async def script(session: dg.DeepgramSession) -> None:
        for frame in BAD_FRAMES:
            await session.send_raw(frame)
        for i in range(UNKNOWN_FLOOD):
            await session.send_unknown(f"FutureMessage{i % 3}")
        for _ in range(GARBAGE_FLOOD):
            await session.send_raw('{"type":')
        await session.send_raw('{"type":"SettingsApplied"}')  # a second one
        await session.send_raw(dg.welcome_message("again"))  # a second Welcome
        await session.send_raw(dg.history_message("user", "hi"))
        await session.send_raw(dg.injection_refused_message("no"))
        for _ in range(200):  # barge-ins with nothing playing: no clear each time
            await session.send_raw(dg.user_started_speaking_message())
        await session.send_raw(dg.agent_audio_done_message())  # with no answer open
        # A client-side function the bridge never offered gets an error answer, not silence.
        await session.request_function("transfer_to_sales")
        await session.wait_function_responses(1)
        await session.speak(dg.Turn(answer_ms=1000))
        await session.request_function("end_call")

    agent, bridge = await start(nursery, script, pace_s=0.0)
    record = await call(bridge)
    session = agent.sessions[0]
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    assert session.function_responses[0].name == "transfer_to_sales"
    assert session.function_responses[0].content.startswith("Error")
    assert session.function_responses[1].name == "end_call"
    assert record.counters.clears_received == 0
    assert audible(record.heard_ulaw) == audible(answer_ulaw(1000))
    await bridge.wait_idle()
    errors = {dict(k)["kind"]: v for k, v in bridge.samples("bridge_protocol_errors_total").items()
              if dict(k)["peer"] == "deepgram"}
    expected_bad = len(BAD_FRAMES) + GARBAGE_FLOOD
    other = {"second_settings_applied": 1, "second_welcome": 1, "unknown_function": 1}
    assert sum(errors.values()) == expected_bad + sum(other.values()), errors
    assert errors["bad_json"] >= GARBAGE_FLOOD and errors["too_large"] == 2
    for kind, count in other.items():
        assert errors[kind] == count
    assert bridge.metric("bridge_dropped_total", {"reason": "agent_unknown_type"}) == UNKNOWN_FLOOD
    for i in range(3):  # each unknown type is logged once
        assert caplog.text.count(f"unknown type 'FutureMessage{i}' ignored") == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "end_call"}) == 1
