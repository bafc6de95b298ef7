"""OpenAI Realtime wire format (GA interface), without I/O (in the manner of h11/wsproto): the bridge's end.

Text in, small frozen events out; arguments in, text out. Nothing here touches a socket or imports trio.

- service -> bridge: :func:`parse_server_event`.
- bridge -> service: :func:`session_update_message`, :func:`append_audio_message`, :func:`truncate_message`,
  :func:`user_text_message`, :func:`function_call_output_message`, :func:`response_create_message`.

The service's end of the same wire (what it parses and sends, for our emulator) is
:mod:`bridge.agents.openai._service`; it shares this module's field helpers and events. The two are one
protocol split in two modules only to keep each small.

Only GA names are sent: a GA session refuses beta names (``session.input_audio_format``,
``session.modalities``, ...) with an ``error`` event, and so does our emulator. Audio is ``audio/pcmu``
both ways, exactly Twilio's μ-law payload, so the bridge neither decodes nor encodes; a session left at
``audio/pcm`` speaks 24 kHz PCM16, which is why :class:`SessionUpdated` carries the output format read back.

Every frame is a JSON text ``{"type": <event>, ...}``. Events the bridge does not use parse as
:class:`Unknown` (never an error: the service adds events over time). Bad input raises
:class:`~bridge._errors.OpenAIProtocolError` with a fixed ``kind`` and never anything else.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

import orjson

from bridge._errors import OpenAIProtocolError, short_repr

__all__ = [
    "DEFAULT_MAX_AUDIO_BYTES",
    "DEFAULT_TRANSCRIPTION_MODEL",
    "DEFAULT_VOICE",
    "END_CALL_TOOL",
    "FORMAT_PCM",
    "FORMAT_PCMA",
    "FORMAT_PCMU",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_TYPE_CHARS",
    "PCM_RATE",
    "AudioDelta",
    "AudioDone",
    "AudioFormat",
    "ErrorEvent",
    "FunctionCall",
    "InputTranscript",
    "ResponseCreated",
    "ResponseDone",
    "ServerEvent",
    "SessionCreated",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptDelta",
    "TranscriptDone",
    "Unknown",
    "append_audio_message",
    "function_call_output_message",
    "parse_server_event",
    "response_cancel_message",
    "response_create_message",
    "session_update_message",
    "truncate_message",
    "user_text_message",
]

FORMAT_PCMU: Final = "audio/pcmu"  # G.711 μ-law 8 kHz: Twilio's payload as it is
FORMAT_PCMA: Final = "audio/pcma"
FORMAT_PCM: Final = "audio/pcm"  # PCM16LE; the GA interface knows only 24 kHz for it
PCM_RATE: Final = 24_000
DEFAULT_VOICE: Final = "marin"
DEFAULT_TRANSCRIPTION_MODEL: Final = "gpt-4o-mini-transcribe"

#: Cap on one decoded audio payload (a delta from the service, an append from a client). The service sends
#: deltas of a few hundred ms; 1 MB is 2 minutes of μ-law or 21 s of 24 kHz PCM16, far above anything real,
#: low enough that a hostile frame cannot make us decode much more than the socket's own limit.
DEFAULT_MAX_AUDIO_BYTES: Final = 1_000_000
# 4 base64 characters carry 3 bytes: text longer than this cannot decode to <= the cap.
_MAX_INT: Final = 2**53  # JSON integers past this are not integers to most peers

#: The one function we offer: the agent may hang up. No arguments (a reason is optional, for the log).
END_CALL_TOOL: Final[Mapping[str, Any]] = {
    "type": "function",
    "name": "end_call",
    "description": (
        "End the phone call. Call this once the conversation is over, after saying goodbye; "
        "what you already said is played to the caller before the line is hung up."
    ),
    "parameters": {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "why the call ends, in a few words"}},
        "required": [],
    },
}

#: An unknown event's type is kept to this many characters (it ends up in a log line).
MAX_TYPE_CHARS: Final = 80
#: An error event's message is kept to this many characters (the service's are one sentence).
MAX_ERROR_MESSAGE_CHARS: Final = 500

# Bound once: appends run 50 times a second per call, deltas as often.
_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64
_MISSING: Final[Any] = object()


# ----------------------------------------------------------------------------------------------------
# Events: service -> bridge


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A session's audio format: ``type`` (``audio/pcmu``, ``audio/pcm``, ...); ``rate`` for ``audio/pcm``."""

    type: str
    rate: int | None = None

    @property
    def is_pcmu(self) -> bool:
        """True for ``audio/pcmu``: Twilio's μ-law 8 kHz, forwarded as it is."""
        return self.type == FORMAT_PCMU


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """The socket is open and the session exists, at the service's defaults (``audio/pcm`` both ways)."""

    session_id: str
    input_format: AudioFormat | None
    output_format: AudioFormat | None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """The session as it is after a ``session.update``; check ``output_format`` before forwarding audio."""

    session_id: str
    input_format: AudioFormat | None
    output_format: AudioFormat | None
    voice: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class AudioDelta:
    """A piece of agent speech, base64-decoded: μ-law 8 kHz in an ``audio/pcmu`` session."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int
    audio: bytes

    def __repr__(self) -> str:
        return (
            f"AudioDelta(response_id={self.response_id!r}, item_id={self.item_id!r}, "
            f"output_index={self.output_index}, content_index={self.content_index}, "
            f"audio=<{len(self.audio)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class AudioDone:
    """The service has sent all the audio of this item (or the response was cancelled)."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """A piece of the text of the agent's speech."""

    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    """The whole text of the agent's speech for one item (what it generated, not what the caller heard)."""

    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class InputTranscript:
    """What the caller said in one turn, as the transcription model heard it."""

    item_id: str
    content_index: int
    transcript: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Server VAD heard the caller start (the barge-in signal); ``audio_start_ms`` is in input-audio time."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Server VAD heard the caller stop (the caller's turn ends here, in input-audio time)."""

    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """The service started a response."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """A response ended; ``status``: ``completed``, ``cancelled``, ``incomplete``, ``failed``."""

    response_id: str
    status: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The model calls a function (``response.function_call_arguments.done``); ``arguments`` is JSON text."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An ``error`` event; ``label`` is a short ``[a-z0-9_]`` name for metrics (``code``, else ``type``)."""

    type: str
    code: str | None
    message: str
    param: str | None = None
    label: str = "error"


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event of a type we do not use (either direction); ignored, never an error."""

    type: str


ServerEvent: TypeAlias = (
    SessionCreated
    | SessionUpdated
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | InputTranscript
    | SpeechStarted
    | SpeechStopped
    | ResponseCreated
    | ResponseDone
    | FunctionCall
    | ErrorEvent
    | Unknown
)


# ----------------------------------------------------------------------------------------------------
# Field helpers. Each raises OpenAIProtocolError naming the field by its dotted path.


def _fail(kind: str, detail: str) -> NoReturn:
    raise OpenAIProtocolError(kind, detail)


def _load_object(data: str | bytes | bytearray | memoryview) -> dict[str, Any]:
    if isinstance(data, bytes | bytearray | memoryview):
        _fail("binary_frame", f"binary frame of {len(data)} bytes; Realtime frames are JSON text")
    try:
        msg = _loads(data)
    except _JSONDecodeError as exc:
        _fail("bad_json", f"{exc} in {short_repr(data)}")
    if type(msg) is not dict:
        _fail("not_object", f"expected a JSON object, got {type(msg).__name__}: {short_repr(msg)}")
    return msg


def _type(msg: dict[str, Any]) -> str:
    kind = msg.get("type", _MISSING)
    if type(kind) is str:
        return kind
    if kind is _MISSING:
        _fail("missing_field", "type is missing")
    _fail("bad_field", f"type: expected a string, got {short_repr(kind)}")


def _str(obj: dict[str, Any], key: str, path: str, default: Any = _MISSING) -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            _fail("missing_field", f"{path} is missing")
        return default  # type: ignore[no-any-return]
    _fail("bad_field", f"{path}: expected a string, got {short_repr(value)}")


def _opt_str(obj: dict[str, Any], key: str, path: str) -> str | None:
    value: str | None = _str(obj, key, path, None)
    return value


def _int(obj: dict[str, Any], key: str, path: str, default: Any = _MISSING) -> int:
    value = obj.get(key, _MISSING)
    if type(value) is int and 0 <= value <= _MAX_INT:  # bool is not int here: type() is exact
        return value
    if value is _MISSING:
        if default is _MISSING:
            _fail("missing_field", f"{path} is missing")
        return default  # type: ignore[no-any-return]
    _fail("bad_field", f"{path}: expected a non-negative integer, got {short_repr(value)}")


def _object(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key, _MISSING)
    if type(value) is dict:
        return value
    if value is _MISSING:
        _fail("missing_field", f"{path} is missing")
    _fail("bad_field", f"{path}: expected an object, got {short_repr(value)}")


def _audio(text: Any, path: str, max_bytes: int) -> bytes:
    if type(text) is not str:
        if text is _MISSING:
            _fail("missing_field", f"{path} is missing")
        _fail("bad_field", f"{path}: expected a base64 string, got {short_repr(text)}")
    if len(text) > 4 * ((max_bytes + 2) // 3):
        _fail("too_large", f"{path}: {len(text)} base64 chars, limit {max_bytes} bytes decoded")
    try:
        audio = _a2b(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        _fail("bad_base64", f"{path}: {exc} in {short_repr(text)}")
    if len(audio) > max_bytes:
        _fail("too_large", f"{path}: {len(audio)} bytes, limit {max_bytes}")
    return audio


_LABEL_JUNK = re.compile(r"[^a-z0-9_]+")
_MAX_LABEL_CHARS: Final = 40


def _label(value: object) -> str | None:
    """A metric-safe label from a short identifier (``"session_expired"``, ``"invalid-value"``)."""
    if type(value) is not str or len(value) > _MAX_LABEL_CHARS:
        return None
    label = _LABEL_JUNK.sub("_", value.lower()).strip("_")
    return label or None


# ----------------------------------------------------------------------------------------------------
# service -> bridge


def parse_server_event(
    data: str | bytes | bytearray | memoryview, *, max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES
) -> ServerEvent:
    """Parse one frame from the Realtime service.

    Only what the bridge relies on is checked; extra fields are ignored and unknown types are
    :class:`Unknown`.

    Args:
        data: the frame's text (a binary frame is ``binary_frame``: the service sends text only).
        max_audio_bytes: largest decoded audio delta accepted; the base64 text is measured before it is
            decoded, so an oversized frame costs no decoding.

    Raises:
        OpenAIProtocolError: the frame is not a message we can use; ``kind`` says why.
    """
    msg = _load_object(data)
    kind = msg.get("type")
    if kind == "response.output_audio.delta":  # the hot path: straight through, lookups once
        response_id = msg.get("response_id")
        item_id = msg.get("item_id")
        output_index = msg.get("output_index", 0)
        content_index = msg.get("content_index", 0)
        if not (
            type(response_id) is str
            and type(item_id) is str
            and type(output_index) is int
            and type(content_index) is int
            and 0 <= output_index <= _MAX_INT
            and 0 <= content_index <= _MAX_INT
        ):
            return _parse_delta_slowly(msg, max_audio_bytes)  # raises the precise error
        return AudioDelta(
            response_id,
            item_id,
            output_index,
            content_index,
            _audio(msg.get("delta", _MISSING), "delta", max_audio_bytes),
        )
    kind = _type(msg)
    parser = _SERVER_PARSERS.get(kind)
    if parser is None:
        return Unknown(kind[:MAX_TYPE_CHARS])
    return parser(msg)


def _parse_delta_slowly(msg: dict[str, Any], max_audio_bytes: int) -> AudioDelta:
    return AudioDelta(
        _str(msg, "response_id", "response_id"),
        _str(msg, "item_id", "item_id"),
        _int(msg, "output_index", "output_index", 0),
        _int(msg, "content_index", "content_index", 0),
        _audio(msg.get("delta", _MISSING), "delta", max_audio_bytes),
    )


def _format(audio: dict[str, Any], direction: str) -> AudioFormat | None:
    """``session.audio.<direction>.format``; None when the session does not say."""
    side = audio.get(direction)
    if side is None:
        return None
    path = f"session.audio.{direction}"
    if type(side) is not dict:
        _fail("bad_field", f"{path}: expected an object, got {short_repr(side)}")
    fmt = side.get("format")
    if fmt is None:
        return None
    if type(fmt) is not dict:
        _fail("bad_field", f"{path}.format: expected an object, got {short_repr(fmt)}")
    rate = fmt.get("rate")
    if rate is not None and not (type(rate) is int and 0 < rate <= _MAX_INT):
        _fail("bad_field", f"{path}.format.rate: expected a positive integer, got {short_repr(rate)}")
    return AudioFormat(_str(fmt, "type", f"{path}.format.type"), rate)


def _session_fields(msg: dict[str, Any]) -> tuple[str, AudioFormat | None, AudioFormat | None, str | None]:
    session = _object(msg, "session", "session")
    audio = session.get("audio")
    if audio is None:
        audio = {}
    elif type(audio) is not dict:
        _fail("bad_field", f"session.audio: expected an object, got {short_repr(audio)}")
    output = audio.get("output")
    voice = output.get("voice") if type(output) is dict else None
    return (
        _str(session, "id", "session.id", ""),
        _format(audio, "input"),
        _format(audio, "output"),
        voice if type(voice) is str else None,  # a custom voice is an object: not ours to name
    )


def _parse_session_created(msg: dict[str, Any]) -> SessionCreated:
    session_id, input_format, output_format, _ = _session_fields(msg)
    return SessionCreated(session_id, input_format, output_format)


def _parse_session_updated(msg: dict[str, Any]) -> SessionUpdated:
    return SessionUpdated(*_session_fields(msg))


def _parse_audio_done(msg: dict[str, Any]) -> AudioDone:
    return AudioDone(
        _str(msg, "response_id", "response_id"),
        _str(msg, "item_id", "item_id"),
        _int(msg, "output_index", "output_index", 0),
        _int(msg, "content_index", "content_index", 0),
    )


def _parse_transcript_delta(msg: dict[str, Any]) -> TranscriptDelta:
    return TranscriptDelta(
        _str(msg, "response_id", "response_id"), _str(msg, "item_id", "item_id"), _str(msg, "delta", "delta")
    )


def _parse_transcript_done(msg: dict[str, Any]) -> TranscriptDone:
    return TranscriptDone(
        _str(msg, "response_id", "response_id"),
        _str(msg, "item_id", "item_id"),
        _str(msg, "transcript", "transcript"),
    )


def _parse_input_transcript(msg: dict[str, Any]) -> InputTranscript:
    return InputTranscript(
        _str(msg, "item_id", "item_id"),
        _int(msg, "content_index", "content_index", 0),
        _str(msg, "transcript", "transcript"),
    )


def _parse_speech_started(msg: dict[str, Any]) -> SpeechStarted:
    return SpeechStarted(_int(msg, "audio_start_ms", "audio_start_ms"), _str(msg, "item_id", "item_id"))


def _parse_speech_stopped(msg: dict[str, Any]) -> SpeechStopped:
    return SpeechStopped(_int(msg, "audio_end_ms", "audio_end_ms"), _str(msg, "item_id", "item_id"))


def _parse_response_created(msg: dict[str, Any]) -> ResponseCreated:
    return ResponseCreated(_str(_object(msg, "response", "response"), "id", "response.id"))


def _parse_response_done(msg: dict[str, Any]) -> ResponseDone:
    response = _object(msg, "response", "response")
    return ResponseDone(_str(response, "id", "response.id"), _str(response, "status", "response.status", ""))


def _parse_function_call(msg: dict[str, Any]) -> FunctionCall:
    return FunctionCall(
        _str(msg, "response_id", "response_id", ""),
        _str(msg, "item_id", "item_id", ""),
        _str(msg, "call_id", "call_id"),
        _str(msg, "name", "name"),
        _str(msg, "arguments", "arguments", ""),
    )


def _parse_error(msg: dict[str, Any]) -> ErrorEvent:
    error = _object(msg, "error", "error")
    kind = _str(error, "type", "error.type", "")
    code = _opt_str(error, "code", "error.code")
    return ErrorEvent(
        kind,
        code,
        _str(error, "message", "error.message", "")[:MAX_ERROR_MESSAGE_CHARS],
        _opt_str(error, "param", "error.param"),
        _label(code) or _label(kind) or "error",
    )


_SERVER_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ServerEvent]]] = {
    "session.created": _parse_session_created,
    "session.updated": _parse_session_updated,
    "response.output_audio.done": _parse_audio_done,
    "response.output_audio_transcript.delta": _parse_transcript_delta,
    "response.output_audio_transcript.done": _parse_transcript_done,
    "conversation.item.input_audio_transcription.completed": _parse_input_transcript,
    "input_audio_buffer.speech_started": _parse_speech_started,
    "input_audio_buffer.speech_stopped": _parse_speech_stopped,
    "response.created": _parse_response_created,
    "response.done": _parse_response_done,
    "response.function_call_arguments.done": _parse_function_call,
    "error": _parse_error,
}


# ----------------------------------------------------------------------------------------------------
# bridge -> service


def session_update_message(
    *,
    instructions: str,
    voice: str = DEFAULT_VOICE,
    transcription_model: str | None = DEFAULT_TRANSCRIPTION_MODEL,
    tools: bool = True,
) -> str:
    """The GA ``session.update`` the bridge sends first: ``audio/pcmu`` both ways, server VAD, ``end_call``.

    Args:
        instructions: the system prompt (``AGENT_SYSTEM_PROMPT`` or the call's ``system_prompt``).
        voice: ``session.audio.output.voice``.
        transcription_model: the caller-side transcription model; None turns transcription off.
        tools: offer ``end_call`` (and let the model choose when to call it).

    Raises:
        TypeError: an argument is not a string.
    """
    for name, value in (("instructions", instructions), ("voice", voice)):
        if type(value) is not str:
            raise TypeError(f"{name} must be str, got {type(value).__name__}")
    audio_input: dict[str, Any] = {
        "format": {"type": FORMAT_PCMU},
        "turn_detection": {"type": "server_vad"},
    }
    if transcription_model is not None:
        audio_input["transcription"] = {"model": transcription_model}
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": instructions,
        "audio": {"input": audio_input, "output": {"format": {"type": FORMAT_PCMU}, "voice": voice}},
    }
    if tools:
        session["tools"] = [END_CALL_TOOL]
        session["tool_choice"] = "auto"
    return _dumps({"type": "session.update", "session": session}).decode()


_APPEND_HEAD: Final = '{"type":"input_audio_buffer.append","audio":"'


def append_audio_message(ulaw: bytes) -> str:
    """Caller audio: ``{"type":"input_audio_buffer.append","audio":"<base64>"}``.

    Built by concatenation (base64 needs no JSON escaping): this runs for every 20 ms frame of every call.

    Raises:
        ValueError: ``ulaw`` is empty (the service refuses an empty append).
    """
    if not ulaw:
        raise ValueError("refusing to build an input_audio_buffer.append with no audio")
    return _APPEND_HEAD + _b2a(ulaw, newline=False).decode("ascii") + '"}'


def truncate_message(item_id: str, audio_end_ms: int, content_index: int = 0) -> str:
    """``conversation.item.truncate``: the caller heard only the first ``audio_end_ms`` of ``item_id``.

    Raises:
        TypeError, ValueError: ``item_id`` is not a non-empty string or a number is not a non-negative int.
    """
    if type(item_id) is not str or not item_id:
        raise ValueError(f"item_id must be a non-empty string, got {item_id!r}")
    for name, value in (("audio_end_ms", audio_end_ms), ("content_index", content_index)):
        if type(value) is not int:
            raise TypeError(f"{name} must be int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    return _dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }
    ).decode()


def user_text_message(text: str) -> str:
    """``conversation.item.create`` of a user message with one ``input_text`` part (e.g. a DTMF digit)."""
    if type(text) is not str:
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return _dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    ).decode()


def function_call_output_message(call_id: str, output: str) -> str:
    """``conversation.item.create`` of a ``function_call_output``: the answer to ``call_id``."""
    if type(call_id) is not str or type(output) is not str:
        raise TypeError("call_id and output must be str")
    return _dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }
    ).decode()


def response_create_message() -> str:
    """``{"type":"response.create"}``: answer now (after a text item or a function output)."""
    return '{"type":"response.create"}'


def response_cancel_message() -> str:
    """``{"type":"response.cancel"}``: stop the response in progress."""
    return '{"type":"response.cancel"}'
