"""The cascade client against the cascade emulator, over real HTTP on 127.0.0.1.

Every test runs a :class:`CascadeServer` (Hypercorn on port 0) and talks to it with :class:`CascadeClient`
(httpx under Trio), bounded by ``fail_after``. Failures are scripted on the emulator's side and must come
out as one :class:`CascadeError` with the right stage and kind, never with the key in it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace

import httpx
import numpy as np
import pytest
import trio

from bridge._config import Secret
from bridge.agents.cascade import (
    DEFAULT_API_KEY,
    SPEECH_RATE,
    CascadeClient,
    CascadeError,
    CascadeServer,
    CascadeSettings,
    ChatDone,
    ChatEvent,
    ChatReply,
    Conversation,
    SentenceSplitter,
    TextDelta,
    ToolCall,
    WavAudio,
    encode_wav,
    speech_ms,
    split_sentences,
    synthesize,
)

TIMEOUT_S = 10.0
END_CALL_TOOL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "End the call when the goal is met or refused.",
        "parameters": {
            "type": "object",
            "properties": {"achieved": {"type": "boolean"}, "summary": {"type": "string"}},
            "required": ["achieved", "summary"],
        },
    },
}


def settings_for(server: CascadeServer, key: str = DEFAULT_API_KEY) -> CascadeSettings:
    return CascadeSettings(
        stt_url=server.stt_url, llm_url=server.llm_url, tts_url=server.tts_url, api_key=Secret(key)
    )


@asynccontextmanager
async def client_for(server: CascadeServer, **kwargs: float) -> AsyncIterator[CascadeClient]:
    async with CascadeClient(settings_for(server), **kwargs) as client:
        yield client


def tone(ms: int, rate: int = 16000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


async def collect_chat(
    client: CascadeClient, messages: list[dict[str, object]], **kw: object
) -> list[ChatEvent]:
    out: list[ChatEvent] = []
    async with aclosing(client.chat_stream(messages, **kw)) as events:  # type: ignore[arg-type]
        async for event in events:
            out.append(event)
    return out


async def collect_speech(client: CascadeClient, text: str) -> bytes:
    audio = bytearray()
    async with aclosing(client.speech_stream(text)) as chunks:
        async for chunk in chunks:
            assert len(chunk) % 2 == 0
            audio += chunk
    return bytes(audio)


USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


# --------------------------------------------------------------------------------------------- transcription


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_transcription_returns_the_scripted_text_and_records_the_wav(rate: int) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(transcripts=["I'd like two pizzas."]) as server,
            client_for(server) as client,
        ):
            text = await client.transcribe(encode_wav(tone(700, rate), rate), language="en")
    assert text == "I'd like two pizzas."
    (request,) = server.stt_requests
    assert (request.status, request.rate, request.model, request.language) == (
        200,
        rate,
        "gpt-4o-mini-transcribe",
        "en",
    )
    assert request.duration_ms == pytest.approx(700, abs=1)
    assert request.pcm == tone(700, rate)


async def test_transcription_by_a_callable_of_the_audio() -> None:
    def hear(audio: WavAudio) -> str:
        return f"{round(audio.duration_ms)} ms at {audio.rate}"

    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(transcripts=hear) as server, client_for(server) as client:
            assert await client.transcribe(encode_wav(tone(500, 8000), 8000)) == "500 ms at 8000"


async def test_an_empty_transcript_is_the_empty_kind() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(transcripts=["   "]) as server, client_for(server) as client:
            with pytest.raises(CascadeError) as caught:
                await client.transcribe(encode_wav(tone(300), 16000))
    assert (caught.value.stage, caught.value.kind) == ("stt", "empty")


async def test_the_emulator_refuses_a_wav_that_is_not_8_or_16_khz_mono_pcm16() -> None:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(44100)
        writer.writeframes(b"\x00\x00" * 2000)
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer() as server, client_for(server) as client:
            for bad in (out.getvalue(), b"RIFF....not a wav"):
                with pytest.raises(CascadeError) as caught:
                    await client.transcribe(bad)
                assert (caught.value.kind, caught.value.status) == ("http_4xx", 400)
                assert "Invalid file format" in caught.value.detail
    assert [r.status for r in server.stt_requests] == [400, 400]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("429", "rate_limited"),
        ("500", "http_5xx"),
        ("400", "http_4xx"),
        ("malformed", "malformed"),
        ("cut", "incomplete"),
        ("stall", "timeout"),
    ],
)
async def test_transcription_failures_have_their_kind(fault: str, kind: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(transcripts=["never"]) as server,
            client_for(server, timeout_s=0.5) as client,
        ):
            server.fail_next("stt", fault)
            with pytest.raises(CascadeError) as caught:
                await client.transcribe(encode_wav(tone(200), 16000))
            assert (caught.value.stage, caught.value.kind) == ("stt", kind)
            # The fault was used once: the next request goes through.
            server.transcripts.append("fine now")
            assert await client.transcribe(encode_wav(tone(200), 16000)) in ("never", "fine now")


async def test_a_slow_transcription_is_the_timeout_kind() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(stt_latency_s=2.0) as server, client_for(server, timeout_s=0.3) as client:
            start = trio.current_time()
            with pytest.raises(CascadeError) as caught:
                await client.transcribe(encode_wav(tone(200), 16000))
            assert trio.current_time() - start < 1.5
    assert caught.value.kind == "timeout"


# ------------------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("key", ["", "sk-wrong-key-123456"])
async def test_every_endpoint_refuses_a_missing_or_wrong_key_without_echoing_it(key: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer() as server:
            async with CascadeClient(settings_for(server, key)) as client:
                errors: list[CascadeError] = []
                for attempt in (
                    client.transcribe(encode_wav(tone(100), 16000)),
                    collect_chat(client, USER),
                    collect_speech(client, "Hello."),
                ):
                    with pytest.raises(CascadeError) as caught:
                        await attempt
                    errors.append(caught.value)
    assert [(e.stage, e.kind, e.status) for e in errors] == [
        ("stt", "http_4xx", 401),
        ("llm", "http_4xx", 401),
        ("tts", "http_4xx", 401),
    ]
    assert server.unauthorized == 3
    for error in errors:
        assert key not in str(error) or not key
        assert key not in repr(error) or not key
        assert DEFAULT_API_KEY not in str(error)


async def test_the_key_is_in_no_repr() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer() as server, client_for(server) as client:
            for text in (repr(client), repr(client.settings), repr(server), str(client.settings.redacted())):
                assert DEFAULT_API_KEY not in text


# ------------------------------------------------------------------------------------------------------- chat


async def test_chat_streams_the_reply_token_by_token_and_records_the_history() -> None:
    reply = "Sure, Mr. Smith. Two large pepperonis cost 3.5 dollars more each! Anything else?"
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(replies=[reply]) as server, client_for(server) as client:
            conversation = Conversation("You take pizza orders.")
            conversation.add_user("Two large pepperonis, please.")
            events = await collect_chat(client, conversation.messages())
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 10 and "".join(deltas) == reply
    assert events[-1] == ChatDone("stop")
    (request,) = server.chat_requests
    assert request.stream and request.model == "gpt-4o-mini"
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.messages[1]["content"] == "Two large pepperonis, please."
    splitter = SentenceSplitter()
    sentences = [s for d in deltas for s in splitter.feed(d)] + splitter.flush()
    assert sentences == [
        "Sure, Mr. Smith.",
        "Two large pepperonis cost 3.5 dollars more each!",
        "Anything else?",
    ]


async def test_chat_pacing_first_token_then_tokens_per_second() -> None:
    reply = "One two three four five six seven eight nine ten."
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(replies=[reply], first_token_s=0.3, tokens_per_s=50) as server,
            client_for(server) as client,
        ):
            start = trio.current_time()
            times: list[float] = []
            async with aclosing(client.chat_stream(USER)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        times.append(trio.current_time() - start)
    # Generous bounds: the pacing is the emulator's, the socket adds little; speed is not asserted here.
    assert 0.25 <= times[0] < 1.5
    assert times[-1] - times[0] >= (len(times) - 1) / 50 * 0.8


async def test_end_call_arrives_as_a_whole_tool_call_when_offered() -> None:
    scripted = ChatReply.end_call("Great, your order is placed. Goodbye!", achieved=True, summary="2 pizzas")
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(replies=[scripted, scripted]) as server, client_for(server) as client:
            events = await collect_chat(client, USER, tools=[END_CALL_TOOL])
            without_tool = await collect_chat(client, USER)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].name == "end_call" and calls[0].call_id.startswith("call_")
    assert calls[0].arguments == {"achieved": True, "summary": "2 pizzas"}
    assert events[-1] == ChatDone("tool_calls")
    assert (
        "".join(e.text for e in events if isinstance(e, TextDelta)) == "Great, your order is placed. Goodbye!"
    )
    assert server.chat_requests[0].tools == ("end_call",)
    # Not offered: a real model cannot call it.
    assert not [e for e in without_tool if isinstance(e, ToolCall)] and without_tool[-1] == ChatDone("stop")


async def test_a_tool_call_alone_is_a_reply() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(replies=[ChatReply.end_call(achieved=False, summary="refused")]) as server:
            async with client_for(server) as client:
                events = await collect_chat(client, USER, tools=[END_CALL_TOOL])
    assert events == [
        ToolCall(events[0].call_id, "end_call", {"achieved": False, "summary": "refused"}),  # type: ignore[union-attr]
        ChatDone("tool_calls"),
    ]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("429", "rate_limited"),
        ("500", "http_5xx"),
        ("400", "http_4xx"),
        ("cut", "incomplete"),
        ("malformed", "malformed"),
        ("malformed_sse", "malformed"),
        ("error_event", "http_5xx"),
        ("stall", "timeout"),
    ],
)
async def test_chat_failures_have_their_kind(fault: str, kind: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(
            replies=["A fine answer that is long enough to be cut halfway, surely."] * 2
        ) as server:
            async with client_for(server, timeout_s=0.5) as client:
                server.fail_next("llm", fault)
                received: list[ChatEvent] = []
                with pytest.raises(CascadeError) as caught:
                    async with aclosing(client.chat_stream(USER)) as events:
                        async for event in events:
                            received.append(event)
                assert (caught.value.stage, caught.value.kind) == ("llm", kind)
                assert not any(isinstance(e, ChatDone) for e in received)
                if fault in ("cut", "malformed", "malformed_sse", "error_event"):
                    assert any(isinstance(e, TextDelta) for e in received)  # it failed halfway
                after = await collect_chat(client, USER)
                assert after[-1] == ChatDone("stop")


async def test_a_stream_that_stalls_halfway_is_the_timeout_kind() -> None:
    # tokens_per_s 1: the gap after the first token is longer than the client's bound.
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(replies=["Slow and steady."], tokens_per_s=1) as server:
            async with client_for(server, timeout_s=0.4) as client:
                with pytest.raises(CascadeError) as caught:
                    await collect_chat(client, USER)
    assert (caught.value.kind, caught.value.detail) == ("timeout", "the stream stalled")


async def test_a_stream_over_its_total_bound_is_the_timeout_kind() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(replies=["word " * 40], tokens_per_s=40) as server:
            async with client_for(server, timeout_s=0.5, max_stream_s=0.3) as client:
                with pytest.raises(CascadeError) as caught:
                    await collect_chat(client, USER)
    assert caught.value.kind == "timeout" and "lasted over" in caught.value.detail


async def test_an_empty_answer_is_the_empty_kind() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(replies=[""]) as server, client_for(server) as client:
            with pytest.raises(CascadeError) as caught:
                await collect_chat(client, USER)
    assert (caught.value.stage, caught.value.kind) == ("llm", "empty")


async def test_cancelling_a_stream_closes_its_request_at_once() -> None:
    # A barge-in cancels the scope running the stream: the client must not wait for the rest.
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(replies=["word " * 200], tokens_per_s=20) as server,
            client_for(server) as client,
        ):
            got = 0
            with trio.move_on_after(0.3):
                async with aclosing(client.chat_stream(USER)) as events:
                    async for _ in events:
                        got += 1
            assert 0 < got < 50
            # The call goes on with the same client.
            assert (await collect_chat(client, USER))[-1] == ChatDone("stop")


async def test_the_emulator_refuses_a_bad_chat_request() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer() as server:
            headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
            async with httpx.AsyncClient(headers=headers) as http:
                statuses = [
                    (await http.post(server.llm_url, json=body)).status_code
                    for body in (
                        {"model": "m", "messages": []},
                        {"messages": [{"role": "user", "content": "x"}]},
                        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
                        {
                            "model": "m",
                            "messages": [{"role": "user", "content": "x"}],
                            "tools": [{"type": "x"}],
                        },
                    )
                ]
                answer = await http.post(server.llm_url, json={"model": "m", "messages": USER})
                wrong = await http.get(server.llm_url)
                missing = await http.post(server.base_url + "/v1/nothing", json={})
    assert statuses == [400, 400, 400, 400]
    assert answer.json()["choices"][0]["message"]["content"] == "You said: Hi"
    assert (wrong.status_code, missing.status_code) == (405, 404)
    assert answer.json()["object"] == "chat.completion"


# ----------------------------------------------------------------------------------------------------- speech


async def test_speech_streams_deterministic_pcm_in_chunks() -> None:
    text = "Your two pizzas are on the way."
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(tts_chunk_ms=50) as server, client_for(server) as client:
            first = await collect_speech(client, text)
            second = await collect_speech(client, text)
    assert first == second == synthesize(text)
    assert len(first) / 2 / SPEECH_RATE * 1000 == pytest.approx(speech_ms(text), abs=1)
    (request, _) = server.speech_requests
    assert (request.model, request.voice, request.input, request.response_format) == (
        "gpt-4o-mini-tts",
        "alloy",
        text,
        "pcm",
    )


async def test_speech_first_byte_latency_and_realtime_pacing() -> None:
    text = "One moment please."  # ~1 s of speech
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(tts_first_byte_s=0.2, tts_realtime_factor=4.0) as server,
            client_for(server) as client,
        ):
            start = trio.current_time()
            stamps: list[float] = []
            async with aclosing(client.speech_stream(text)) as chunks:
                async for _ in chunks:
                    stamps.append(trio.current_time() - start)
    assert 0.15 <= stamps[0] < 1.5
    assert stamps[-1] - stamps[0] >= speech_ms(text) / 1000 / 4 * 0.6


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("429", "rate_limited"),
        ("500", "http_5xx"),
        ("400", "http_4xx"),
        ("cut", "incomplete"),
        ("malformed", "malformed"),
        ("empty", "empty"),
        ("stall", "timeout"),
    ],
)
async def test_speech_failures_have_their_kind(fault: str, kind: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(tts_chunk_ms=20) as server, client_for(server, timeout_s=0.5) as client:
            server.fail_next("tts", fault)
            with pytest.raises(CascadeError) as caught:
                await collect_speech(client, "This sentence is long enough to be cut in half.")
            assert (caught.value.stage, caught.value.kind) == ("tts", kind)
            assert await collect_speech(client, "Fine.") == synthesize("Fine.")


async def test_the_emulator_refuses_a_bad_speech_request() -> None:
    good = {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "pcm"}
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer() as server:
            headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
            async with httpx.AsyncClient(headers=headers) as http:
                statuses = [
                    (await http.post(server.tts_url, json=body)).status_code
                    for body in (
                        {**good, "input": ""},
                        {**good, "input": "x" * 4097},
                        {**good, "voice": None},
                        {**good, "response_format": "mp3"},
                        {**good, "response_format": "ogg"},
                        {k: v for k, v in good.items() if k != "model"},
                    )
                ]
                ok = await http.post(server.tts_url, json=good)
                not_json = await http.post(server.tts_url, content=b"{")
    assert statuses == [400] * 6 and not_json.status_code == 400
    assert ok.status_code == 200 and ok.content == synthesize("Hi.")
    assert [r.status for r in server.speech_requests] == [400] * 6 + [200, 400]


async def test_a_refused_connection_is_the_connect_kind() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer() as server:
            settings = settings_for(server)
        # The server is gone: nothing listens on its port any more.
        async with CascadeClient(settings, timeout_s=2.0) as client:
            with pytest.raises(CascadeError) as caught:
                await client.transcribe(encode_wav(tone(100), 16000))
    assert (caught.value.stage, caught.value.kind) == ("stt", "connect")


async def test_a_local_server_without_a_key() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(api_key=None, replies=["Hello!"]) as server:
            async with CascadeClient(replace(settings_for(server), api_key=Secret(""))) as client:
                events = await collect_chat(client, USER)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello!"


async def test_no_log_line_carries_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(TIMEOUT_S):
        async with CascadeServer(transcripts=["Hello."]) as server, client_for(server) as client:
            await client.transcribe(encode_wav(tone(200), 16000))
            await collect_chat(client, USER)
            await collect_speech(client, "Hello.")
            server.fail_next("llm", "cut")
            with pytest.raises(CascadeError):
                await collect_chat(client, USER)
        async with CascadeServer() as server, client_for(server, timeout_s=0.3) as client:
            server.fail_next("tts", "stall")
            with pytest.raises(CascadeError):
                await collect_speech(client, "Hello.")
    assert caplog.records  # httpx and the emulator did log
    assert DEFAULT_API_KEY not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_model_is_given_only_what_the_caller_heard_of_an_interrupted_answer() -> None:
    from bridge.agents.cascade import SpokenSentence

    answer = "Sure, two large pepperonis. That will be twenty dollars and fifty cents. Anything else?"
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(replies=[answer, "Okay, three then."]) as server,
            client_for(server) as client,
        ):
            conversation = Conversation("Take pizza orders.")
            conversation.add_user("Two pepperonis.")
            events = await collect_chat(client, conversation.messages())
            said = "".join(e.text for e in events if isinstance(e, TextDelta))
            spoken = [SpokenSentence(s, speech_ms(s)) for s in split_sentences(said)]
            heard_ms = spoken[0].audio_ms + spoken[1].audio_ms // 2  # cut halfway through sentence 2
            conversation.add_interrupted(spoken, heard_ms)
            conversation.add_user("Make it three.")
            await collect_chat(client, conversation.messages())
    history = server.chat_requests[1].messages
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    heard = history[2]["content"]
    assert heard.startswith("Sure, two large pepperonis. That will be") and "fifty" not in heard
    assert "Anything else?" not in heard


async def test_speech_of_one_sentence_overlaps_the_chat_stream_on_one_client() -> None:
    # The leg speaks sentence 1 while the model still writes sentence 2: both requests at once, one client.
    answer = "First sentence here. Second sentence follows slowly. Third one ends it."
    with trio.fail_after(TIMEOUT_S):
        async with (
            CascadeServer(replies=[answer], tokens_per_s=20, tts_first_byte_s=0.05) as server,
            client_for(server) as client,
        ):
            audio: dict[str, bytes] = {}
            stamps: dict[str, float] = {}

            async def speak(sentence: str) -> None:
                audio[sentence] = await collect_speech(client, sentence)
                stamps[sentence] = trio.current_time()

            splitter = SentenceSplitter()
            async with trio.open_nursery() as nursery:
                async with aclosing(client.chat_stream(USER)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            for sentence in splitter.feed(event.text):
                                nursery.start_soon(speak, sentence)
                chat_done = trio.current_time()
                for sentence in splitter.flush():
                    nursery.start_soon(speak, sentence)
    assert set(audio) == set(split_sentences(answer))
    assert all(audio[s] == synthesize(s) for s in audio)
    assert stamps["First sentence here."] < chat_done  # its speech finished while the chat still streamed
