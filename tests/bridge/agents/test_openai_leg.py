"""End to end: the OpenAI agent leg in a real Hypercorn bridge, between the Twilio caller and the emulator.

Everything on 127.0.0.1 with real sockets and the real clock, each test bounded by ``fail_after``. The
emulator's VAD runs on the audio the bridge forwards (input-audio time), so turns are keyed to what the caller
says, not to wall-clock guesses. Agent answers are constant μ-law bytes where a test must tell which answer
the caller heard, sample by sample.

Truncation figures (``pytest tests/bridge/agents/test_openai_leg.py -k truncat -s``): the test prints what the
caller's handset played of the cut answer, the ``audio_end_ms`` the bridge sent (from the marks) and a
wall-clock estimate (time since the answer's first audio was sent, the usual peers' method), with both errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from bridge._config import Config
from bridge._secret import Secret
from bridge._server import serve_in_process
from bridge.agents import openai as oa
from bridge.agents._settings import OpenAISettings
from bridge.agents.openai import _service as svc
from bridge.agents.openai._leg import OPENAI_MAX_MESSAGE_CHARS, dtmf_text
from bridge.app import BridgeState, create_app
from bridge.emulators import TwilioCaller

LIMIT_S = 30.0
TOKEN = "api-token-0123456789abcdef"
SILENCE = 0xFF
#: Two answers the caller can tell apart byte by byte (μ-law codes, neither of them silence).
FIRST, SECOND = 0x20, 0x30
#: Handsets that play audio at once, and 200 ms after it arrives (the quality bar's case).
HANDSET_DELAYS_S = (0.0, 0.2)
TOLERANCE_MS = 40


@dataclass
class Bridge:
    base_url: str
    state: BridgeState

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/twilio/stream"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def wait_idle(self) -> None:
        while self.state.active_calls:  # noqa: ASYNC110 - the server has no event for it
            await trio.sleep(0.01)

    async def record(self, call_sid: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            answer = await client.get(f"/calls/{call_sid}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        view: dict[str, Any] = answer.json()
        return view


async def start(
    nursery: trio.Nursery,
    script: Callable[[oa.RealtimeSession], Awaitable[None]] | None = None,
    *,
    key: str = oa.DEFAULT_API_KEY,
    config: dict[str, Any] | None = None,
    **emulator: Any,
) -> tuple[oa.OpenAIRealtimeServer, Bridge]:
    server = oa.OpenAIRealtimeServer(script, **emulator)
    await nursery.start(server.serve)
    settings = OpenAISettings(url=server.url, api_key=Secret(key), voice="cedar")
    app = create_app(
        Config(agent="openai", openai=settings, bridge_api_token=Secret(TOKEN), **(config or {}))
    )
    base_url = await nursery.start(partial(serve_in_process, app))
    return server, Bridge(base_url, app.extensions["bridge"])


def tone_pcm(ms: int, freq_hz: float = 440.0) -> bytes:
    """Caller speech for the emulator's VAD: a tone at -20 dBFS, PCM16LE 8 kHz."""
    t = np.arange(ms * 8) / 8000
    return (3277 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


def quiet_pcm(ms: int, seed: int = 0) -> bytes:
    """A quiet line (-60 dBFS noise, far below the VAD's threshold) whose every frame differs."""
    noise = np.random.default_rng(seed).normal(0.0, 33.0, ms * 8)
    return np.round(noise).astype("<i2").tobytes()


def positions(heard: bytes | bytearray, value: int) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(bytes(heard), dtype=np.uint8) == value)


# --------------------------------------------------------------------------------------------- the happy path


async def test_caller_audio_and_agent_audio_cross_byte_exact_with_both_transcripts(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = oa.tone_ulaw(1500, 500.0)
    turn = oa.Turn(transcript="I would like a table for two.", reply="Sure, for what time?", audio=answer)
    server, bridge = await start(nursery, turns=[turn], pace_s=0.02)
    # A tone, then the quiet line that ends the turn: every frame differs, so a shifted, repeated or dropped
    # frame could not go unnoticed.
    audio = tone_pcm(600, 300.0) + quiet_pcm(3400)
    caller = TwilioCaller(
        stream_url=bridge.stream_url,
        audio=audio,
        speed=2.0,
        hangup_after_s=4.0,
        custom_parameters={"system_prompt": "You take bookings.", "goal": "Book a table."},
    )
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    (session,) = server.sessions
    assert rec.outcome == "hung_up"
    # Uplink: the base64-decoded appends are the bytes Twilio sent, in order, nothing added or lost.
    assert session.appended_audio == bytes(rec.sent_ulaw)
    assert session.append_count == rec.counters.frames_sent
    # Downlink: the caller heard exactly the delta bytes, in one piece.
    (response,) = [r for r in session.responses if r.status == "completed"]
    assert bytes(response.audio) == answer
    assert bytes(rec.heard_ulaw).count(answer) == 1
    silent = len(rec.heard_ulaw) - len(answer) + answer.count(SILENCE)
    assert len(positions(rec.heard_ulaw, SILENCE)) == silent  # and nothing else
    # The session: GA names only, μ-law both ways, our prompt and goal, the voice, transcription, end_call.
    assert session.authorization_ok and session.beta_header is None
    (update,) = session.updates
    assert update["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert update["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
    assert update["audio"]["input"]["transcription"]["model"]
    assert update["instructions"] == "You take bookings.\n\nYour goal on this call: Book a table."
    assert [tool["name"] for tool in update["tools"]] == ["end_call"]
    assert not session.refused_updates and not session.protocol_errors
    # Both sides' transcripts are kept with the call.
    view = await bridge.record(rec.call_sid)
    texts = [(entry["role"], entry["text"]) for entry in view["transcript"]]
    assert ("caller", turn.transcript) in texts and ("agent", turn.reply) in texts
    assert bridge.metric("bridge_turn_latency_seconds_count", {"agent": "openai", "source": "bridge"}) >= 1
    assert oa.DEFAULT_API_KEY not in caplog.text


# ------------------------------------------------------------------------------------------------ barge-in


@pytest.mark.parametrize("handset_delay_s", HANDSET_DELAYS_S)
async def test_barge_in_truncates_at_what_a_buffering_handset_played(
    nursery: trio.Nursery, handset_delay_s: float
) -> None:
    first = bytes([FIRST]) * 8 * 3000  # 3 s of answer, streamed at twice real time
    second = bytes([SECOND]) * 8 * 1000
    late: list[int] = []

    async def late_deltas(session: oa.RealtimeSession) -> None:
        """The service may still have audio of the cut item in flight after speech_started."""
        await session.wait_until(lambda: sum(s[0] == "started" for s in session.speech) >= 2, "the barge-in")
        cut = session.responses[0]
        for _ in range(3):
            await session.send_raw(svc.audio_delta_message(cut.response_id, cut.item_id, first[:800]))
            late.append(800)
        await session.send_raw(svc.audio_done_message(cut.response_id, cut.item_id))

    server, bridge = await start(
        nursery, late_deltas, turns=[oa.Turn(audio=first), oa.Turn(audio=second)], delta_ms=100, pace_s=0.05
    )
    # Speak 300 ms (the turn ends 500 ms later, at ~0.8 s), barge in at 2.0 s, stop, wait for the 2nd answer.
    audio = tone_pcm(300) + quiet_pcm(1700) + tone_pcm(400) + quiet_pcm(2600)
    caller = TwilioCaller(
        stream_url=bridge.stream_url,
        audio=audio,
        speed=1.0,
        hangup_after_s=5.0,
        handset_delay_s=handset_delay_s,
    )
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    (session,) = server.sessions
    assert rec.outcome == "hung_up" and late == [800] * 3
    cut, answer = session.responses[:2]
    assert cut.status == "cancelled" and answer.status == "completed"
    (truncate,) = session.truncates
    assert truncate.item_id == cut.item_id and truncate.content_index == 0 and truncate.accepted

    heard = positions(rec.heard_ulaw, FIRST)
    played_ms = len(heard) / 8
    error_ms = truncate.audio_end_ms - played_ms
    # The wall-clock estimate: the time since the bridge sent the item's first audio to Twilio.
    first_sent = next(e.wall_s for e in rec.events_of("media_received") if e.wall_s >= cut.started_wall_s)
    wall_ms = min((truncate.wall_s - first_sent) * 1000, cut.audio_ms)
    print(
        f"\ntruncation, handset delay {handset_delay_s * 1000:.0f} ms: played {played_ms:.0f} ms; "
        f"marks {truncate.audio_end_ms} ms (error {error_ms:+.0f} ms); "
        f"wall clock {wall_ms:.0f} ms (error {wall_ms - played_ms:+.0f} ms)"
    )
    assert abs(error_ms) <= TOLERANCE_MS
    # Nothing of the cut answer plays after the clear reached the phone (the span then playing aside), not
    # even the deltas that arrived after the barge-in...
    # (Every speech_started clears Twilio; only the barge-in's clear had audio queued to drop.)
    (clear,) = [c for c in rec.events_of("clear_received") if c.size > 0]
    span_end = (int(clear.phone_s / 0.02) + 1) * 160
    assert heard.size and heard[-1] < span_end
    # ... and the next answer plays whole, after it.
    again = positions(rec.heard_ulaw, SECOND)
    assert len(again) == len(second) and again[0] > heard[-1]
    assert again[-1] - again[0] == len(second) - 1  # in one piece
    view = await bridge.record(rec.call_sid)
    assert view["barge_ins"] == {"clear": 1}


# ------------------------------------------------------------------------------------------------ end_call


async def test_end_call_answers_the_function_plays_out_then_hangs_up(nursery: trio.Nursery) -> None:
    goodbye = oa.tone_ulaw(1200, 350.0)
    turn = oa.Turn(reply="Goodbye!", audio=goodbye, end_call=True)
    server, bridge = await start(nursery, turns=[turn], pace_s=0.01)
    caller = TwilioCaller(stream_url=bridge.stream_url, speed=2.0, dtmf=[(0.5, "9")], max_call_s=20.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    (session,) = server.sessions
    # The key press reached the model as text and asked for an answer.
    assert session.user_texts == [dtmf_text("9")] and session.response_creates == 1
    (response,) = session.responses
    (output,) = session.function_outputs
    assert output.call_id == response.call_id and '"ok":true' in output.output
    # The goodbye played whole, then the bridge closed the stream (no REST credentials here).
    assert bytes(rec.heard_ulaw).count(goodbye) == 1
    assert rec.outcome == "bridge_closed" and rec.close_code == 1000
    last_audio_s = (bytes(rec.heard_ulaw).rindex(goodbye) + len(goodbye)) / 8000
    (closed,) = rec.events_of("closed")
    assert closed.phone_s >= last_audio_s
    (answered,) = session.events_of("function_call_output")
    assert answered.wall_s <= closed.wall_s
    assert bridge.metric("bridge_calls_ended_total", {"reason": "end_call"}) == 1


# ----------------------------------------------------------------------------------------------------- faults


async def test_a_session_that_keeps_pcm_is_refused_and_the_caller_hears_the_fallback(
    nursery: trio.Nursery,
) -> None:
    async def answer_anyway(session: oa.RealtimeSession) -> None:
        await session.wait_updated()
        await session.respond()  # 24 kHz PCM16: loud static if it were played as μ-law

    server, bridge = await start(nursery, answer_anyway, keep_output_pcm=True)
    caller = TwilioCaller(stream_url=bridge.stream_url, audio=tone_pcm(500), speed=2.0, max_call_s=10.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    (session,) = server.sessions
    assert rec.outcome == "bridge_closed" and rec.duration_s < 2.0
    assert rec.counters.media_received == 0 and len(positions(rec.heard_ulaw, SILENCE)) == len(rec.heard_ulaw)
    assert session.appended_audio == b""  # no caller audio goes to a session we do not use
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "agent_bad_format"}) == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_bad_format"}) == 1


async def test_an_update_the_service_refuses_ends_in_the_fallback(nursery: trio.Nursery) -> None:
    server, bridge = await start(nursery, refuse_update="invalid_value")
    caller = TwilioCaller(stream_url=bridge.stream_url, audio=tone_pcm(500), speed=2.0, max_call_s=10.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    (session,) = server.sessions
    assert rec.outcome == "bridge_closed" and rec.duration_s < 2.0
    assert session.refused_updates and session.appended_audio == b""
    assert bridge.metric("bridge_agent_errors_total", {"agent": "openai", "code": "invalid_value"}) == 1
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "agent_refused"}) == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_refused"}) == 1


async def test_a_session_whose_output_format_changes_later_is_given_up(nursery: trio.Nursery) -> None:
    async def switch(session: oa.RealtimeSession) -> None:
        await session.wait_updated()
        await trio.sleep(0.2)
        audio = {**session.session["audio"], "output": {"format": {"type": "audio/pcm", "rate": 24000}}}
        changed = {**session.session, "audio": audio}
        await session.send_raw(svc.session_updated_message(changed))

    server, bridge = await start(nursery, switch)
    caller = TwilioCaller(stream_url=bridge.stream_url, speed=1.0, max_call_s=10.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    assert rec.outcome == "bridge_closed" and rec.duration_s < 2.0
    assert server.sessions[0].append_count > 0  # the session was in use until then
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_bad_format"}) == 1


async def test_error_events_are_counted_by_code_and_the_call_goes_on(nursery: trio.Nursery) -> None:
    async def errors(session: oa.RealtimeSession) -> None:
        await session.wait_updated()
        await session.send_error("requests", "rate_limit_exceeded", "Rate limit reached.")
        await session.send_error("invalid_request_error", "made_up_code_1", "A code nobody knows.")
        await session.send_error("invalid_request_error", "made_up_code_2", "Another one.")
        # A function we never offered: answered as unknown, and the model is asked to go on.
        await session.send_raw(
            svc.function_call_arguments_done_message("resp_x", "item_x", "call_x", "transfer", "{}")
        )

    server, bridge = await start(nursery, errors)
    caller = TwilioCaller(stream_url=bridge.stream_url, speed=2.0, hangup_after_s=1.5)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    assert rec.outcome == "hung_up"
    (session,) = server.sessions
    assert [(o.call_id, '"ok":false' in o.output) for o in session.function_outputs] == [("call_x", True)]
    assert session.response_creates == 1
    labels = {"agent": "openai"}
    assert bridge.metric("bridge_agent_errors_total", {**labels, "code": "rate_limit_exceeded"}) == 1
    assert bridge.metric("bridge_agent_errors_total", {**labels, "code": "other"}) == 2  # bounded labels


async def test_an_expired_session_ends_in_the_fallback(nursery: trio.Nursery) -> None:
    server, bridge = await start(nursery, max_session_s=0.5)
    caller = TwilioCaller(stream_url=bridge.stream_url, speed=1.0, max_call_s=10.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    assert rec.outcome == "bridge_closed" and rec.duration_s < 2.0
    labels = {"agent": "openai", "code": "session_expired"}
    assert bridge.metric("bridge_agent_errors_total", labels) == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_session_expired"}) == 1


async def test_a_wrong_key_is_refused_once_and_never_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, bridge = await start(nursery, api_key="sk-the-right-one")  # the bridge sends another
    caller = TwilioCaller(stream_url=bridge.stream_url, speed=2.0, max_call_s=10.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    assert rec.outcome == "bridge_closed"
    assert server.rejected == [401]  # a refusal is not retried
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "agent_connect_failed"}) == 1
    assert oa.DEFAULT_API_KEY not in caplog.text and "sk-the-right-one" not in caplog.text


#: Hostile frames from the service, each with the protocol-error kind it must be counted as.
HOSTILE: list[tuple[str | bytes, str]] = [
    ("not json at all", "bad_json"),
    (b"\x00\x01\x02binary", "binary_frame"),
    ("[1, 2, 3]", "not_object"),
    ('{"type": 5}', "bad_field"),
    ("{}", "missing_field"),
    ('{"type":"response.output_audio.delta","response_id":"r","item_id":7,"delta":"AAAA"}', "bad_field"),
    ('{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"@@@"}', "bad_base64"),
    ('{"type":"response.output_audio.delta","response_id":"r","item_id":"i"}', "missing_field"),
    (
        '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"'
        + "A" * 1_350_000  # decodes to more than the 1 MB cap, yet under the frame cap
        + '"}',
        "too_large",
    ),
    ('{"type":"input_audio_buffer.speech_started","audio_start_ms":"soon","item_id":"x"}', "bad_field"),
    ('{"type":"session.updated","session":{"audio":[]}}', "bad_field"),
    ('{"type":"error","error":"everything"}', "bad_field"),
    ('{"type":"response.function_call_arguments.done","name":"end_call"}', "missing_field"),
    ('{"type":"conversation.item.input_audio_transcription.completed","item_id":"i","transcript":null}',
     "bad_field"),
    ('{"type":"' + "x" * 5000 + '"}', ""),  # an unknown type: ignored, not an error
    ('"' + "y" * (OPENAI_MAX_MESSAGE_CHARS + 10) + '"', "too_large"),
]
FLOOD = 500


async def test_hostile_service_input_is_counted_and_harmless(nursery: trio.Nursery) -> None:
    answer = oa.tone_ulaw(800, 600.0)
    done_item: list[str] = []

    async def hostile(session: oa.RealtimeSession) -> None:
        await session.wait_updated()
        for frame, _ in HOSTILE:
            await session.send_raw(frame)
        for n in range(FLOOD):
            await session.send_raw(f"garbage {n}" if n % 2 else b"\xff" * 64)
        # Then a good answer, and a delta for its item after its done: dropped, not played anew.
        response = await session.respond(oa.Turn(audio=answer))
        done_item.append(response.item_id)
        await session.send_raw(svc.audio_delta_message(response.response_id, response.item_id, b"\x10" * 800))

    server, bridge = await start(nursery, hostile)
    caller = TwilioCaller(stream_url=bridge.stream_url, speed=2.0, hangup_after_s=4.0)
    with trio.fail_after(LIMIT_S):
        rec = await caller.run()
        await bridge.wait_idle()
    (session,) = server.sessions
    assert rec.outcome == "hung_up" and done_item
    # The call went on: the good answer played whole, the late delta never.
    assert bytes(rec.heard_ulaw).count(answer) == 1
    assert len(positions(rec.heard_ulaw, 0x10)) == 0
    expected: dict[str, int] = {}
    for _, kind in HOSTILE:
        if kind:
            expected[kind] = expected.get(kind, 0) + 1
    expected["bad_json"] += FLOOD // 2
    expected["binary_frame"] += FLOOD // 2
    expected["audio_after_done"] = 1
    for kind, count in expected.items():
        assert bridge.metric("bridge_protocol_errors_total", {"peer": "openai", "kind": kind}) == count, kind
    assert bridge.metric("bridge_dropped_total", {"reason": "agent_too_large"}) == 1
    assert session.appended_audio == bytes(rec.sent_ulaw)
