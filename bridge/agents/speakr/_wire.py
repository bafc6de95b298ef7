"""Speakr voice-agent wire format, without I/O (in the manner of h11/wsproto).

Text or bytes in, small frozen events out; arguments in, text out. Nothing here touches a socket or
imports trio.

Both ends of the wire live here, because our local agent and agent emulator speak Speakr's side:

- Speakr -> bridge: :func:`parse_event` (bridge side) and :func:`initial_message`, :func:`media_message`, ...
  (agent side).
- bridge -> Speakr: :func:`start_message`, :func:`status_message` and caller audio as raw binary frames
  (bridge side), and :func:`parse_client_message` (agent side).

Every text frame is ``{"type": <event>, "msg": <payload>}``. The guide is loose about it, so we accept
``event`` as a synonym of ``type`` and ``msg`` absent, a string, a JSON-encoded string or an object, and
we send exactly what the guide shows. Bad input raises :class:`~bridge._errors.SpeakrProtocolError`
with a fixed ``kind`` and never anything else.

The per-call start parameters (:class:`StartParams`) and their validation ranges live here too, in one place,
so the configuration, the Twilio ``customParameters`` overrides and the outbound-calls API agree.
"""

from __future__ import annotations

import binascii
import dataclasses
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeAlias

import orjson

from bridge._errors import SpeakrProtocolError, short_repr

__all__ = [
    "PREFIX_PADDING_RANGE",
    "SILENCE_DURATION_MS_RANGE",
    "SYSTEM_PROMPT_MAX_CHARS",
    "TEMPERATURE_RANGE",
    "THRESHOLD_RANGE",
    "VOICE_ID_PATTERN",
    "WIRE_FIELDS",
    "AgentMedia",
    "AudioFrame",
    "Clear",
    "ClientMessage",
    "Continue",
    "End",
    "Info",
    "Initial",
    "Pause",
    "Ready",
    "SpeakrEvent",
    "StartParams",
    "StartRequest",
    "Status",
    "clear_message",
    "continue_message",
    "end_message",
    "info_message",
    "initial_message",
    "media_message",
    "parse_client_message",
    "parse_event",
    "pause_message",
    "ready_message",
    "start_message",
    "status_message",
    "validate_field",
]

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64
_MISSING: Final[Any] = object()


# ----------------------------------------------------------------------------------------------------
# Start parameters: the one place their ranges are written down.

#: Inclusive bounds. Speakr documents none; these keep a typo from reaching the agent.
TEMPERATURE_RANGE: Final[tuple[float, float]] = (0.0, 2.0)
THRESHOLD_RANGE: Final[tuple[float, float]] = (0.0, 1.0)
PREFIX_PADDING_RANGE: Final[tuple[float, float]] = (0.0, 5.0)
SILENCE_DURATION_MS_RANGE: Final[tuple[int, int]] = (50, 10_000)
#: ``voice_id``: 1 to 64 ASCII letters, digits, ``_``, ``.``, ``-`` (matched whole).
VOICE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: ``system_prompt``: not blank, at most this many characters.
SYSTEM_PROMPT_MAX_CHARS: Final = 8000

#: Start-message field name (also the Twilio ``<Parameter>`` name) -> :class:`StartParams` attribute.
#: Ordered as the start message's keys, less ``sessionId`` (set per call, never overridden).
WIRE_FIELDS: Final[Mapping[str, str]] = {
    "temperature": "temperature",
    "prefixPadding": "prefix_padding",
    "voice_id": "voice_id",
    "silenceDuration": "silence_duration_ms",
    "threshold": "threshold",
    "system_prompt": "system_prompt",
}
_ATTRIBUTES: Final = {attr: wire for wire, attr in WIRE_FIELDS.items()}

# A decimal number as people write them: ASCII digits, no nan/inf, no "1_000", no hex; bounded length.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_MAX_NUMBER_CHARS: Final = 40


def _number(wire: str, value: object) -> float:
    if type(value) is str:
        text = value.strip()
        if len(text) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
            raise ValueError(f"{wire} must be a number, got {short_repr(value)}")
        number = float(text)
    elif type(value) is int or type(value) is float:  # not bool
        number = float(value)
    else:
        raise ValueError(f"{wire} must be a number, got {short_repr(value)}")
    if not math.isfinite(number):
        raise ValueError(f"{wire} must be a finite number, got {short_repr(value)}")
    return number


def _in_range(wire: str, number: float, bounds: tuple[float, float], value: object) -> None:
    low, high = bounds
    if not low <= number <= high:
        raise ValueError(f"{wire} must be between {low:g} and {high:g}, got {short_repr(value)}")


def _is_utf8_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_field(name: str, value: object) -> float | int | str:
    """Check one start parameter and convert it to its type.

    Strings are converted (``"0.5"`` -> ``0.5``, ``"800"`` -> ``800``): Twilio ``customParameters`` and
    environment variables are strings. JSON numbers are accepted as they are; booleans, NaN and infinities
    are not. Ranges are the module constants (``TEMPERATURE_RANGE``, ...).

    Args:
        name: the wire name (``silenceDuration``) or the :class:`StartParams` attribute
            (``silence_duration_ms``).
        value: the raw value.

    Returns:
        ``float`` for temperature/threshold/prefixPadding, ``int`` for silenceDuration (ms), ``str``
        otherwise.

    Raises:
        ValueError: unknown name, wrong type or out of range; the message names the field (values truncated).
    """
    wire = name if name in WIRE_FIELDS else _ATTRIBUTES.get(name)
    if wire is None:
        raise ValueError(f"unknown start parameter {short_repr(name)}")
    if wire == "temperature":
        number = _number(wire, value)
        _in_range(wire, number, TEMPERATURE_RANGE, value)
        return number
    if wire == "threshold":
        number = _number(wire, value)
        _in_range(wire, number, THRESHOLD_RANGE, value)
        return number
    if wire == "prefixPadding":
        number = _number(wire, value)
        _in_range(wire, number, PREFIX_PADDING_RANGE, value)
        return number
    if wire == "silenceDuration":
        number = _number(wire, value)
        if not number.is_integer():
            raise ValueError(f"{wire} must be a whole number of milliseconds, got {short_repr(value)}")
        _in_range(wire, number, SILENCE_DURATION_MS_RANGE, value)
        return int(number)
    if wire == "voice_id":
        if type(value) is not str or not VOICE_ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"voice_id must be 1-64 characters of letters, digits, '_', '.', '-', got {short_repr(value)}"
            )
        return value
    # system_prompt. A lone surrogate (possible in an environment variable) could never be sent as JSON.
    if (
        type(value) is not str
        or not value.strip()
        or len(value) > SYSTEM_PROMPT_MAX_CHARS
        or not _is_utf8_text(value)
    ):
        raise ValueError(
            f"system_prompt must be a non-blank string of at most {SYSTEM_PROMPT_MAX_CHARS} characters, "
            f"got {short_repr(value)}"
        )
    return value


def _new_session_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class StartParams:
    """What the bridge tells Speakr in its ``start`` message; defaults are the guide's.

    Constructing one validates every field (``ValueError``) and normalises numbers (``temperature=1`` becomes
    ``1.0``), so an invalid set of parameters cannot exist.
    """

    temperature: float = 0.7
    prefix_padding: float = 0.7
    voice_id: str = "jill"
    silence_duration_ms: int = 1000
    threshold: float = 0.18
    system_prompt: str = "You are a helpful assistant"
    session_id: str = field(default_factory=_new_session_id)

    def __post_init__(self) -> None:
        for attr in _ATTRIBUTES:
            object.__setattr__(self, attr, validate_field(attr, getattr(self, attr)))
        if type(self.session_id) is not str or not self.session_id:
            raise ValueError(f"session_id must be a non-empty string, got {short_repr(self.session_id)}")

    def with_overrides(self, custom_parameters: Mapping[str, str]) -> tuple[StartParams, list[str]]:
        """Apply a call's Twilio ``customParameters`` named like the start-message fields.

        Parameters with other names (``bridge_token``, ...) are not ours and are ignored silently; their
        values never appear in a warning.

        Returns:
            The new parameters (same ``session_id``) and one warning per invalid value, which was ignored in
            favour of the current value.
        """
        changes: dict[str, Any] = {}
        warnings: list[str] = []
        for wire, attr in WIRE_FIELDS.items():
            if wire not in custom_parameters:
                continue
            try:
                changes[attr] = validate_field(wire, custom_parameters[wire])
            except ValueError as exc:
                warnings.append(f"{exc}; keeping {short_repr(getattr(self, attr))}")
        return (dataclasses.replace(self, **changes) if changes else self), warnings


# ----------------------------------------------------------------------------------------------------
# Events: Speakr -> bridge


@dataclass(frozen=True, slots=True)
class Initial:
    """The socket is open: answer with :func:`start_message`."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The agent is ready for caller audio."""


@dataclass(frozen=True, slots=True, repr=False)
class AgentMedia:
    """Agent speech: ``audio`` is PCM16LE 24 kHz mono, any length (even odd or empty).

    ``session_id``/``sequence_id`` keep the JSON type they arrived with, to be echoed unchanged in the status.
    ``metadata`` is the whole metadata object.
    """

    session_id: Any
    sequence_id: Any
    audio: bytes
    metadata: dict[str, Any]

    def __repr__(self) -> str:
        return (
            f"AgentMedia(session_id={short_repr(self.session_id)}, "
            f"sequence_id={short_repr(self.sequence_id)}, "
            f"audio=<{len(self.audio)} bytes>, metadata={short_repr(self.metadata)})"
        )


@dataclass(frozen=True, slots=True)
class Pause:
    """The caller may be interrupting: stop playback, keep what was cut off."""


@dataclass(frozen=True, slots=True)
class Continue:
    """Not an interruption after all: replay what ``pause`` cut off."""


@dataclass(frozen=True, slots=True)
class Clear:
    """A real interruption: drop everything not yet played."""


@dataclass(frozen=True, slots=True)
class Info:
    """An error or a notice from the agent; ``kind`` is a short ``[a-z0-9_]`` label for metrics."""

    message: Any
    kind: str = "message"


@dataclass(frozen=True, slots=True)
class End:
    """The agent is done with the call."""


SpeakrEvent: TypeAlias = Initial | Ready | AgentMedia | Pause | Continue | Clear | Info | End

_INITIAL: Final = Initial()
_READY: Final = Ready()
_PAUSE: Final = Pause()
_CONTINUE: Final = Continue()
_CLEAR: Final = Clear()
_END: Final = End()


# ----------------------------------------------------------------------------------------------------
# Events: bridge -> Speakr, as the agent sees them


@dataclass(frozen=True, slots=True)
class StartRequest:
    """The bridge's ``start``: the decoded parameter object, unvalidated (the agent decides)."""

    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Status:
    """A piece of agent audio was played to the caller; ids as the bridge echoed them."""

    session_id: Any
    sequence_id: Any


@dataclass(frozen=True, slots=True, repr=False)
class AudioFrame:
    """Caller audio: a binary frame, PCM16LE 8 kHz (512 bytes from the bridge; the last may be padded)."""

    pcm: bytes

    def __repr__(self) -> str:
        return f"AudioFrame(pcm=<{len(self.pcm)} bytes>)"


ClientMessage: TypeAlias = StartRequest | Status | AudioFrame


# ----------------------------------------------------------------------------------------------------
# Parsing helpers


def _fail(kind: str, detail: str) -> NoReturn:
    raise SpeakrProtocolError(kind, detail)


def _load_frame(data: str) -> tuple[str, Any]:
    """Decode a text frame into ``(type, msg)``; ``msg`` is ``_MISSING`` when absent."""
    try:
        frame = _loads(data)
    except _JSONDecodeError as exc:
        _fail("bad_json", f"{exc} in {short_repr(data)}")
    if type(frame) is not dict:
        _fail("not_object", f"expected a JSON object, got {type(frame).__name__}: {short_repr(frame)}")
    kind = frame.get("type")
    if kind is None:
        kind = frame.get("event", _MISSING)
    if type(kind) is not str:
        if kind is _MISSING or kind is None:
            _fail("missing_field", "type is missing")
        _fail("bad_field", f"type: expected a string, got {short_repr(kind)}")
    return kind, frame.get("msg", _MISSING)


def _normalise(kind: str, table: Mapping[str, Any]) -> Any:
    found = table.get(kind)
    if found is None:
        found = table.get(kind.strip().lower())  # liberal: " Media" or "MEDIA" is still media
        if found is None:
            _fail("unknown_event", f"type {short_repr(kind)}")
    return found


def _decode_json_string(payload: Any) -> Any:
    """``msg`` may be a JSON-encoded string; decode it when it plainly is one, else keep it as it is."""
    if type(payload) is str and payload[:1] in ("{", "[", '"'):
        try:
            return _loads(payload)
        except _JSONDecodeError:
            return payload
    return payload


# ----------------------------------------------------------------------------------------------------
# Speakr -> bridge


def parse_event(data: str | bytes) -> SpeakrEvent:
    """Parse one frame from Speakr.

    Args:
        data: a text frame as ``str``. ``bytes`` means a binary frame, which Speakr's protocol does not
            describe: it raises ``binary_frame`` so the caller can count and drop it.

    Returns:
        One of :class:`Initial`, :class:`Ready`, :class:`AgentMedia`, :class:`Pause`, :class:`Continue`,
        :class:`Clear`, :class:`Info`, :class:`End`.

    Raises:
        SpeakrProtocolError: the frame is not a message we can use; ``kind`` says why.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        _fail("binary_frame", f"binary frame of {len(data)} bytes")
    kind, payload = _load_frame(data)
    handler = _normalise(kind, _EVENTS)
    # media and info parse their payload; the other events carry nothing we use (one shared instance each).
    return handler(payload) if callable(handler) else handler  # type: ignore[no-any-return]


def _parse_media(payload: Any) -> AgentMedia:
    if type(payload) is not str:
        if payload is _MISSING or payload is None:
            _fail("missing_field", "media msg is missing")
        _fail("bad_field", f"media msg: expected a base64 string, got {short_repr(payload)}")
    if payload[:1] == '"':  # a JSON-encoded string of the base64 text
        payload = _decode_json_string(payload)
        if type(payload) is not str:
            _fail("bad_base64", f"media msg: not base64: {short_repr(payload)}")
    try:
        raw = _a2b(payload, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        _fail("bad_base64", f"media msg: {exc} in {short_repr(payload)}")
    end = raw.find(0)
    if end < 0:
        _fail("no_metadata", f"media msg has no NUL after its metadata ({len(raw)} bytes decoded)")
    try:
        metadata = _loads(raw[:end])
    except _JSONDecodeError as exc:
        _fail("bad_metadata", f"media metadata is not JSON: {exc} in {short_repr(raw[:end])}")
    if type(metadata) is not dict:
        _fail("bad_metadata", f"media metadata is not an object: {short_repr(metadata)}")
    if "session_id" not in metadata or "sequence_id" not in metadata:
        _fail("bad_metadata", f"media metadata lacks session_id or sequence_id: {short_repr(metadata)}")
    return AgentMedia(metadata["session_id"], metadata["sequence_id"], raw[end + 1 :], metadata)


_LABEL_JUNK = re.compile(r"[^a-z0-9_]+")
_MAX_LABEL_CHARS: Final = 32


def _label(value: object) -> str | None:
    """A metric-safe label from a short identifier (``"INVALID_API_KEY"``, ``"bad-param"``, ``4001``)."""
    if type(value) is int:
        value = str(value)
    if type(value) is not str or len(value) > _MAX_LABEL_CHARS:
        return None
    label = _LABEL_JUNK.sub("_", value.lower()).strip("_")
    return label or None


def _parse_info(payload: Any) -> Info:
    message = None if payload is _MISSING else _decode_json_string(payload)
    kind = None
    if type(message) is dict:
        for key in ("type", "code", "kind"):
            kind = _label(message.get(key))
            if kind is not None:
                break
    return Info(message, kind or "message")


_EVENTS: Final[dict[str, Any]] = {
    "initial": _INITIAL,
    "ready": _READY,
    "media": _parse_media,
    "pause": _PAUSE,
    "continue": _CONTINUE,
    "clear": _CLEAR,
    "info": _parse_info,
    "end": _END,
}


# ----------------------------------------------------------------------------------------------------
# bridge -> Speakr


def start_message(params: StartParams) -> str:
    """The answer to ``initial``: ``{"type":"start","msg":"<JSON string>"}``, keys in the guide's order."""
    inner = _dumps(
        {
            "temperature": params.temperature,
            "prefixPadding": params.prefix_padding,
            "voice_id": params.voice_id,
            "silenceDuration": params.silence_duration_ms,
            "threshold": params.threshold,
            "system_prompt": params.system_prompt,
            "sessionId": params.session_id,
        }
    ).decode()
    return _dumps({"type": "start", "msg": inner}).decode()


def status_message(session_id: Any, sequence_id: Any) -> str:
    """Playback confirmed: ``{"type":"status","msg":{"session_id":…,"sequence_id":…}}``, msg an object.

    The ids are echoed with the JSON types they arrived with.

    Raises:
        TypeError: an id is not JSON-serialisable.
    """
    return _dumps({"type": "status", "msg": {"session_id": session_id, "sequence_id": sequence_id}}).decode()


# ----------------------------------------------------------------------------------------------------
# Agent side: what the bridge sends, and what an agent sends


def parse_client_message(data: str | bytes | bytearray | memoryview) -> ClientMessage:
    """Parse one frame sent to the agent (for our local agent and agent emulator).

    Binary frames are caller audio. Text frames are ``start`` (``msg`` a JSON string, or an object) or
    ``status`` (``msg`` an object, or a JSON string of one).

    Raises:
        SpeakrProtocolError: anything else; ``kind`` says why.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return AudioFrame(bytes(data))
    kind, payload = _load_frame(data)
    handler = _normalise(kind, _CLIENT_MESSAGES)
    if payload is _MISSING or payload is None:
        _fail("missing_field", f"{kind} msg is missing")
    return handler(payload)  # type: ignore[no-any-return]


def _object_msg(kind: str, payload: Any) -> dict[str, Any]:
    value = _decode_json_string(payload)
    if type(value) is not dict:
        _fail(
            "bad_field", f"{kind} msg: expected an object or a JSON string of one, got {short_repr(payload)}"
        )
    return value


def _parse_start_request(payload: Any) -> StartRequest:
    return StartRequest(_object_msg("start", payload))


def _parse_status(payload: Any) -> Status:
    msg = _object_msg("status", payload)
    for key in ("session_id", "sequence_id"):
        if key not in msg:
            _fail("missing_field", f"status msg.{key} is missing")
    return Status(msg["session_id"], msg["sequence_id"])


_CLIENT_MESSAGES: Final[dict[str, Any]] = {"start": _parse_start_request, "status": _parse_status}


def initial_message() -> str:
    """``{"type":"initial"}``: the agent's first frame."""
    return '{"type":"initial"}'


def ready_message() -> str:
    """``{"type":"ready"}``: the agent takes caller audio from now on."""
    return '{"type":"ready"}'


def media_message(session_id: Any, sequence_id: Any, pcm: bytes) -> str:
    """Agent speech: ``msg`` is base64 of ``<metadata JSON> 0x00 <PCM16LE 24 kHz>``.

    Args:
        session_id: echoed back by the bridge in its status, any JSON value.
        sequence_id: likewise.
        pcm: PCM16LE 24 kHz mono, any length (empty is allowed: the bridge plays nothing).

    Raises:
        TypeError: an id is not JSON-serialisable.
    """
    metadata = _dumps({"session_id": session_id, "sequence_id": sequence_id})
    return _dumps(
        {"type": "media", "msg": _b2a(metadata + b"\x00" + pcm, newline=False).decode("ascii")}
    ).decode()


def pause_message() -> str:
    """``{"type":"pause"}``: the caller may be interrupting."""
    return '{"type":"pause"}'


def continue_message() -> str:
    """``{"type":"continue"}``: it was not an interruption."""
    return '{"type":"continue"}'


def clear_message() -> str:
    """``{"type":"clear"}``: it was an interruption."""
    return '{"type":"clear"}'


def info_message(msg: Any) -> str:
    """``{"type":"info","msg":…}``: an error or a notice; ``msg`` any JSON value (usually an object or text).

    Raises:
        TypeError: ``msg`` is not JSON-serialisable.
    """
    return _dumps({"type": "info", "msg": msg}).decode()


def end_message() -> str:
    """``{"type":"end"}``: the agent is done with the call."""
    return '{"type":"end"}'
