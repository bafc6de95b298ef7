"""OpenAI chat-completion stream chunks without I/O: both ends (the client's decoder, the emulator's encoder).

Theory of operation
-------------------
A streamed chat completion is a series of ``chat.completion.chunk`` objects, each with
``choices[0].delta``: ``content`` pieces of the answer, or ``tool_calls`` pieces (the first piece of a call
carries its ``index``, ``id`` and ``function.name``; later pieces with the same ``index`` append to
``function.arguments``, a JSON text cut anywhere), and finally a ``finish_reason`` (``stop``, ``length``,
``tool_calls``). A chunk with no choices (the ``usage`` chunk) is allowed and ignored.

:class:`ChatStreamDecoder` turns each chunk's JSON into neutral events: :class:`TextDelta` as the text
arrives, each :class:`ToolCall` whole (its arguments parsed) once the choice finishes, and one
:class:`ChatDone`. Anything else (not JSON, wrong shape, arguments that are not a JSON object, an
``error`` object sent inside the stream) raises :class:`~bridge.agents.cascade._errors.CascadeError`
with stage ``llm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge._errors import short_repr
from bridge.agents.cascade._errors import CascadeError

__all__ = ["ChatDone", "ChatEvent", "ChatStreamDecoder", "TextDelta", "ToolCall", "encode_chunk"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete function call the model asked for."""

    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatDone:
    """The answer is complete; ``finish_reason`` as the server gave it (``None`` if it gave none)."""

    finish_reason: str | None


ChatEvent = TextDelta | ToolCall | ChatDone


def _bad(detail: str) -> CascadeError:
    return CascadeError("llm", "malformed", detail)


class ChatStreamDecoder:
    """Feed each SSE event's data; get text deltas, whole tool calls and the end."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        self.finish_reason: str | None = None
        self.finished = False
        self.said = False  # any text or tool call so far

    def feed(self, data: str) -> list[ChatEvent]:
        """Decodes one chunk.

        Raises:
            CascadeError: ``malformed``, or ``http_5xx`` for an error the server sent inside the stream.
        """
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _bad(f"a chunk that is not JSON: {short_repr(data)}") from None
        if not isinstance(chunk, dict):
            raise _bad(f"a chunk that is not an object: {short_repr(data)}")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise CascadeError("llm", "http_5xx", f"error inside the stream: {short_repr(message)}")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise _bad(f"a chunk without choices: {short_repr(data)}")
        out: list[ChatEvent] = []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is never asked for; other choices are not ours
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise _bad(f"a delta that is not an object: {short_repr(delta)}")
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(TextDelta(content))
                self.said = True
            elif content is not None and not isinstance(content, str):
                raise _bad(f"content that is not text: {short_repr(content)}")
            tool_calls = delta.get("tool_calls")
            if tool_calls is not None:
                self._tool_pieces(tool_calls)
            reason = choice.get("finish_reason")
            if reason is not None:
                if not isinstance(reason, str):
                    raise _bad(f"finish_reason that is not text: {short_repr(reason)}")
                self.finish_reason = reason
                out.extend(self._finish_calls())
        return out

    def end(self) -> list[ChatEvent]:
        """The stream's ``[DONE]`` arrived: any tool calls not yet finished, then :class:`ChatDone`.

        Raises:
            CascadeError: ``empty``, an answer with neither text nor a tool call; ``malformed``.
        """
        if self.finished:
            return []
        self.finished = True
        calls = self._finish_calls()
        if not self.said:
            raise CascadeError("llm", "empty", "an answer with no text and no tool call")
        return [*calls, ChatDone(self.finish_reason)]

    def _tool_pieces(self, tool_calls: Any) -> None:
        if not isinstance(tool_calls, list):
            raise _bad(f"tool_calls that is not a list: {short_repr(tool_calls)}")
        for piece in tool_calls:
            if not isinstance(piece, dict):
                raise _bad(f"a tool call piece that is not an object: {short_repr(piece)}")
            index = piece.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 64:
                raise _bad(f"a tool call index that is not a small integer: {short_repr(index)}")
            function = piece.get("function") or {}
            if not isinstance(function, dict):
                raise _bad(f"a function that is not an object: {short_repr(function)}")
            slot = self._calls.setdefault(index, ["", "", ""])
            for position, value in ((0, piece.get("id")), (1, function.get("name"))):
                if isinstance(value, str) and value:
                    slot[position] = value
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                slot[2] += arguments
            elif arguments is not None:
                raise _bad(f"arguments that are not text: {short_repr(arguments)}")

    def _finish_calls(self) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        for _, (call_id, name, arguments) in sorted(self._calls.items()):
            if not name:
                raise _bad("a tool call without a function name")
            try:
                parsed = orjson.loads(arguments) if arguments.strip() else {}
            except orjson.JSONDecodeError:
                raise _bad(f"tool call arguments that are not JSON: {short_repr(arguments)}") from None
            if not isinstance(parsed, dict):
                raise _bad(f"tool call arguments that are not an object: {short_repr(arguments)}")
            out.append(ToolCall(call_id, name, parsed))
            self.said = True
        self._calls.clear()
        return out


def encode_chunk(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> bytes:
    """One ``chat.completion.chunk`` as compact JSON (the emulator's side)."""
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
    )
