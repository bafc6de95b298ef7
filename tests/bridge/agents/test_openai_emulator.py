"""The OpenAI Realtime emulator behaves like the GA service, driven by a plain trio-websocket client.

Everything on 127.0.0.1, port 0, bounded by ``fail_after``. The client here is written with the wire module's
bridge end (``session_update_message``, ``append_audio_message``, ``parse_server_event``, ...), so these tests
also show the two ends of the wire agree over a real socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import numpy as np
import pytest
import trio
import trio_websocket

import codec
from bridge.agents import openai as oa
from bridge.agents.openai._emulator_vad import EnergyVad, VadStart, VadStop

TIMEOUT_S = 10.0
FRAME = 160  # 20 ms of μ-law
SILENCE = b"\xff" * FRAME
E = TypeVar("E")

AUTH = [(b"Authorization", f"Bearer {oa.DEFAULT_API_KEY}".encode())]


@asynccontextmanager
async def running(server: oa.OpenAIRealtimeServer) -> AsyncIterator[oa.OpenAIRealtimeServer]:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(
    server: oa.OpenAIRealtimeServer, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio_websocket.open_websocket_url(
        server.url, extra_headers=AUTH if headers is None else headers, max_message_size=16 * 2**20
    ) as ws:
        yield ws


class Reader:
    """Reads server events in order, keeping every one for later assertions."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.seen: list[oa.ServerEvent] = []

    async def next(self) -> oa.ServerEvent:
        event = oa.parse_server_event(await self.ws.get_message())
        self.seen.append(event)
        return event

    async def until_seen(self, predicate: Callable[[list[oa.ServerEvent]], bool]) -> None:
        """Reads until ``predicate(seen)`` holds, whatever the order the events came in."""
        while not predicate(self.seen):
            await self.next()

    async def until(self, kind: type[E], predicate: Callable[[E], bool] = lambda _: True) -> E:
        while True:
            event = await self.next()
            if isinstance(event, kind) and predicate(event):
                return event

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.seen if isinstance(e, kind)]


async def configure(ws: trio_websocket.WebSocketConnection, reader: Reader) -> oa.SessionUpdated:
    await reader.until(oa.SessionCreated)
    await ws.send_message(oa.session_update_message(instructions="Be brief.", voice="marin"))
    return await reader.until(oa.SessionUpdated)


async def speak(ws: trio_websocket.WebSocketConnection, ulaw: bytes) -> None:
    """Appends audio 20 ms at a time, as the bridge does (no pacing: the emulator's VAD is on audio time)."""
    for i in range(0, len(ulaw), FRAME):
        await ws.send_message(oa.append_audio_message(ulaw[i : i + FRAME]))


def silence(ms: int) -> bytes:
    return b"\xff" * (ms * 8)


async def run_with(
    server: oa.OpenAIRealtimeServer,
    body: Callable[[trio_websocket.WebSocketConnection, Reader], Awaitable[None]],
) -> tuple[oa.RealtimeSession, list[oa.ServerEvent]]:
    """Runs ``body`` on one connection; returns the emulator's session and every event the client read."""
    with trio.fail_after(TIMEOUT_S):
        async with running(server), client(server) as ws:
            reader = Reader(ws)
            await body(ws, reader)
            return await server.wait_for_session(), reader.seen


# ----------------------------------------------------------------------------------------------------
# The upgrade


async def test_an_upgrade_without_the_key_is_refused_with_401() -> None:
    server = oa.OpenAIRealtimeServer()
    with trio.fail_after(TIMEOUT_S):
        async with running(server):
            for headers in (
                [],
                [(b"Authorization", b"Bearer wrong")],
                [(b"Authorization", oa.DEFAULT_API_KEY.encode())],
            ):
                with pytest.raises(trio_websocket.ConnectionRejected) as info:
                    async with client(server, headers):
                        pass
                assert info.value.status_code == 401
                assert b"invalid_api_key" in (info.value.body or b"")
    assert server.rejected == [401, 401, 401] and server.sessions == []
    assert oa.DEFAULT_API_KEY not in repr(server)


async def test_a_scripted_http_status_refuses_every_upgrade() -> None:
    server = oa.OpenAIRealtimeServer(reject_status=503)
    with trio.fail_after(TIMEOUT_S):
        async with running(server):
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with client(server):
                    pass
    assert info.value.status_code == 503


# ----------------------------------------------------------------------------------------------------
# The session


async def test_session_update_is_answered_with_the_session_in_pcmu() -> None:
    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        created = await reader.until(oa.SessionCreated)
        assert created.output_format == oa.AudioFormat("audio/pcm", 24000)  # the service's default
        handshake = oa.Handshake(instructions="Be brief.", voice="cedar")
        await ws.send_message(handshake.initial_message())
        while not handshake.done:
            handshake.receive(await reader.next())
        assert handshake.ready, handshake.reason
        updated = reader.of(oa.SessionUpdated)[0]
        assert updated.output_format == oa.AudioFormat("audio/pcmu")
        assert updated.input_format == oa.AudioFormat("audio/pcmu")
        assert updated.voice == "cedar"

    session, _ = await run_with(oa.OpenAIRealtimeServer(), body)
    assert session.authorization_ok and session.beta_header is None
    assert session.query == {"model": "gpt-realtime"}
    assert session.session["instructions"] == "Be brief."
    assert [t["name"] for t in session.session["tools"]] == ["end_call"]
    assert (session.input_format, session.output_format) == ("audio/pcmu", "audio/pcmu")


async def test_a_beta_field_is_refused_like_the_ga_service_does() -> None:
    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        await reader.until(oa.SessionCreated)
        await ws.send_message(
            '{"type":"session.update","session":{"type":"realtime","input_audio_format":"g711_ulaw",'
            '"output_audio_format":"g711_ulaw"}}'
        )
        error = await reader.until(oa.ErrorEvent)
        assert error.code == "unknown_parameter"
        assert error.message == "Unknown parameter: 'session.input_audio_format'."
        assert error.param == "session.input_audio_format"

    session, _ = await run_with(oa.OpenAIRealtimeServer(), body)
    assert session.output_format == "audio/pcm"  # unchanged: the update was refused whole
    assert [p.code for p in session.refused_updates] == ["unknown_parameter"]


async def test_a_service_that_keeps_pcm_fails_the_handshake_and_sends_24k_pcm() -> None:
    tone = oa.tone_ulaw(200)

    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        handshake = oa.Handshake(instructions="x")
        await ws.send_message(handshake.initial_message())
        while not handshake.done:
            handshake.receive(await reader.next())
        assert handshake.reason == "output_format"
        await ws.send_message(oa.response_create_message())
        await reader.until(oa.ResponseDone)

    server = oa.OpenAIRealtimeServer(keep_output_pcm=True, turns=[oa.Turn(audio=tone)])
    session, _ = await run_with(server, body)
    (response,) = session.responses
    assert response.output_format == "audio/pcm"
    assert len(response.audio) == len(tone) * 6  # 8 kHz μ-law -> 24 kHz PCM16: 3 samples of 2 bytes each
    assert response.audio_ms == pytest.approx(200, abs=1)


# ----------------------------------------------------------------------------------------------------
# Caller audio, server VAD and responses


async def test_vad_turn_gets_the_scripted_transcript_audio_and_text() -> None:
    tone = oa.tone_ulaw(180, 300.0)
    turn = oa.Turn(transcript="I need a table for two.", reply="Sure, for what time?", audio=tone)
    caller = silence(600) + oa.tone_ulaw(400, level_dbfs=-20) + silence(800)

    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        await configure(ws, reader)
        await speak(ws, caller)
        await reader.until(oa.ResponseDone)

    session, seen = await run_with(oa.OpenAIRealtimeServer(turns=[turn], delta_ms=40), body)
    started = next(e for e in seen if isinstance(e, oa.SpeechStarted))
    stopped = next(e for e in seen if isinstance(e, oa.SpeechStopped))
    # Onset at 600 ms of input audio, less the default 300 ms prefix padding; stop after 500 ms of silence.
    assert started.audio_start_ms == 300
    assert stopped.audio_end_ms == 600 + 400 + 500 and stopped.item_id == started.item_id
    transcript = next(e for e in seen if isinstance(e, oa.InputTranscript))
    assert transcript == oa.InputTranscript(started.item_id, 0, "I need a table for two.")
    deltas = [e for e in seen if isinstance(e, oa.AudioDelta)]
    assert b"".join(d.audio for d in deltas) == tone
    assert [len(d.audio) for d in deltas] == [320, 320, 320, 320, 160]  # delta_ms=40 of μ-law
    assert len({(d.response_id, d.item_id) for d in deltas}) == 1
    text = "".join(e.delta for e in seen if isinstance(e, oa.TranscriptDelta))
    assert text == "Sure, for what time?"
    kinds = [
        type(e).__name__ for e in seen if not isinstance(e, oa.AudioDelta | oa.TranscriptDelta | oa.Unknown)
    ]
    assert kinds[-5:] == ["InputTranscript", "ResponseCreated", "AudioDone", "TranscriptDone", "ResponseDone"]
    assert seen[-1] == oa.ResponseDone(deltas[0].response_id, "completed")
    # Every appended byte, exactly and in order.
    assert session.appended_audio == caller and session.append_count == len(caller) // FRAME
    assert session.speech == [("started", 300, started.item_id), ("stopped", 1500, started.item_id)]


async def test_the_default_reply_is_the_bundled_greeting_in_mulaw() -> None:
    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        await configure(ws, reader)
        await ws.send_message(oa.response_create_message())
        await reader.until(oa.ResponseDone)

    session, _ = await run_with(oa.OpenAIRealtimeServer(), body)
    (response,) = session.responses
    assert response.trigger == "client" and response.status == "completed"
    assert 4300 < response.audio_ms < 4500  # 4.4 s of speech at 8 bytes a millisecond
    pcm = np.frombuffer(codec.ulaw_decode(bytes(response.audio)), "<i2")
    assert int(np.abs(pcm).max()) > 3000  # speech, not silence


async def test_barge_in_cancels_the_response_and_the_truncate_is_recorded() -> None:
    long_reply = oa.tone_ulaw(3000, 300.0)
    caller = oa.tone_ulaw(200, level_dbfs=-20) + silence(600)
    truncated: list[str] = []

    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        await configure(ws, reader)
        await speak(ws, caller)
        first = await reader.until(oa.AudioDelta)
        await reader.until(oa.AudioDelta, lambda d: d.item_id == first.item_id)
        # The caller barges in while the (paced) answer is still being generated.
        await speak(ws, oa.tone_ulaw(100, level_dbfs=-20))
        barge = await reader.until(oa.SpeechStarted)
        await ws.send_message(oa.truncate_message(first.item_id, 120))
        # The cancel and the truncate's acknowledgement, in either order.
        await reader.until_seen(
            lambda seen: (
                oa.ResponseDone(first.response_id, "cancelled") in seen
                and oa.Unknown("conversation.item.truncated") in seen
            )
        )
        assert barge.item_id != first.item_id
        truncated.append(first.item_id)
        # A truncate past the audio sent is refused as the service does.
        await ws.send_message(oa.truncate_message(first.item_id, 60_000))
        error = await reader.until(oa.ErrorEvent)
        assert error.code == "invalid_value" and error.param == "audio_end_ms"

    server = oa.OpenAIRealtimeServer(turns=[oa.Turn(audio=long_reply)], delta_ms=100, pace_s=0.05)
    session, seen = await run_with(server, body)
    first, second = session.truncates
    assert (first.item_id, first.content_index, first.audio_end_ms, first.accepted) == (
        truncated[0],
        0,
        120,
        True,
    )
    assert first.item_audio_ms is not None and first.item_audio_ms >= 200
    assert not second.accepted
    (response,) = [r for r in session.responses if r.item_id == truncated[0]]
    assert response.status == "cancelled" and response.audio_ms < 3000
    # What the client got of the item is what the emulator says it sent, and nothing after the cancel.
    got = b"".join(e.audio for e in seen if isinstance(e, oa.AudioDelta) and e.item_id == truncated[0])
    assert got == bytes(response.audio)
    assert not any(isinstance(e, oa.AudioDone) for e in seen)


async def test_end_call_function_flow() -> None:
    turn = oa.Turn(reply="Goodbye!", audio=oa.tone_ulaw(100), end_call=True)

    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        await configure(ws, reader)
        await ws.send_message(oa.user_text_message("The caller pressed 9."))
        await ws.send_message(oa.response_create_message())
        call = await reader.until(oa.FunctionCall)
        assert call.name == "end_call" and call.arguments == turn.end_call_arguments
        done = await reader.until(oa.ResponseDone)
        assert done.status == "completed"
        await ws.send_message(oa.function_call_output_message(call.call_id, '{"ok":true}'))
        # A second response.create while none is active is fine; while one is, the service refuses it.
        await ws.send_message(oa.response_create_message())
        await ws.send_message(oa.response_create_message())
        error = await reader.until(oa.ErrorEvent)
        assert error.code == "conversation_already_has_active_response"

    session, _ = await run_with(oa.OpenAIRealtimeServer(turns=[turn], pace_s=0.2), body)
    assert [(o.call_id, o.output) for o in session.function_outputs] == [
        (session.responses[0].call_id, '{"ok":true}')
    ]
    assert session.user_texts == ["The caller pressed 9."]
    assert session.response_creates == 3


# ----------------------------------------------------------------------------------------------------
# Faults


async def test_scripted_errors_and_an_abrupt_close() -> None:
    async def script(session: oa.RealtimeSession) -> None:
        await session.send_error(
            "server_error", None, "The server had an error while processing your request."
        )
        await session.drop()

    server = oa.OpenAIRealtimeServer(script)
    with trio.fail_after(TIMEOUT_S):
        async with running(server), client(server) as ws:
            reader = Reader(ws)
            await reader.until(oa.SessionCreated)
            error = await reader.until(oa.ErrorEvent)
            assert (error.type, error.label) == ("server_error", "server_error")
            with pytest.raises(trio_websocket.ConnectionClosed):
                await reader.next()
    (session,) = server.sessions
    assert session.closed_by == "drop" and session.errors_sent[0][0] is None


async def test_a_session_expires_like_the_service_does() -> None:
    server = oa.OpenAIRealtimeServer(max_session_s=0.2)
    with trio.fail_after(TIMEOUT_S):
        async with running(server), client(server) as ws:
            reader = Reader(ws)
            error = await reader.until(oa.ErrorEvent)
            assert error.code == "session_expired"
            with pytest.raises(trio_websocket.ConnectionClosed):
                await reader.next()
    assert server.sessions[0].closed_by == "service"


async def test_bad_client_frames_are_answered_counted_and_survived() -> None:
    async def body(ws: trio_websocket.WebSocketConnection, reader: Reader) -> None:
        await configure(ws, reader)
        await ws.send_message("not json")
        await ws.send_message(b"\x00\x01")
        await ws.send_message('{"type":"input_audio_buffer.append","audio":"@@"}')
        await ws.send_message('{"type":"no.such.event"}')
        for _ in range(4):
            await reader.until(oa.ErrorEvent)
        await speak(ws, SILENCE)

    session, _ = await run_with(oa.OpenAIRealtimeServer(), body)
    await session.wait_appended_bytes(FRAME)
    assert session.protocol_errors == {"bad_json": 1, "binary_frame": 1, "bad_base64": 1}
    assert session.unknown_types == ["no.such.event"]
    assert session.appended_audio == SILENCE


# ----------------------------------------------------------------------------------------------------
# The emulator's VAD, pure


def test_vad_reports_onset_and_the_end_of_the_closing_silence_in_audio_time() -> None:
    vad = EnergyVad(8000, threshold_dbfs=-40.0, start_ms=60)
    speech = codec.ulaw_decode(oa.tone_ulaw(300, level_dbfs=-20))
    quiet = codec.ulaw_decode(silence(1000))
    # Any chunking gives the same events: feed in odd-sized pieces.
    audio = quiet[:3200] + speech + quiet
    events = []
    for i in range(0, len(audio), 333):
        events += vad.feed(audio[i : i + 333], silence_ms=500)
    assert events == [VadStart(200), VadStop(200 + 300 + 500)]
    # A blip shorter than start_ms is not speech.
    assert vad.feed(codec.ulaw_decode(oa.tone_ulaw(40, level_dbfs=-20)) + quiet, silence_ms=500) == []
