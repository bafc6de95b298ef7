"""OpenAI Realtime wire format (the GA interface), without I/O: the service's end, for our emulator.

What a client (the bridge) sends, as the service reads it: :func:`parse_client_event` into small frozen events
(:class:`SessionUpdate`, :class:`AppendAudio`, :class:`TruncateItem`, :class:`UserText`, ...), and
:func:`session_update_problem`, which refuses a ``session.update`` the way a GA session does (beta names such
as ``session.input_audio_format`` are ``Unknown parameter``). What the service sends: the ``*_message``
builders of server events, which :func:`bridge.agents.openai.parse_server_event` reads back.

It shares the field helpers and the :class:`~bridge.agents.openai._wire.Unknown` event of
:mod:`bridge.agents.openai._wire` (the bridge's end); bad input raises
:class:`~bridge._errors.OpenAIProtocolError` with a fixed ``kind``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from bridge._errors import short_repr
from bridge.agents.openai._wire import (
    _MISSING,
    DEFAULT_MAX_AUDIO_BYTES,
    FORMAT_PCM,
    FORMAT_PCMA,
    FORMAT_PCMU,
    MAX_TYPE_CHARS,
    PCM_RATE,
    Unknown,
    _audio,
    _b2a,
    _dumps,
    _fail,
    _int,
    _load_object,
    _object,
    _opt_str,
    _str,
    _type,
)

__all__ = [
    "AppendAudio",
    "ClientEvent",
    "CreateItem",
    "FunctionCallOutput",
    "ResponseCancel",
    "ResponseCreate",
    "SessionProblem",
    "SessionUpdate",
    "TruncateItem",
    "UserText",
    "audio_delta_message",
    "audio_done_message",
    "error_message",
    "function_call_arguments_done_message",
    "input_transcript_message",
    "item_truncated_message",
    "parse_client_event",
    "response_created_message",
    "response_done_message",
    "server_event_message",
    "session_created_message",
    "session_update_problem",
    "session_updated_message",
    "speech_started_message",
    "speech_stopped_message",
    "transcript_delta_message",
    "transcript_done_message",
]

_FORMATS: Final = (FORMAT_PCM, FORMAT_PCMU, FORMAT_PCMA)
_event_numbers = itertools.count(1)


def _new_event_id() -> str:
    return f"event_{next(_event_numbers)}"


# ----------------------------------------------------------------------------------------------------
# Events: bridge -> service, as the service sees them


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """``session.update``: the requested session object, unvalidated (see :func:`session_update_problem`)."""

    session: dict[str, Any]


@dataclass(frozen=True, slots=True, repr=False)
class AppendAudio:
    """``input_audio_buffer.append``: caller audio, base64-decoded."""

    audio: bytes

    def __repr__(self) -> str:
        return f"AppendAudio(audio=<{len(self.audio)} bytes>)"


@dataclass(frozen=True, slots=True)
class TruncateItem:
    """``conversation.item.truncate``: the caller heard only ``audio_end_ms`` of this assistant item."""

    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class UserText:
    """``conversation.item.create`` of a user message with text content (the bridge's DTMF)."""

    text: str


@dataclass(frozen=True, slots=True)
class FunctionCallOutput:
    """``conversation.item.create`` of a ``function_call_output``: the answer to a function call."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class CreateItem:
    """``conversation.item.create`` of any other item; the whole item object."""

    item: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResponseCreate:
    """``response.create``: ``response`` is its optional parameter object (``{}`` when absent)."""

    response: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResponseCancel:
    """``response.cancel``; ``response_id`` when the client named one."""

    response_id: str | None = None


ClientEvent: TypeAlias = (
    SessionUpdate
    | AppendAudio
    | TruncateItem
    | UserText
    | FunctionCallOutput
    | CreateItem
    | ResponseCreate
    | ResponseCancel
    | Unknown
)


# ----------------------------------------------------------------------------------------------------
# Service side: what a client sends, and what the service accepts of it


def parse_client_event(
    data: str | bytes | bytearray | memoryview, *, max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES
) -> ClientEvent:
    """Parse one frame sent to the service (for our emulator). Unknown types are :class:`Unknown`.

    Raises:
        OpenAIProtocolError: the frame is not a message the service could read; ``kind`` says why.
    """
    msg = _load_object(data)
    kind = _type(msg)
    if kind == "input_audio_buffer.append":
        return AppendAudio(_audio(msg.get("audio", _MISSING), "audio", max_audio_bytes))
    parser = _CLIENT_PARSERS.get(kind)
    if parser is None:
        return Unknown(kind[:MAX_TYPE_CHARS])
    return parser(msg)


def _parse_session_update(msg: dict[str, Any]) -> SessionUpdate:
    return SessionUpdate(_object(msg, "session", "session"))


def _parse_truncate(msg: dict[str, Any]) -> TruncateItem:
    return TruncateItem(
        _str(msg, "item_id", "item_id"),
        _int(msg, "content_index", "content_index"),
        _int(msg, "audio_end_ms", "audio_end_ms"),
    )


def _parse_item_create(msg: dict[str, Any]) -> UserText | FunctionCallOutput | CreateItem:
    item = _object(msg, "item", "item")
    item_type = _str(item, "type", "item.type", "")
    if item_type == "function_call_output":
        return FunctionCallOutput(_str(item, "call_id", "item.call_id"), _str(item, "output", "item.output"))
    if item_type == "message" and item.get("role") == "user":
        content = item.get("content")
        if type(content) is not list:
            _fail("bad_field", f"item.content: expected a list, got {short_repr(content)}")
        texts = [
            part["text"]
            for part in content
            if type(part) is dict and part.get("type") == "input_text" and type(part.get("text")) is str
        ]
        if texts:
            return UserText("".join(texts))
    return CreateItem(item)


def _parse_response_create(msg: dict[str, Any]) -> ResponseCreate:
    response = msg.get("response")
    if response is None:
        return ResponseCreate({})
    if type(response) is not dict:
        _fail("bad_field", f"response: expected an object, got {short_repr(response)}")
    return ResponseCreate(response)


def _parse_response_cancel(msg: dict[str, Any]) -> ResponseCancel:
    return ResponseCancel(_opt_str(msg, "response_id", "response_id"))


_CLIENT_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ClientEvent]]] = {
    "session.update": _parse_session_update,
    "conversation.item.truncate": _parse_truncate,
    "conversation.item.create": _parse_item_create,
    "response.create": _parse_response_create,
    "response.cancel": _parse_response_cancel,
}


@dataclass(frozen=True, slots=True)
class SessionProblem:
    """Why the service refuses a ``session.update``: the fields of its ``error`` event."""

    code: str
    message: str
    param: str


# The GA session's parameters, level by level (the service refuses any other name, beta names included).
_SESSION_KEYS: Final = frozenset(
    {
        "type",
        "model",
        "instructions",
        "output_modalities",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
        "reasoning",
        "parallel_tool_calls",
    }
)
_AUDIO_KEYS: Final = frozenset({"input", "output"})
_INPUT_KEYS: Final = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
_OUTPUT_KEYS: Final = frozenset({"format", "voice", "speed"})
_FORMAT_KEYS: Final = frozenset({"type", "rate"})


def _unknown_key(obj: dict[str, Any], allowed: frozenset[str], path: str) -> SessionProblem | None:
    for key in obj:
        if key not in allowed:
            param = f"{path}.{key}"
            return SessionProblem("unknown_parameter", f"Unknown parameter: '{param}'.", param)
    return None


def _format_problem(side: dict[str, Any], path: str) -> SessionProblem | None:
    fmt = side.get("format")
    if fmt is None:
        return None
    if type(fmt) is not dict:
        return SessionProblem("invalid_type", f"Invalid type for '{path}.format': expected an object.", path)
    problem = _unknown_key(fmt, _FORMAT_KEYS, f"{path}.format")
    if problem is not None:
        return problem
    kind = fmt.get("type")
    if kind not in _FORMATS:
        supported = ", ".join(f"'{f}'" for f in _FORMATS)
        return SessionProblem(
            "invalid_value",
            f"Invalid value: {short_repr(kind)}. Supported values are: {supported}.",
            f"{path}.format.type",
        )
    rate = fmt.get("rate")
    if rate is not None and (kind != FORMAT_PCM or rate != PCM_RATE):
        return SessionProblem("invalid_value", f"Invalid value: {short_repr(rate)}.", f"{path}.format.rate")
    return None


def session_update_problem(session: dict[str, Any]) -> SessionProblem | None:
    """What a GA session refuses in a ``session.update`` (for our emulator), or None when it is acceptable.

    Checks the parameter names at every level the bridge uses (so ``session.input_audio_format``,
    ``session.modalities``, ``session.voice``, ``session.temperature`` are ``unknown_parameter``), that
    ``session.type`` is ``realtime``, and the audio formats.
    """
    problem = _unknown_key(session, _SESSION_KEYS, "session")
    if problem is not None:
        return problem
    if "type" not in session:
        return SessionProblem(
            "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
        )
    if session["type"] != "realtime":
        return SessionProblem(
            "invalid_value",
            f"Invalid value: {short_repr(session['type'])}. Supported values are: 'realtime'.",
            "session.type",
        )
    audio = session.get("audio")
    if audio is None:
        return None
    if type(audio) is not dict:
        return SessionProblem(
            "invalid_type", "Invalid type for 'session.audio': expected an object.", "session.audio"
        )
    problem = _unknown_key(audio, _AUDIO_KEYS, "session.audio")
    if problem is not None:
        return problem
    for direction, allowed in (("input", _INPUT_KEYS), ("output", _OUTPUT_KEYS)):
        side = audio.get(direction)
        if side is None:
            continue
        path = f"session.audio.{direction}"
        if type(side) is not dict:
            return SessionProblem("invalid_type", f"Invalid type for '{path}': expected an object.", path)
        problem = _unknown_key(side, allowed, path) or _format_problem(side, path)
        if problem is not None:
            return problem
    return None


# ----------------------------------------------------------------------------------------------------
# Service side: what the service sends


def server_event_message(kind: str, fields: Mapping[str, Any], *, event_id: str | None = None) -> str:
    """Any server event: ``{"type": kind, "event_id": …, **fields}`` (faults and events we do not model).

    Raises:
        TypeError: a field is not JSON-serialisable.
    """
    return _dumps({"type": kind, "event_id": event_id or _new_event_id(), **fields}).decode()


def session_created_message(session: Mapping[str, Any], *, event_id: str | None = None) -> str:
    """``session.created`` with the whole session object."""
    return server_event_message("session.created", {"session": session}, event_id=event_id)


def session_updated_message(session: Mapping[str, Any], *, event_id: str | None = None) -> str:
    """``session.updated`` with the whole session object as it now is."""
    return server_event_message("session.updated", {"session": session}, event_id=event_id)


def audio_delta_message(
    response_id: str, item_id: str, audio: bytes, *, output_index: int = 0, content_index: int = 0
) -> str:
    """``response.output_audio.delta``: a piece of agent speech, base64 in ``delta``."""
    return server_event_message(
        "response.output_audio.delta",
        {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": output_index,
            "content_index": content_index,
            "delta": _b2a(audio, newline=False).decode("ascii"),
        },
    )


def audio_done_message(
    response_id: str, item_id: str, *, output_index: int = 0, content_index: int = 0
) -> str:
    """``response.output_audio.done``."""
    return server_event_message(
        "response.output_audio.done",
        {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": output_index,
            "content_index": content_index,
        },
    )


def transcript_delta_message(
    response_id: str, item_id: str, delta: str, *, output_index: int = 0, content_index: int = 0
) -> str:
    """``response.output_audio_transcript.delta``."""
    return server_event_message(
        "response.output_audio_transcript.delta",
        {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": output_index,
            "content_index": content_index,
            "delta": delta,
        },
    )


def transcript_done_message(
    response_id: str, item_id: str, transcript: str, *, output_index: int = 0, content_index: int = 0
) -> str:
    """``response.output_audio_transcript.done``."""
    return server_event_message(
        "response.output_audio_transcript.done",
        {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": output_index,
            "content_index": content_index,
            "transcript": transcript,
        },
    )


def input_transcript_message(item_id: str, transcript: str, *, content_index: int = 0) -> str:
    """``conversation.item.input_audio_transcription.completed``: what the caller said."""
    return server_event_message(
        "conversation.item.input_audio_transcription.completed",
        {
            "item_id": item_id,
            "content_index": content_index,
            "transcript": transcript,
            "usage": {"type": "duration", "seconds": 0},
        },
    )


def speech_started_message(audio_start_ms: int, item_id: str) -> str:
    """``input_audio_buffer.speech_started``."""
    return server_event_message(
        "input_audio_buffer.speech_started", {"audio_start_ms": audio_start_ms, "item_id": item_id}
    )


def speech_stopped_message(audio_end_ms: int, item_id: str) -> str:
    """``input_audio_buffer.speech_stopped``."""
    return server_event_message(
        "input_audio_buffer.speech_stopped", {"audio_end_ms": audio_end_ms, "item_id": item_id}
    )


def item_truncated_message(item_id: str, content_index: int, audio_end_ms: int) -> str:
    """``conversation.item.truncated``: the service's acknowledgement of a truncate."""
    return server_event_message(
        "conversation.item.truncated",
        {"item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms},
    )


def response_created_message(response_id: str) -> str:
    """``response.created`` (status ``in_progress``, no output yet)."""
    return server_event_message(
        "response.created",
        {
            "response": {
                "id": response_id,
                "object": "realtime.response",
                "status": "in_progress",
                "output": [],
            }
        },
    )


def response_done_message(
    response_id: str,
    status: str = "completed",
    *,
    output: list[Any] | None = None,
    status_details: Mapping[str, Any] | None = None,
) -> str:
    """``response.done``; ``status`` ``completed``, ``cancelled`` (e.g. by a barge-in), ``failed``, ..."""
    return server_event_message(
        "response.done",
        {
            "response": {
                "id": response_id,
                "object": "realtime.response",
                "status": status,
                "status_details": dict(status_details) if status_details is not None else None,
                "output": output or [],
            }
        },
    )


def function_call_arguments_done_message(
    response_id: str, item_id: str, call_id: str, name: str, arguments: str, *, output_index: int = 0
) -> str:
    """``response.function_call_arguments.done``: the model calls ``name`` with ``arguments`` (JSON text)."""
    return server_event_message(
        "response.function_call_arguments.done",
        {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": output_index,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        },
    )


def error_message(
    error_type: str,
    code: str | None,
    message: str,
    *,
    param: str | None = None,
    client_event_id: str | None = None,
) -> str:
    """``error {error: {type, code, message, param, event_id}}``.

    ``client_event_id`` is the ``event_id`` of the client event at fault, when it had one.
    """
    return server_event_message(
        "error",
        {
            "error": {
                "type": error_type,
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id,
            }
        },
    )
