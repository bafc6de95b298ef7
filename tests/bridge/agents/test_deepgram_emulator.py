"""The Deepgram Voice Agent emulator behaves like the service, against a plain trio-websocket client.

Everything on 127.0.0.1, port 0, bounded by ``fail_after``. The client here reads every frame through the
wire module's bridge-side parser, so both ends of the protocol meet on a real socket.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

import codec
from bridge.agents import deepgram as dg

AUTH = [(b"authorization", f"Token {dg.DEFAULT_API_KEY}".encode())]
FRAME = 160  # 20 ms of μ-law 8 kHz, as Twilio sends it
SPEECH = codec.ulaw_encode(dg.speech_like_pcm(500, 8000).tobytes())
SILENCE = b"\xff" * 4800  # 600 ms of μ-law silence: ends a turn (the emulator's default is 400 ms)
SETTINGS = dg.settings_message(dg.AgentSettings("You are a helpful assistant"))


class Client:
    """A bridge-side client: records every event, with agent audio as ``AgentAudio``."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.events: list[Any] = []
        self.close_code: int | None = None
        self.closed = trio.Event()
        self._changed = trio.Event()

    async def read_all(self) -> None:
        try:
            while True:
                self.events.append(dg.parse_event(await self.ws.get_message()))
                self._changed.set()
                self._changed = trio.Event()
        except trio_websocket.ConnectionClosed as exc:
            self.close_code = exc.reason.code if exc.reason else None
        finally:
            self.closed.set()
            self._changed.set()

    async def wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            assert not self.closed.is_set(), f"closed ({self.close_code}) after {self.names()}"
            await self._changed.wait()

    async def wait_for(self, cls: type, count: int = 1) -> Any:
        await self.wait(lambda: len(self.of(cls)) >= count)
        return self.of(cls)[count - 1]

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    def names(self) -> list[str]:
        """Event type names, with runs of audio frames folded into one ``audio``."""
        names: list[str] = []
        for e in self.events:
            name = "audio" if isinstance(e, dg.AgentAudio) else type(e).__name__
            if not (name == "audio" and names and names[-1] == "audio"):
                names.append(name)
        return names

    def audio(self) -> bytes:
        return b"".join(e.audio for e in self.of(dg.AgentAudio))

    async def send_audio(self, audio: bytes) -> None:
        for start in range(0, len(audio), FRAME):
            await self.ws.send_message(audio[start : start + FRAME])

    async def start(self, settings: str = SETTINGS) -> None:
        await self.wait_for(dg.Welcome)
        await self.ws.send_message(settings)
        await self.wait_for(dg.SettingsApplied)


def expected_answer(turn: dg.Turn) -> bytes:
    return codec.ulaw_encode(dg.speech_like_pcm(turn.answer_ms, 8000).tobytes())


async def run(server: dg.DeepgramAgentServer, body: Callable[[Client], Any], headers: Any = AUTH) -> None:
    """Serves ``server``, connects one client, runs ``body(client)`` with the client reading throughout."""
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with trio_websocket.open_websocket_url(server.url, extra_headers=headers) as ws:
            async with trio.open_nursery() as inner:
                client = Client(ws)
                inner.start_soon(client.read_all)
                await body(client)
                inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


def bounded(seconds: float = 10.0) -> Callable[[Any], Any]:
    def decorate(test: Any) -> Any:
        @functools.wraps(test)
        async def wrapper(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        return wrapper

    return decorate


# ------------------------------------------------------------------------------------------------ handshake


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [(b"authorization", b"Token wrong")],
        [(b"authorization", f"Bearer {dg.DEFAULT_API_KEY}".encode())],
    ],
)
@bounded()
async def test_a_missing_or_wrong_key_is_refused_with_401(headers: Any) -> None:
    server = dg.DeepgramAgentServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(server.url, extra_headers=headers):
                pass
        assert info.value.status_code == 401
        assert server.sessions[0].rejected_status == 401 and not server.sessions[0].audio_frames
        nursery.cancel_scope.cancel()
    assert dg.DEFAULT_API_KEY not in repr(server)


@bounded()
async def test_a_scripted_http_status_rejects_every_upgrade() -> None:
    server = dg.DeepgramAgentServer(reject_status=503)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(server.url, extra_headers=AUTH):
                pass
        assert info.value.status_code == 503
        nursery.cancel_scope.cancel()


@bounded()
async def test_welcome_then_settings_then_settings_applied() -> None:
    server = dg.DeepgramAgentServer()

    async def body(client: Client) -> None:
        await client.start()
        session = server.sessions[0]
        assert client.names() == ["Welcome", "SettingsApplied"]
        assert client.of(dg.Welcome)[0].request_id == session.request_id
        assert session.settings is not None and session.settings.input == dg.AudioFormat("mulaw", 8000)
        assert session.settings.client_side_functions == {"end_call"} and session.settings_applied

    await run(server, body)


@pytest.mark.parametrize(
    "settings",
    [
        SETTINGS.replace('"sample_rate":8000', '"sample_rate":8000.0', 1),
        orjson.dumps({**orjson.loads(SETTINGS), "type": "SettingsConfiguration"}).decode(),
        '{"type":"Settings","audio":{"input":{"encoding":"mulaw","sample_rate":8000}}}',
        "{not json",
        '{"type":"KeepAlive","pad":"' + "x" * 300_000 + '"}',
    ],
    ids=["float-for-int", "old-format", "missing-agent", "bad-json", "too-large"],
)
@bounded()
async def test_unparsable_settings_get_an_error_and_a_close(settings: str) -> None:
    server = dg.DeepgramAgentServer()

    async def body(client: Client) -> None:
        await client.wait_for(dg.Welcome)
        await client.ws.send_message(settings)
        with trio.fail_after(5):
            await client.closed.wait()
        session = server.sessions[0]
        error = client.of(dg.AgentError)[0]
        assert error.code == "UNPARSABLE_CLIENT_MESSAGE" and error.description
        assert client.names() == ["Welcome", "AgentError"]
        assert session.settings is None and not session.settings_applied
        assert sum(session.protocol_errors.values()) == 1

    await run(server, body)


@bounded()
async def test_audio_before_settings_applied_is_recorded_as_a_violation_and_kept() -> None:
    server = dg.DeepgramAgentServer(settings_delay_s=0.2)

    async def body(client: Client) -> None:
        await client.wait_for(dg.Welcome)
        await client.ws.send_message(b"\x01" * 100)  # before Settings
        await client.ws.send_message(SETTINGS)
        await client.ws.send_message(b"\x02" * 60)  # after Settings, before SettingsApplied
        await client.wait_for(dg.SettingsApplied)
        await client.ws.send_message(b"\x03" * 40)
        session = server.sessions[0]
        await session.wait_audio_bytes(200)
        assert session.audio_before_settings_applied == 160
        assert session.received_audio == b"\x01" * 100 + b"\x02" * 60 + b"\x03" * 40
        assert len(session.events_of("audio_before_settings_applied")) == 1

    await run(server, body)


# --------------------------------------------------------------------------------------------- turn-taking


@bounded()
async def test_a_turn_user_started_speaking_then_the_answer_and_agent_audio_done() -> None:
    turn = dg.Turn("What time is it?", "It is noon.", answer_ms=700)
    server = dg.DeepgramAgentServer(turns=[turn], chunk_bytes=320)

    async def body(client: Client) -> None:
        await client.start()
        sent = SILENCE[:800] + SPEECH + SILENCE
        await client.send_audio(sent)
        await client.wait_for(dg.AgentAudioDone)
        assert client.names() == [
            "Welcome",
            "SettingsApplied",
            "UserStartedSpeaking",
            "ConversationText",
            "AgentThinking",
            "AgentStartedSpeaking",
            "ConversationText",
            "audio",
            "AgentAudioDone",
        ]
        texts = client.of(dg.ConversationText)
        assert texts == [
            dg.ConversationText("user", turn.user_text),
            dg.ConversationText("assistant", turn.answer_text),
        ]
        assert client.of(dg.AgentStartedSpeaking) == [dg.AgentStartedSpeaking(*server.latencies_s)]
        assert client.audio() == expected_answer(turn)
        assert {len(e.audio) for e in client.of(dg.AgentAudio)[:-1]} == {320}
        session = server.sessions[0]
        await session.wait_audio_bytes(len(sent))
        assert session.received_audio == sent  # every byte, in order
        assert session.answers[0].done and not session.answers[0].interrupted

    await run(server, body)


@bounded()
async def test_barge_in_stops_the_old_answer_and_the_next_answer_plays_whole() -> None:
    turns = [
        dg.Turn("Tell me a story.", "Once upon a time…", answer_ms=6000),
        dg.Turn("Stop.", "Okay.", answer_ms=500),
    ]
    server = dg.DeepgramAgentServer(turns=turns, pace_s=0.02)

    async def body(client: Client) -> None:
        await client.start()
        await client.send_audio(SPEECH + SILENCE)
        await client.wait_for(dg.AgentAudio, 3)  # the long answer is playing
        await client.send_audio(SPEECH)  # the caller barges in
        await client.wait_for(dg.UserStartedSpeaking, 2)
        await client.send_audio(SILENCE)
        await client.wait_for(dg.AgentAudioDone)
        names = client.names()
        barge = [i for i, n in enumerate(names) if n == "UserStartedSpeaking"][1]
        # Nothing of the old answer after UserStartedSpeaking: next comes the new turn's transcript.
        assert names[barge - 1] == "audio" and names[barge + 1] == "ConversationText"
        assert names[barge:].count("audio") == 1 and names[-1] == "AgentAudioDone"
        assert client.of(dg.ConversationText)[-1] == dg.ConversationText("assistant", "Okay.")
        first, second = server.sessions[0].answers
        assert first.interrupted and not first.done and 0 < first.sent_bytes < first.total_bytes
        assert second.done and second.sent_bytes == second.total_bytes
        assert client.audio() == expected_answer(turns[0])[: first.sent_bytes] + expected_answer(turns[1])

    await run(server, body)


@bounded()
async def test_the_greeting_is_spoken_first() -> None:
    server = dg.DeepgramAgentServer()
    settings = dg.settings_message(dg.AgentSettings("p", greeting="Hello there!"))

    async def body(client: Client) -> None:
        await client.start(settings)
        await client.wait_for(dg.AgentAudioDone)
        assert client.names() == ["Welcome", "SettingsApplied", "ConversationText", "audio", "AgentAudioDone"]
        assert client.of(dg.ConversationText) == [dg.ConversationText("assistant", "Hello there!")]

    await run(server, body)


# -------------------------------------------------------------------------------------- functions and text


@bounded()
async def test_end_call_is_requested_client_side_and_the_response_recorded() -> None:
    server = dg.DeepgramAgentServer(turns=[dg.Turn("Bye.", "Goodbye!", answer_ms=300, end_call=True)])

    async def body(client: Client) -> None:
        await client.start()
        await client.send_audio(SPEECH + SILENCE)
        request = await client.wait_for(dg.FunctionCallRequest)
        (call,) = request.functions
        assert (call.name, call.arguments, call.client_side) == ("end_call", "{}", True)
        assert client.names()[-3:] == ["audio", "AgentAudioDone", "FunctionCallRequest"]
        await client.ws.send_message(dg.function_call_response_message(call.id, call.name, "ending the call"))
        response = await server.sessions[0].wait_function_responses()
        assert response == dg.FunctionCallResponse(call.id, "end_call", "ending the call")

    await run(server, body)


@bounded()
async def test_end_call_is_not_requested_when_it_was_not_offered() -> None:
    server = dg.DeepgramAgentServer(turns=[dg.Turn(answer_ms=200, end_call=True)])

    async def body(client: Client) -> None:
        await client.start(dg.settings_message(dg.AgentSettings("p", functions=())))
        await client.send_audio(SPEECH + SILENCE)
        await client.wait_for(dg.AgentAudioDone)
        await server.sessions[0].wait_event("end_call_not_offered")
        assert not client.of(dg.FunctionCallRequest)

    await run(server, body)


@bounded()
async def test_injected_user_text_is_answered_and_agent_text_refused_while_speaking() -> None:
    server = dg.DeepgramAgentServer(turns=[dg.Turn(answer_ms=3000)])

    async def body(client: Client) -> None:
        await client.start()
        await client.ws.send_message(dg.inject_user_message("The caller pressed 5"))
        await client.wait_for(dg.AgentAudio)
        await client.ws.send_message(dg.inject_agent_message("Are you still there?"))
        refused = await client.wait_for(dg.InjectionRefused)
        assert refused.message == "Are you still there?"
        await client.wait_for(dg.AgentAudioDone)
        assert client.of(dg.ConversationText)[0] == dg.ConversationText("user", "The caller pressed 5")
        await client.ws.send_message(dg.inject_agent_message("Still there?"))
        await client.wait_for(dg.AgentAudioDone, 2)
        assert client.of(dg.ConversationText)[-1] == dg.ConversationText("assistant", "Still there?")
        session = server.sessions[0]
        assert session.injected_user == ["The caller pressed 5"]
        assert session.injected_agent == ["Are you still there?", "Still there?"]

    await run(server, body)


# ------------------------------------------------------------------------------------------ faults, timeout


@bounded()
async def test_scripted_warning_error_unknown_type_then_abrupt_close() -> None:
    async def script(session: dg.DeepgramSession) -> None:
        await session.warning("The LLM is slow today.", "THINK_SLOW")
        await session.error("Something failed.", "INTERNAL")
        await session.send_unknown("BrandNewEvent")
        await session.drop()

    server = dg.DeepgramAgentServer(script)

    async def body(client: Client) -> None:
        await client.start()
        with trio.fail_after(5):
            await client.closed.wait()
        assert client.names() == ["Welcome", "SettingsApplied", "AgentWarning", "AgentError", "Unknown"]
        assert client.of(dg.Unknown)[0].type == "BrandNewEvent"
        assert client.close_code == 1006 and server.sessions[0].closed_by == "drop"

    await run(server, body)


@bounded()
async def test_a_silent_session_times_out_and_keepalive_keeps_it_open() -> None:
    server = dg.DeepgramAgentServer(idle_timeout_s=0.3)

    async def body(client: Client) -> None:
        await client.start()
        for _ in range(8):  # 0.8 s, well past the timeout, kept alive
            await trio.sleep(0.1)
            await client.ws.send_message(dg.keep_alive_message())
        assert not client.closed.is_set()
        session = server.sessions[0]
        await session.wait_until(lambda: len(session.keepalives) == 8)
        started = trio.current_time()
        with trio.fail_after(5):
            await client.closed.wait()
        assert 0.2 <= trio.current_time() - started < 2.0
        error = client.of(dg.AgentError)[0]
        assert error.code == "CLIENT_MESSAGE_TIMEOUT" and client.names()[-1] == "AgentError"
        assert session.closed_by == "agent"

    await run(server, body)


@bounded()
async def test_a_script_can_speak_and_ask_for_a_server_side_function() -> None:
    async def script(session: dg.DeepgramSession) -> None:
        answer = await session.speak(dg.Turn(answer_text="One moment.", answer_ms=200))
        assert answer.done and answer.sent_bytes == answer.total_bytes == 1600
        await session.request_function("lookup", '{"q":"x"}', client_side=False)

    server = dg.DeepgramAgentServer(script)

    async def body(client: Client) -> None:
        await client.start()
        request = await client.wait_for(dg.FunctionCallRequest)
        assert client.names()[2:] == ["ConversationText", "audio", "AgentAudioDone", "FunctionCallRequest"]
        assert request.functions[0].client_side is False and request.functions[0].arguments == '{"q":"x"}'
        assert len(client.audio()) == 1600 and not server.sessions[0].errors

    await run(server, body)


@bounded()
async def test_a_second_settings_gets_an_error_but_the_session_goes_on() -> None:
    server = dg.DeepgramAgentServer()

    async def body(client: Client) -> None:
        await client.start()
        await client.ws.send_message(SETTINGS)
        error = await client.wait_for(dg.AgentError)
        assert error.code == "SETTINGS_ALREADY_APPLIED"
        await client.ws.send_message(dg.keep_alive_message())
        await server.sessions[0].wait_until(lambda: len(server.sessions[0].keepalives) == 1)
        assert not client.closed.is_set()

    await run(server, body)
