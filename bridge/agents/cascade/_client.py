"""The cascade's HTTP side under Trio: transcription, a streamed chat completion, streamed speech.

Theory of operation
-------------------
One :class:`CascadeClient` per call, used as an async context manager: it owns one ``httpx.AsyncClient``
for the call's lifetime. Shared within the call because every turn makes three requests (and the speech
of sentence 2 overlaps the chat stream), and a kept-alive connection saves a TCP and TLS handshake on each
(~100 ms or more to a remote API, on the critical path of every answer); one per call, not one per process,
so a call's cleanup closes its connections, a stuck call cannot hold another's pool slots, and the call's
nursery owns everything the call opened. httpx runs natively under Trio (through anyio), so Trio's cancel
scopes bound and cancel every request: a barge-in that cancels the scope running :meth:`chat_stream` or
:meth:`speech_stream` closes that connection at once.

Bounds: a transcription has ``timeout_s`` in total. A stream has ``timeout_s`` to its first byte, then
``timeout_s`` for each later gap (a stalled stream is a failure even if it started well), and
``max_stream_s`` in total. The bounds are Trio deadlines around each await, never around a ``yield``
(a cancel scope must not span a generator's suspension); httpx's own timeout is only a backstop.

The streams are async generators: consume them with ``contextlib.aclosing`` (or exhaust them) so an early
stop closes the response at once rather than at garbage collection.

Every failure is one :class:`~bridge.agents.cascade._errors.CascadeError` with the stage (``stt``,
``llm``, ``tts``) and a fixed kind. Retries are the leg's decision (a 429 mid-call is better answered with
a spoken "one moment" than a silent back-off), so none happen here. The key is only ever in the
``Authorization`` header: details are built from statuses, exception type names and the server's error
message with the key scrubbed out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import httpx
import orjson
import trio

from bridge._errors import short_repr
from bridge.agents.cascade._chat import ChatEvent, ChatStreamDecoder
from bridge.agents.cascade._errors import CascadeError
from bridge.agents.cascade._settings import CascadeSettings
from bridge.agents.cascade._sse import SseDone, SseEvent, SseParser

__all__ = ["DEFAULT_MAX_STREAM_S", "CascadeClient"]

log = logging.getLogger("bridge.cascade")

#: Bound on a whole chat or speech stream. A sentence's speech is seconds; an answer, well under a minute.
DEFAULT_MAX_STREAM_S: Final = 120.0
#: Connections per call: the chat stream, the speech of a sentence or two, and an early-start request.
MAX_CONNECTIONS: Final = 6


class CascadeClient:
    """The three endpoints of one call (see the module docstring).

    Args:
        settings: URLs, models, voice and key.
        timeout_s: bound on a transcription, and on a stream's first byte and each gap; default
            ``settings.request_timeout_s``.
        max_stream_s: bound on a whole stream.
    """

    def __init__(
        self,
        settings: CascadeSettings,
        *,
        timeout_s: float | None = None,
        max_stream_s: float = DEFAULT_MAX_STREAM_S,
    ) -> None:
        self.settings = settings
        self.timeout_s = settings.request_timeout_s if timeout_s is None else timeout_s
        self.max_stream_s = max_stream_s
        if not self.timeout_s > 0 or not max_stream_s > 0:
            raise ValueError(f"timeouts must be > 0, got {self.timeout_s!r} and {max_stream_s!r}")
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        s = self.settings
        opened = self._http is not None
        return f"CascadeClient(stt={s.stt_url!r}, llm={s.llm_url!r}, tts={s.tts_url!r}, open={opened})"

    async def __aenter__(self) -> Self:
        headers = {"User-Agent": "speakr-bridge-cascade"}
        key = self.settings.api_key.reveal()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        backstop = self.timeout_s + 5.0  # Trio's deadlines act first; this only guards a missed one
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(backstop),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            follow_redirects=False,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        http, self._http = self._http, None
        if http is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await http.aclose()

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("use CascadeClient as an async context manager")
        return self._http

    # ------------------------------------------------------------------------------------------------ stt

    async def transcribe(self, wav: bytes, *, language: str | None = None, prompt: str | None = None) -> str:
        """The text of one utterance (a WAV file).

        Raises:
            CascadeError: stage ``stt``; ``empty`` when the endpoint heard nothing.
        """
        data = {"model": self.settings.stt_model, "response_format": "json"}
        if language:
            data["language"] = language
        if prompt:
            data["prompt"] = prompt
        files = {"file": ("utterance.wav", wav, "audio/wav")}
        response: httpx.Response | None = None
        with trio.move_on_after(self.timeout_s):
            try:
                response = await self._client.post(self.settings.stt_url, data=data, files=files)
            except httpx.HTTPError as exc:
                raise self._transport_error("stt", exc) from None
        if response is None:
            raise CascadeError("stt", "timeout", f"no answer within {self.timeout_s:g} s")
        self._check_status("stt", response.status_code, response.content)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise CascadeError("stt", "malformed", f"not JSON: {short_repr(response.content)}") from None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise CascadeError("stt", "malformed", f"no text in the answer: {short_repr(response.content)}")
        if not text.strip():
            raise CascadeError("stt", "empty", "the transcription is empty")
        return text.strip()

    # ------------------------------------------------------------------------------------------------ llm

    async def chat_stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """The answer to ``messages`` as it streams: :class:`TextDelta`, then :class:`ToolCall`s, then one
        :class:`ChatDone`.

        Raises:
            CascadeError: stage ``llm``; ``incomplete`` for a stream that ended without ``[DONE]``,
                ``empty`` for an answer with neither text nor a tool call.
        """
        body: dict[str, Any] = {"model": self.settings.llm_model, "messages": list(messages), "stream": True}
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = "auto"
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            # ``max_tokens``, not OpenAI's newer ``max_completion_tokens``: Ollama and older vLLM only know
            # the former, and OpenAI still takes it for the chat models a phone agent uses.
            body["max_tokens"] = max_tokens
        parser = SseParser("llm")
        decoder = ChatStreamDecoder()
        async with self._open_stream("llm", self.settings.llm_url, body, "text/event-stream") as chunks:
            async for chunk in chunks:
                for item in _decode(decoder, parser.feed(chunk)):
                    yield item
                if parser.done:
                    return
        for item in _decode(decoder, parser.end()):  # a CR line break held at the very end
            yield item
        if not parser.done:
            raise CascadeError("llm", "incomplete", "the stream ended without [DONE]")

    # ------------------------------------------------------------------------------------------------ tts

    async def speech_stream(
        self, text: str, *, instructions: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The speech of ``text`` as it streams: PCM16 LE mono 24 kHz, each chunk a whole number of samples.

        Raises:
            CascadeError: stage ``tts``; ``malformed`` for a body that is not whole samples, ``empty`` for
                no audio, ``incomplete`` for a body cut short.
        """
        if not text.strip():
            raise ValueError("speech_stream needs some text")
        body: dict[str, Any] = {
            "model": self.settings.tts_model,
            "voice": self.settings.tts_voice,
            "input": text,
            "response_format": "pcm",
        }
        if instructions:
            body["instructions"] = instructions
        carry = b""
        total = 0
        async with self._open_stream("tts", self.settings.tts_url, body, None) as chunks:
            async for chunk in chunks:
                data = carry + chunk
                whole = len(data) & ~1
                carry = data[whole:]
                if whole:
                    total += whole
                    yield data[:whole]
        if carry:
            raise CascadeError("tts", "malformed", "the audio ends in half a sample")
        if not total:
            raise CascadeError("tts", "empty", "the answer carried no audio")

    # --------------------------------------------------------------------------------------------- shared

    def _open_stream(self, stage: str, url: str, body: dict[str, Any], content_type: str | None) -> _Stream:
        return _Stream(self, stage, url, orjson.dumps(body), content_type)

    def _check_status(self, stage: str, status: int, content: bytes) -> None:
        if 200 <= status < 300:
            return
        if status == 401:
            raise CascadeError(stage, "http_4xx", "unauthorized: check CASCADE_API_KEY", status)
        detail = self._scrub(_error_message(content))
        if status == 429:
            raise CascadeError(stage, "rate_limited", detail, status)
        raise CascadeError(stage, "http_5xx" if status >= 500 else "http_4xx", detail, status)

    def _scrub(self, text: str) -> str:
        key = self.settings.api_key.reveal()
        return text.replace(key, "********") if key else text

    def _transport_error(self, stage: str, exc: httpx.HTTPError) -> CascadeError:
        # The type only: an httpx message may quote the URL, and nothing more is needed to act on it.
        name = type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return CascadeError(stage, "timeout", f"httpx {name}")
        if isinstance(exc, httpx.ConnectError):
            return CascadeError(stage, "connect", f"no connection ({name})")
        return CascadeError(stage, "incomplete", f"the answer broke off ({name})")


class _Stream:
    """``async with`` one streamed POST: checks the status; then the body's chunks, each read bounded."""

    def __init__(
        self, client: CascadeClient, stage: str, url: str, body: bytes, content_type: str | None
    ) -> None:
        self._client, self._stage, self._url, self._body = client, stage, url, body
        self._content_type = content_type
        self._response: httpx.Response | None = None
        self._raw: AsyncIterator[bytes] | None = None
        self._deadline = 0.0

    async def __aenter__(self) -> Self:
        owner, stage = self._client, self._stage
        self._deadline = trio.current_time() + owner.max_stream_s
        request = owner._client.build_request(
            "POST", self._url, content=self._body, headers={"Content-Type": "application/json"}
        )
        with trio.move_on_after(owner.timeout_s):
            try:
                self._response = await owner._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise owner._transport_error(stage, exc) from None
        response = self._response
        if response is None:
            raise CascadeError(stage, "timeout", f"no answer within {owner.timeout_s:g} s")
        if not response.is_success:
            content = b""
            with trio.move_on_after(owner.timeout_s):
                try:
                    content = await response.aread()
                except httpx.HTTPError:
                    pass
            await self._close()
            owner._check_status(stage, response.status_code, content)
        received = response.headers.get("content-type", "")
        if self._content_type and not received.startswith(self._content_type):
            await self._close()
            raise CascadeError(
                stage, "malformed", f"content-type {short_repr(received)}, not {self._content_type}"
            )
        self._raw = response.aiter_raw()
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        owner, stage, raw = self._client, self._stage, self._raw
        assert raw is not None
        while True:
            stall = owner.timeout_s <= self._deadline - trio.current_time()
            chunk: bytes | None = None
            with trio.move_on_after(max(0.0, min(owner.timeout_s, self._deadline - trio.current_time()))):
                try:
                    chunk = await raw.__anext__()
                except httpx.HTTPError as exc:
                    raise owner._transport_error(stage, exc) from None
            if chunk is None:
                detail = "the stream stalled" if stall else f"the stream lasted over {owner.max_stream_s:g} s"
                raise CascadeError(stage, "timeout", detail)
            if chunk:
                return chunk

    async def _close(self) -> None:
        raw, self._raw = self._raw, None
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            if raw is not None and hasattr(raw, "aclose"):
                await raw.aclose()
            if self._response is not None:
                await self._response.aclose()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()


def _decode(decoder: ChatStreamDecoder, events: list[SseEvent | SseDone]) -> list[ChatEvent]:
    out: list[ChatEvent] = []
    for event in events:
        out += decoder.end() if isinstance(event, SseDone) else decoder.feed(event.data)
    return out


def _error_message(content: bytes) -> str:
    """OpenAI's ``{"error": {"message": ...}}``, or a bounded preview of whatever came."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return short_repr(content) if content else "(no body)"
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str):
            return short_repr(message)[1:-1] if len(message) <= 80 else short_repr(message)
    return short_repr(content)
