"""The three OpenAI-compatible endpoints of a cascade on loopback: scriptable, paced, recording everything.

Theory of operation
-------------------
:class:`CascadeServer` serves a raw ASGI app with Hypercorn's trio worker on 127.0.0.1 (the bridge's own
:func:`~bridge._server.serve_in_process`), as an async context manager or with
``await nursery.start(server.serve)``. A raw ASGI app rather than Quart because the faults need control of
the wire: a body cut halfway is an app that returns without its last ``more_body=False`` message, which
Hypercorn turns into a connection closed mid-body, as a crashed upstream does.

Every request is checked the way the service checks it (``Authorization: Bearer <key>`` or 401 with
OpenAI's error body, the key never echoed or logged; then the body, 400 with OpenAI's error shape for
what it refuses), recorded (:class:`SttRequest`, :class:`ChatRequest`, :class:`SpeechRequest`, with
``trio.current_time()`` of its arrival), and answered:

- ``POST /v1/audio/transcriptions``: a multipart form with ``file`` (a WAV of mono PCM16 at 8 or 16 kHz)
  and ``model``; after ``stt_latency_s``, ``{"text": ...}`` from the scripted ``transcripts`` (a list used
  in order, then ``""``; or a callable of the decoded WAV).
- ``POST /v1/chat/completions``: with ``stream: true``, server-sent ``chat.completion.chunk`` events: the
  first after ``first_token_s``, then one token (:func:`tokenize`) per ``1/tokens_per_s`` s, the scripted
  tool calls in OpenAI's ``tool_calls`` delta format, the ``finish_reason``, ``data: [DONE]``. The reply
  is the next scripted :class:`ChatReply` (or text), or, when the script is spent, an echo of the last user
  message. Without ``stream``, the whole ``chat.completion`` at once.
- ``POST /v1/audio/speech``: ``response_format: "pcm"`` only; after ``tts_first_byte_s``, the
  deterministic speech of :func:`~bridge.agents.cascade._audio.synthesize` in ``tts_chunk_ms`` chunks
  (chunked transfer), paced at ``tts_realtime_factor`` times real time (0: as fast as the socket takes it,
  which real services approach).

Faults are scripted per stage with :meth:`CascadeServer.fail_next` (see
:data:`~bridge.agents.cascade._emulator_data.FAULTS`); each is used by one request. A ``stall`` ends when
the client disconnects or after ``stall_s``, so the server always shuts down.

Waiters (:meth:`CascadeServer.wait_for_requests`) wake on a "something changed" event replaced after
every record.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final, Self

import orjson
import trio

from bridge._server import serve_in_process
from bridge.agents.cascade._audio import SPEECH_RATE, WavAudio, decode_wav, synthesize
from bridge.agents.cascade._chat import encode_chunk
from bridge.agents.cascade._emulator_data import (
    FAULTS,
    ChatReply,
    ChatRequest,
    SpeechRequest,
    SttRequest,
    tokenize,
)
from bridge.agents.cascade._sse import encode_data

__all__ = ["DEFAULT_API_KEY", "CascadeServer"]

log = logging.getLogger("bridge.emulators.cascade")

DEFAULT_API_KEY: Final = "sk-cascade-emulator"
#: OpenAI's upload limit for transcription files.
MAX_BODY_BYTES: Final = 25 * 1024 * 1024
#: OpenAI's limit on the text of one speech request.
MAX_SPEECH_CHARS: Final = 4096
STT_PATH: Final = "/v1/audio/transcriptions"
LLM_PATH: Final = "/v1/chat/completions"
TTS_PATH: Final = "/v1/audio/speech"
_SPEECH_FORMATS: Final = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
_STT_FORMATS: Final = frozenset({"json", "text", "verbose_json"})
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Transcriber = Callable[[WavAudio], str]
Replier = Callable[[Sequence[Mapping[str, Any]]], "ChatReply | str"]


class _Refused(Exception):
    """A request the service refuses: answered with OpenAI's error body."""

    def __init__(
        self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error"
    ):
        super().__init__(status, message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


class CascadeServer:
    """OpenAI-compatible transcription, chat and speech endpoints on 127.0.0.1 (see the module docstring).

    Args:
        api_key: the bearer key every request must carry; ``None`` accepts requests without one.
        transcripts: the transcription of each utterance in order (then ``""``), or a callable of the WAV.
        replies: the chat answers in order (:class:`ChatReply` or plain text), or a callable of the messages.
        stt_latency_s: time from the request to the transcription's answer.
        first_token_s, tokens_per_s: the chat stream's pacing (``tokens_per_s`` 0: no wait between tokens).
        tts_first_byte_s, tts_chunk_ms, tts_realtime_factor: the speech stream's pacing.
        ms_per_char: the length of the emulated speech per character.
        stall_s: bound on a scripted stall.
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        transcripts: Sequence[str] | Transcriber = (),
        replies: Sequence[ChatReply | str] | Replier = (),
        stt_latency_s: float = 0.0,
        first_token_s: float = 0.0,
        tokens_per_s: float = 0.0,
        tts_first_byte_s: float = 0.0,
        tts_chunk_ms: int = 100,
        tts_realtime_factor: float = 0.0,
        ms_per_char: int = 60,
        stall_s: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        if tts_chunk_ms < 10:
            raise ValueError(f"tts_chunk_ms must be at least 10, got {tts_chunk_ms!r}")
        self._api_key = api_key
        self._transcriber: Transcriber | None = None
        self.transcripts: deque[str] = deque()
        if callable(transcripts):
            self._transcriber = transcripts
        else:
            self.transcripts.extend(transcripts)
        self._replier: Replier | None = None
        self.replies: deque[ChatReply | str] = deque()
        if callable(replies):
            self._replier = replies
        else:
            self.replies.extend(replies)
        self.stt_latency_s = stt_latency_s
        self.first_token_s = first_token_s
        self.tokens_per_s = tokens_per_s
        self.tts_first_byte_s = tts_first_byte_s
        self.tts_chunk_ms = tts_chunk_ms
        self.tts_realtime_factor = tts_realtime_factor
        self.ms_per_char = ms_per_char
        self.stall_s = stall_s
        self.host = host
        self.stt_requests: list[SttRequest] = []
        self.chat_requests: list[ChatRequest] = []
        self.speech_requests: list[SpeechRequest] = []
        #: Requests refused for a missing or wrong key, and for an unknown path, in order of arrival.
        self.unauthorized = 0
        self.not_found = 0
        self._faults: dict[str, deque[str]] = {stage: deque() for stage in FAULTS}
        self._changed = trio.Event()
        self._base_url: str | None = None
        self._nursery: trio.Nursery | None = None
        self._manager: Any = None

    def __repr__(self) -> str:  # no key
        return (
            f"CascadeServer(base_url={self._base_url!r}, stt={len(self.stt_requests)}, "
            f"chat={len(self.chat_requests)}, speech={len(self.speech_requests)})"
        )

    # --------------------------------------------------------------------------------------------- lifetime

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the server is not running")
        return self._base_url

    @property
    def stt_url(self) -> str:
        return self.base_url + STT_PATH

    @property
    def llm_url(self) -> str:
        return self.base_url + LLM_PATH

    @property
    def tts_url(self) -> str:
        return self.base_url + TTS_PATH

    async def serve(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; use ``await nursery.start(server.serve)``."""
        async with trio.open_nursery() as nursery:
            self._base_url = await nursery.start(partial(serve_in_process, self._app, host=self.host))
            log.debug("cascade emulator on %s", self._base_url)
            task_status.started(self)

    async def __aenter__(self) -> Self:
        self._manager = trio.open_nursery()
        self._nursery = await self._manager.__aenter__()
        try:
            await self._nursery.start(self.serve)
        except BaseException as exc:
            self._nursery.cancel_scope.cancel()
            await self._manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self._base_url = None
        # The body's own exception goes on as it is (not wrapped in the nursery's ExceptionGroup): the
        # nursery is told of none, and only a failure of the server's own tasks comes out of it.
        await self._manager.__aexit__(None, None, None)
        return False

    # ------------------------------------------------------------------------------------------- scripting

    def fail_next(self, stage: str, fault: str, times: int = 1) -> None:
        """The next ``times`` requests of ``stage`` (``stt``, ``llm``, ``tts``) meet ``fault``."""
        if stage not in FAULTS or fault not in FAULTS[stage]:
            raise ValueError(f"unknown fault {fault!r} for stage {stage!r}")
        self._faults[stage].extend([fault] * times)

    async def wait_for_requests(self, stage: str, count: int) -> None:
        """Waits until ``count`` requests of ``stage`` have been recorded (bound it with ``fail_after``)."""
        if stage not in FAULTS:
            raise ValueError(f"unknown stage {stage!r}")
        records: Sequence[object] = (
            self.stt_requests
            if stage == "stt"
            else self.chat_requests
            if stage == "llm"
            else self.speech_requests
        )
        while len(records) < count:
            await self._changed.wait()

    def _record(self, records: list[Any], record: Any) -> None:
        records.append(record)
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------------------------------------------- ASGI

    async def _app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        handler = {STT_PATH: self._transcription, LLM_PATH: self._chat, TTS_PATH: self._speech}.get(path)
        at = trio.current_time()
        try:
            if handler is None:
                self.not_found += 1
                raise _Refused(404, f"Invalid URL ({method} {path})")
            if method != "POST":
                raise _Refused(405, f"Invalid method for URL ({method} {path})")
            if not self._authorized(scope):
                self.unauthorized += 1
                raise _Refused(401, "Incorrect API key provided.", "invalid_api_key")
            body = await _read_body(receive)
            headers = _headers(scope)
            await handler(at, headers, body, receive, send)
        except _Refused as refused:
            log.debug("%s %s -> %d", method, path, refused.status)
            await _send_error(send, refused)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if self._api_key is None:
            return True
        given = _headers(scope).get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self._api_key}".encode())

    def _fault(self, stage: str) -> str | None:
        faults = self._faults[stage]
        return faults.popleft() if faults else None

    async def _common_fault(self, fault: str | None, receive: Receive) -> None:
        if fault == "400":
            raise _Refused(400, "Scripted bad request.")
        if fault == "429":
            raise _Refused(429, "Rate limit reached for requests.", "rate_limit_exceeded", "requests")
        if fault == "500":
            raise _Refused(
                500, "The server had an error while processing your request.", None, "server_error"
            )
        if fault == "stall":
            await _until_disconnect(receive, self.stall_s)
            raise _Refused(504, "Scripted stall ended.")

    # ---------------------------------------------------------------------------------------- transcription

    async def _transcription(
        self, at: float, headers: Mapping[str, str], body: bytes, receive: Receive, send: Send
    ) -> None:
        try:
            fields = _multipart(headers.get("content-type", ""), body)
            model = _text_field(fields, "model")
            language = _text_field(fields, "language", required=False)
            response_format = _text_field(fields, "response_format", required=False) or "json"
            if "file" not in fields:
                raise _Refused(400, "you must provide a file", "missing_required_parameter")
            if response_format not in _STT_FORMATS:
                raise _Refused(400, f"Invalid response_format {response_format!r}")
            if language is not None and not re.fullmatch(r"[a-z]{2}", language):
                raise _Refused(400, f"Invalid language {language!r}: use ISO-639-1")
            try:
                audio = decode_wav(fields["file"])
            except ValueError as exc:
                raise _Refused(400, f"Invalid file format: {exc}", "invalid_value") from None
        except _Refused as refused:
            self._record(self.stt_requests, SttRequest(at, refused.status))
            raise
        fault = self._fault("stt")
        status = {"400": 400, "429": 429, "500": 500, "stall": 504}.get(fault or "", 200)
        text = None if status != 200 else self._transcribe(audio)
        self._record(
            self.stt_requests,
            SttRequest(
                at, status, model, language, response_format, audio.rate, audio.duration_ms, audio.pcm, text
            ),
        )
        await self._common_fault(fault, receive)
        await trio.sleep(self.stt_latency_s)
        if fault == "malformed":
            await _send_whole(send, 200, b"<html>Bad gateway</html>", "text/html")
            return
        assert text is not None
        if response_format == "text":
            payload, content_type = text.encode(), "text/plain"
        elif response_format == "verbose_json":
            payload = orjson.dumps(
                {
                    "task": "transcribe",
                    "language": language or "english",
                    "duration": audio.duration_ms / 1000,
                    "text": text,
                    "segments": [],
                }
            )
            content_type = "application/json"
        else:
            payload, content_type = orjson.dumps({"text": text}), "application/json"
        if fault == "cut":
            await _send_start(send, 200, content_type, len(payload))
            await send(
                {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
            )
            return  # the connection closes short of Content-Length
        await _send_whole(send, 200, payload, content_type)

    def _transcribe(self, audio: WavAudio) -> str:
        if self._transcriber is not None:
            return self._transcriber(audio)
        return self.transcripts.popleft() if self.transcripts else ""

    # ------------------------------------------------------------------------------------------------- chat

    async def _chat(
        self, at: float, headers: Mapping[str, str], body: bytes, receive: Receive, send: Send
    ) -> None:
        try:
            request = _json_object(body)
            model = request.get("model")
            messages = request.get("messages")
            stream = request.get("stream", False)
            tools = request.get("tools") or []
            if not isinstance(model, str) or not model:
                raise _Refused(400, "you must provide a model parameter", "missing_required_parameter")
            if not isinstance(messages, list) or not messages:
                raise _Refused(400, "'messages' must be a non-empty array", "invalid_value")
            for message in messages:
                if not isinstance(message, dict) or message.get("role") not in _ROLES:
                    raise _Refused(400, f"Invalid message: {str(message)[:80]}", "invalid_value")
            if not isinstance(stream, bool):
                raise _Refused(400, "'stream' must be a boolean", "invalid_type")
            names = _tool_names(tools)
        except _Refused as refused:
            self._record(self.chat_requests, ChatRequest(at, refused.status))
            raise
        fault = self._fault("llm")
        status = {"400": 400, "429": 429, "500": 500}.get(fault or "", 200)
        reply = self._reply(messages) if status == 200 else None
        self._record(
            self.chat_requests, ChatRequest(at, status, model, tuple(messages), names, stream, reply)
        )
        await self._common_fault(fault, receive)
        assert reply is not None
        calls = [(name, args) for name, args in reply.tool_calls if name in names]
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if not stream:
            await trio.sleep(reply.first_token_s if reply.first_token_s is not None else self.first_token_s)
            await _send_whole(
                send, 200, _completion(completion_id, model, created, reply.text, calls), "application/json"
            )
            return
        await _send_start(send, 200, "text/event-stream")
        first = reply.first_token_s if reply.first_token_s is not None else self.first_token_s
        rate = reply.tokens_per_s if reply.tokens_per_s is not None else self.tokens_per_s
        gap = 1.0 / rate if rate > 0 else 0.0
        tokens = tokenize(reply.text)
        chunk = partial(encode_chunk, completion_id, model, created)
        events: list[bytes] = [encode_data(chunk({"role": "assistant", "content": "", "refusal": None}))]
        events += [encode_data(chunk({"content": token})) for token in tokens]
        for index, (name, arguments) in enumerate(calls):
            text = orjson.dumps(arguments).decode()
            start = {
                "index": index,
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            events.append(encode_data(chunk({"tool_calls": [start]})))
            for piece in (text[i : i + 8] for i in range(0, len(text), 8)):
                events.append(
                    encode_data(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
                )
        events.append(encode_data(chunk({}, "tool_calls" if calls else "stop")))
        events.append(encode_data("[DONE]"))
        half = len(events) // 2
        await trio.sleep(first)
        for number, event in enumerate(events):
            if number == half and fault in ("cut", "malformed", "malformed_sse", "error_event"):
                await _send_fault_event(send, fault)
                return
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if 1 <= number <= len(tokens) and gap:  # pace the tokens, not the role or the end
                await trio.sleep(gap)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _reply(self, messages: Sequence[Mapping[str, Any]]) -> ChatReply:
        if self._replier is not None:
            reply: ChatReply | str = self._replier(messages)
        elif self.replies:
            reply = self.replies.popleft()
        else:
            users = [m.get("content") for m in messages if m.get("role") == "user"]
            last = users[-1] if users and isinstance(users[-1], str) else ""
            reply = f"You said: {last}" if last else "Hello, how can I help?"
        return ChatReply(reply) if isinstance(reply, str) else reply

    # ----------------------------------------------------------------------------------------------- speech

    async def _speech(
        self, at: float, headers: Mapping[str, str], body: bytes, receive: Receive, send: Send
    ) -> None:
        try:
            request = _json_object(body)
            model, voice, text = request.get("model"), request.get("voice"), request.get("input")
            response_format = request.get("response_format", "mp3")
            if not isinstance(model, str) or not model:
                raise _Refused(400, "you must provide a model parameter", "missing_required_parameter")
            if not isinstance(voice, str) or not voice:
                raise _Refused(400, "you must provide a voice parameter", "missing_required_parameter")
            if not isinstance(text, str) or not text.strip():
                raise _Refused(400, "'input' must be a non-empty string", "invalid_value")
            if len(text) > MAX_SPEECH_CHARS:
                raise _Refused(
                    400, f"'input' is longer than {MAX_SPEECH_CHARS} characters", "string_above_max_length"
                )
            if response_format not in _SPEECH_FORMATS:
                raise _Refused(400, f"Invalid response_format {str(response_format)[:40]!r}", "invalid_value")
            if response_format != "pcm":
                raise _Refused(400, "the emulator only produces response_format 'pcm'", "invalid_value")
        except _Refused as refused:
            self._record(self.speech_requests, SpeechRequest(at, refused.status))
            raise
        fault = self._fault("tts")
        status = {"400": 400, "429": 429, "500": 500}.get(fault or "", 200)
        audio = synthesize(text, self.ms_per_char) if status == 200 else b""
        self._record(
            self.speech_requests, SpeechRequest(at, status, model, voice, text, response_format, len(audio))
        )
        await self._common_fault(fault, receive)
        await trio.sleep(self.tts_first_byte_s)
        await _send_start(send, 200, "audio/pcm")
        if fault == "empty":
            audio = b""
        elif fault == "malformed":
            audio += b"\x00"
        step = SPEECH_RATE * 2 * self.tts_chunk_ms // 1000
        pause = self.tts_chunk_ms / 1000 / self.tts_realtime_factor if self.tts_realtime_factor > 0 else 0.0
        for offset in range(0, len(audio), step):
            if fault == "cut" and offset >= len(audio) // 2:
                return  # the connection closes without the last chunk
            if offset and pause:
                await trio.sleep(pause)
            await send(
                {"type": "http.response.body", "body": audio[offset : offset + step], "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# ----------------------------------------------------------------------------------------------- wire helpers


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(499, "client closed the request")  # nobody reads this answer
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def _until_disconnect(receive: Receive, seconds: float) -> None:
    with trio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass


async def _send_start(send: Send, status: int, content_type: str, length: int | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"x-request-id", secrets.token_hex(8).encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _send_whole(send: Send, status: int, payload: bytes, content_type: str) -> None:
    await _send_start(send, status, content_type, len(payload))
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_error(send: Send, refused: _Refused) -> None:
    body = orjson.dumps(
        {"error": {"message": refused.message, "type": refused.kind, "param": None, "code": refused.code}}
    )
    await _send_start(send, refused.status, "application/json", len(body))
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_fault_event(send: Send, fault: str) -> None:
    payload = {
        "cut": b"",
        "malformed": b'data: {"id": "chatcmpl-x", "choices": [{"delta": {"content": "bro\n\n',
        "malformed_sse": b"<html><body>502 Bad Gateway</body></html>\n\n",
        "error_event": encode_data(
            b'{"error": {"message": "The model is overloaded.", "type": "server_error"}}'
        ),
    }[fault]
    if payload:
        await send({"type": "http.response.body", "body": payload, "more_body": True})
    if fault == "error_event":
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    # otherwise return without the end: the connection closes halfway


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Refused(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise _Refused(400, "The body of your request must be a JSON object.")
    return value


def _tool_names(tools: Any) -> tuple[str, ...]:
    if not isinstance(tools, list):
        raise _Refused(400, "'tools' must be an array", "invalid_type")
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
            raise _Refused(
                400, "Invalid tool: each needs type 'function' and a function name", "invalid_value"
            )
        names.append(name)
    return tuple(names)


def _completion(
    completion_id: str, model: str, created: int, text: str, calls: Sequence[tuple[str, Mapping[str, Any]]]
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
            }
            for name, args in calls
        ]
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if calls else "stop",
                }
            ],
        }
    )


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body (RFC 7578), by name."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise _Refused(400, "Content-Type must be multipart/form-data")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise _Refused(400, "multipart/form-data without a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, bytes] = {}
    parts = body.split(delimiter)
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        raise _Refused(400, "a multipart body that does not end with its closing boundary")
    for part in parts[1:-1]:
        if not part.startswith(b"\r\n") or not part.endswith(b"\r\n"):
            raise _Refused(400, "a multipart part without its line breaks")
        head, sep, content = part[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise _Refused(400, "a multipart part without headers")
        disposition = next(
            (
                line
                for line in head.decode("latin-1").split("\r\n")
                if line.lower().startswith("content-disposition")
            ),
            "",
        )
        name = re.search(r'\bname="([^"]*)"', disposition)
        if name is None:
            raise _Refused(400, "a multipart part without a name")
        fields[name.group(1)] = content
    return fields


def _text_field(fields: Mapping[str, bytes], name: str, *, required: bool = True) -> str | None:
    raw = fields.get(name)
    if raw is None or not raw.strip():
        if required:
            raise _Refused(400, f"you must provide a {name} parameter", "missing_required_parameter")
        return None
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        raise _Refused(400, f"{name} is not UTF-8 text") from None
