"""Deepgram Voice Agent wire format (the v1 interface), without I/O, both ends (in the manner of h11/wsproto).

Text or bytes in, small frozen events out; arguments in, text out. Nothing here touches a socket or imports
trio, so the protocol is tested with recorded messages, and our emulator speaks the service's side with the
same code. Two directions, each with both ends, in two modules:

- service -> bridge, here: :func:`parse_event` (bridge side) and the builders of what the service sends
  (:func:`welcome_message`, :func:`conversation_text_message`, ...; emulator side). Binary frames are agent
  audio, in the ``audio.output`` format of the settings (μ-law 8 kHz, no container, for the bridge).
- bridge -> service, in :mod:`._client_wire`: ``Settings``, ``KeepAlive``, ``FunctionCallResponse``,
  ``Inject*`` builders and caller audio as raw binary frames (bridge side); ``parse_client_message``
  (emulator side, as strict as the service).

Every text frame is a JSON object whose ``type`` names the message, exactly as the v1 reference spells it.
A server message of a type we do not know becomes :class:`Unknown` (log it once, carry on: the service adds
types). Anything else we cannot use raises :class:`~bridge._errors.DeepgramProtocolError` with a fixed
``kind`` and never another exception, so one ``except`` in a receive loop counts and drops it. The field
helpers here are shared with :mod:`._client_wire`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

import orjson

from bridge._errors import DeepgramProtocolError, short_repr

__all__ = [
    "CONTAINER",
    "DEFAULT_LISTEN_MODEL",
    "DEFAULT_MAX_AUDIO_BYTES",
    "DEFAULT_MAX_TEXT_CHARS",
    "DEFAULT_SPEAK_MODEL",
    "DEFAULT_THINK_MODEL",
    "DEFAULT_THINK_PROVIDER",
    "ENCODING",
    "INPUT_ENCODINGS",
    "OUTPUT_ENCODINGS",
    "SAMPLE_RATE",
    "AgentAudio",
    "AgentAudioDone",
    "AgentError",
    "AgentStartedSpeaking",
    "AgentThinking",
    "AgentWarning",
    "ConversationText",
    "DeepgramEvent",
    "FunctionCall",
    "FunctionCallRequest",
    "FunctionCallResponse",
    "History",
    "InjectionRefused",
    "PromptUpdated",
    "SettingsApplied",
    "SpeakUpdated",
    "Unknown",
    "UserStartedSpeaking",
    "Welcome",
    "agent_audio_done_message",
    "agent_started_speaking_message",
    "agent_thinking_message",
    "conversation_text_message",
    "error_message",
    "function_call_request_message",
    "history_message",
    "injection_refused_message",
    "parse_event",
    "prompt_updated_message",
    "settings_applied_message",
    "speak_updated_message",
    "user_started_speaking_message",
    "warning_message",
    "welcome_message",
]

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_MISSING: Final[Any] = object()

#: Twilio's format, both ways: μ-law, 8 kHz, raw (no WAV header), so audio passes through untouched.
ENCODING: Final = "mulaw"
SAMPLE_RATE: Final = 8000
CONTAINER: Final = "none"
DEFAULT_LISTEN_MODEL: Final = "nova-3"
DEFAULT_THINK_PROVIDER: Final = "open_ai"
DEFAULT_THINK_MODEL: Final = "gpt-4o-mini"
DEFAULT_SPEAK_MODEL: Final = "aura-2-thalia-en"
#: The encodings the v1 reference allows for ``audio.input`` and ``audio.output``.
INPUT_ENCODINGS: Final = frozenset(
    {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729"}
)
OUTPUT_ENCODINGS: Final = frozenset({"linear16", "mulaw", "alaw"})
#: Largest text frame parsed. The biggest real ones are ``History`` and ``ConversationText`` of a long turn
#: (a few kB); 256 kB is far above that and keeps a hostile frame from costing a large JSON parse.
DEFAULT_MAX_TEXT_CHARS: Final = 256 * 1024
#: Largest binary frame accepted as audio: 20 s of μ-law 8 kHz in one frame. The service streams much smaller
#: chunks; one far larger is a fault, not speech.
DEFAULT_MAX_AUDIO_BYTES: Final = 160_000
#: Sample rates accepted (Hz, inclusive): a sanity bound that keeps absurd values out, not the service's list.
_SAMPLE_RATE_RANGE: Final = (1, 192_000)
#: A ``type`` longer than this is not a message type (and must not reach a log line whole).
_MAX_TYPE_CHARS: Final = 64
#: Functions in one ``FunctionCallRequest``; the service asks for one or a few at a time.
_MAX_FUNCTIONS: Final = 64


def _fail(kind: str, detail: str) -> NoReturn:
    raise DeepgramProtocolError(kind, detail)


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


# ----------------------------------------------------------------------------------------------------
# Events: service -> bridge


@dataclass(frozen=True, slots=True)
class Welcome:
    """First message of every session."""

    request_id: str


@dataclass(frozen=True, slots=True)
class SettingsApplied:
    """The settings were accepted: caller audio may flow from now on."""


@dataclass(frozen=True, slots=True)
class ConversationText:
    """A line of the transcript: ``role`` is ``"user"`` (the caller) or ``"assistant"`` (the agent)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class UserStartedSpeaking:
    """The caller started speaking; while the agent speaks it is a barge-in: drop its queued audio."""


@dataclass(frozen=True, slots=True)
class AgentThinking:
    """The LLM is working on an answer."""

    content: str


@dataclass(frozen=True, slots=True)
class AgentStartedSpeaking:
    """The answer's audio starts now; latencies in seconds, from the end of the caller's utterance."""

    total_latency: float
    tts_latency: float
    ttt_latency: float


@dataclass(frozen=True, slots=True)
class AgentAudioDone:
    """The last byte of the answer was *sent* (not played: a mark tells when it has played)."""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """One function the agent wants called; ``arguments`` is JSON text. Answer only ``client_side`` ones."""

    id: str
    name: str
    arguments: str
    client_side: bool


@dataclass(frozen=True, slots=True)
class FunctionCallRequest:
    """The agent asks for one or more function calls."""

    functions: tuple[FunctionCall, ...]


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    """A function's result: from the bridge (a client-side call, ``id`` set) or from the service (its own
    server-side call, ``id`` may be absent)."""

    id: str | None
    name: str
    content: str


@dataclass(frozen=True, slots=True)
class AgentWarning:
    """A warning from the service (wire type ``Warning``); ``kind`` is ``code`` as a metric-safe label."""

    description: str
    code: str

    @property
    def kind(self) -> str:
        return _label(self.code)


@dataclass(frozen=True, slots=True)
class AgentError:
    """An error from the service (wire type ``Error``); ``kind`` is ``code`` as a metric-safe label."""

    description: str
    code: str

    @property
    def kind(self) -> str:
        return _label(self.code)


@dataclass(frozen=True, slots=True, repr=False)
class History:
    """A history entry (a past message or function call), as the service sent it."""

    data: dict[str, Any]

    def __repr__(self) -> str:
        return f"History({short_repr(self.data)})"


@dataclass(frozen=True, slots=True)
class PromptUpdated:
    """An ``UpdatePrompt`` took effect."""


@dataclass(frozen=True, slots=True)
class SpeakUpdated:
    """An ``UpdateSpeak`` took effect."""


@dataclass(frozen=True, slots=True)
class InjectionRefused:
    """An ``InjectAgentMessage`` was refused (someone was speaking)."""

    message: str


@dataclass(frozen=True, slots=True, repr=False)
class Unknown:
    """A message type we do not know: log it once and carry on."""

    type: str
    data: dict[str, Any]

    def __repr__(self) -> str:
        return f"Unknown(type={self.type!r}, data={short_repr(self.data)})"


@dataclass(frozen=True, slots=True, repr=False)
class AgentAudio:
    """A binary frame of agent speech, in the settings' output format (μ-law 8 kHz raw for the bridge)."""

    audio: bytes

    def __repr__(self) -> str:
        return f"AgentAudio(<{len(self.audio)} bytes>)"


DeepgramEvent: TypeAlias = (
    Welcome
    | SettingsApplied
    | ConversationText
    | UserStartedSpeaking
    | AgentThinking
    | AgentStartedSpeaking
    | AgentAudioDone
    | FunctionCallRequest
    | FunctionCallResponse
    | AgentWarning
    | AgentError
    | History
    | PromptUpdated
    | SpeakUpdated
    | InjectionRefused
    | Unknown
    | AgentAudio
)

_SETTINGS_APPLIED: Final = SettingsApplied()
_USER_STARTED_SPEAKING: Final = UserStartedSpeaking()
_AGENT_AUDIO_DONE: Final = AgentAudioDone()
_PROMPT_UPDATED: Final = PromptUpdated()
_SPEAK_UPDATED: Final = SpeakUpdated()


# ----------------------------------------------------------------------------------------------------
# Field helpers: each names the field at fault and echoes at most a short preview of the value.


def _load(data: str, max_chars: int) -> tuple[str, dict[str, Any]]:
    if len(data) > max_chars:
        _fail("too_large", f"text frame of {len(data)} chars, limit {max_chars}")
    try:
        message = _loads(data)
    except _JSONDecodeError as exc:
        _fail("bad_json", f"{exc} in {short_repr(data)}")
    if type(message) is not dict:
        _fail("not_object", f"expected a JSON object, got {type(message).__name__}: {short_repr(message)}")
    kind = message.get("type", _MISSING)
    if type(kind) is not str:
        if kind is _MISSING:
            _fail("missing_field", "type is missing")
        _fail("bad_field", f"type: expected a string, got {short_repr(kind)}")
    if len(kind) > _MAX_TYPE_CHARS:
        _fail("bad_field", f"type: {short_repr(kind)} is not a message type")
    return kind, message


def _get(obj: Mapping[str, Any], key: str, where: str, required: bool) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING and required:
        _fail("missing_field", f"{where}{key} is missing")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> Any:
    """A string field; ``_MISSING`` when optional and absent."""
    value = _get(obj, key, where, required)
    if value is not _MISSING and type(value) is not str:
        _fail("bad_field", f"{where}{key}: expected a string, got {short_repr(value)}")
    return value


def _obj(obj: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> Any:
    value = _get(obj, key, where, required)
    if value is not _MISSING and type(value) is not dict:
        _fail("bad_field", f"{where}{key}: expected an object, got {short_repr(value)}")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, bounds: tuple[int, int], *, required: bool) -> Any:
    """An integer field. ``8000.0`` is refused, as the service refuses it."""
    value = _get(obj, key, where, required)
    if value is _MISSING:
        return value
    if type(value) is float:
        _fail("bad_field", f"{where}{key}: expected an integer, got the float {short_repr(value)}")
    if type(value) is not int:
        _fail("bad_field", f"{where}{key}: expected an integer, got {short_repr(value)}")
    if not _in_range(value, bounds):
        _fail("bad_field", f"{where}{key}: {short_repr(value)} is outside {bounds}")
    return value


def _seconds(obj: Mapping[str, Any], key: str) -> float:
    value = _get(obj, key, "", True)
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        _fail("bad_field", f"{key}: expected a number of seconds >= 0, got {short_repr(value)}")
    return float(value)


def _string_list(obj: Mapping[str, Any], key: str, where: str) -> None:
    value = _get(obj, key, where, False)
    if value is not _MISSING and (type(value) is not list or any(type(v) is not str for v in value)):
        _fail("bad_field", f"{where}{key}: expected a list of strings, got {short_repr(value)}")


def _bool(obj: Mapping[str, Any], key: str, where: str = "", *, required: bool = True) -> Any:
    value = _get(obj, key, where, required)
    if value is not _MISSING and type(value) is not bool:
        _fail("bad_field", f"{where}{key}: expected true or false, got {short_repr(value)}")
    return value


_LABEL_JUNK = re.compile(r"[^a-z0-9_]+")
_MAX_LABEL_CHARS: Final = 32


def _label(code: str) -> str:
    """A metric-safe label from a service code: ``"CLIENT_MESSAGE_TIMEOUT"`` -> ``client_message_timeout``."""
    label = _LABEL_JUNK.sub("_", code.lower()).strip("_")[:_MAX_LABEL_CHARS]
    return label or "unknown"


# ----------------------------------------------------------------------------------------------------
# service -> bridge


def parse_event(
    data: str | bytes | bytearray | memoryview,
    *,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
) -> DeepgramEvent:
    """Parse one frame from the service (bridge side).

    Args:
        data: a text frame as ``str``; ``bytes`` (any bytes-like) is a binary frame: agent audio.
        max_text_chars: larger text frames are refused before they are parsed.
        max_audio_bytes: larger binary frames are refused.

    Returns:
        One of the events of :data:`DeepgramEvent`; an unknown ``type`` is :class:`Unknown`, not an error.

    Raises:
        DeepgramProtocolError: the frame is not a message we can use; ``kind`` says why.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        size = memoryview(data).nbytes
        if size > max_audio_bytes:
            _fail("too_large", f"binary frame of {size} bytes, limit {max_audio_bytes}")
        return AgentAudio(bytes(data))
    kind, message = _load(data, max_text_chars)
    handler = _EVENTS.get(kind)
    if handler is None:
        return Unknown(kind, message)
    return handler(message) if callable(handler) else handler  # type: ignore[no-any-return]


def _parse_function_call(item: Any, index: int) -> FunctionCall:
    where = f"functions[{index}]."
    if type(item) is not dict:
        _fail("bad_field", f"functions[{index}]: expected an object, got {short_repr(item)}")
    return FunctionCall(
        _str(item, "id", where),
        _str(item, "name", where),
        _str(item, "arguments", where),
        _bool(item, "client_side", where),
    )


def _parse_function_call_request(message: dict[str, Any]) -> FunctionCallRequest:
    functions = _get(message, "functions", "", True)
    if type(functions) is not list:
        _fail("bad_field", f"functions: expected a list, got {short_repr(functions)}")
    if len(functions) > _MAX_FUNCTIONS:
        _fail("too_large", f"functions: {len(functions)} calls, limit {_MAX_FUNCTIONS}")
    return FunctionCallRequest(tuple(_parse_function_call(f, i) for i, f in enumerate(functions)))


def _parse_function_call_response(message: dict[str, Any]) -> FunctionCallResponse:
    function_id = _str(message, "id", required=False)
    return FunctionCallResponse(
        None if function_id is _MISSING else function_id, _str(message, "name"), _str(message, "content")
    )


def _parse_conversation_text(message: dict[str, Any]) -> ConversationText:
    role = _str(message, "role")
    if role not in ("user", "assistant"):
        _fail("bad_field", f"role: expected 'user' or 'assistant', got {short_repr(role)}")
    return ConversationText(role, _str(message, "content"))


def _notice(message: dict[str, Any]) -> tuple[str, str]:
    """``(description, code)`` of a Warning or Error; liberal: either may be absent (then empty)."""
    description = _str(message, "description", required=False)
    code = _str(message, "code", required=False)
    return ("" if description is _MISSING else description), ("" if code is _MISSING else code)


def _parse_injection_refused(message: dict[str, Any]) -> InjectionRefused:
    text = _str(message, "message", required=False)
    return InjectionRefused("" if text is _MISSING else text)


_EVENTS: Final[dict[str, Any]] = {
    "Welcome": lambda m: Welcome(_str(m, "request_id")),
    "SettingsApplied": _SETTINGS_APPLIED,
    "ConversationText": _parse_conversation_text,
    "UserStartedSpeaking": _USER_STARTED_SPEAKING,
    "AgentThinking": lambda m: AgentThinking(_str(m, "content")),
    "AgentStartedSpeaking": lambda m: AgentStartedSpeaking(
        _seconds(m, "total_latency"), _seconds(m, "tts_latency"), _seconds(m, "ttt_latency")
    ),
    "AgentAudioDone": _AGENT_AUDIO_DONE,
    "FunctionCallRequest": _parse_function_call_request,
    "FunctionCallResponse": _parse_function_call_response,
    "Warning": lambda m: AgentWarning(*_notice(m)),
    "Error": lambda m: AgentError(*_notice(m)),
    "History": History,
    "PromptUpdated": _PROMPT_UPDATED,
    "SpeakUpdated": _SPEAK_UPDATED,
    "InjectionRefused": _parse_injection_refused,
}


# ----------------------------------------------------------------------------------------------------
# Builders of what the service sends (emulator side)


def welcome_message(request_id: str) -> str:
    """``Welcome {request_id}``: the session is open."""
    return _dumps({"type": "Welcome", "request_id": request_id}).decode()


def settings_applied_message() -> str:
    """``SettingsApplied``: audio may flow."""
    return '{"type":"SettingsApplied"}'


def conversation_text_message(role: str, content: str) -> str:
    """``ConversationText {role, content}``; ``role`` is ``"user"`` or ``"assistant"``."""
    return _dumps({"type": "ConversationText", "role": role, "content": content}).decode()


def user_started_speaking_message() -> str:
    """``UserStartedSpeaking``: the caller's speech began."""
    return '{"type":"UserStartedSpeaking"}'


def agent_thinking_message(content: str) -> str:
    """``AgentThinking {content}``."""
    return _dumps({"type": "AgentThinking", "content": content}).decode()


def agent_started_speaking_message(total_latency: float, tts_latency: float, ttt_latency: float) -> str:
    """``AgentStartedSpeaking {total_latency, tts_latency, ttt_latency}`` (seconds, JSON numbers)."""
    return _dumps(
        {
            "type": "AgentStartedSpeaking",
            "total_latency": total_latency,
            "tts_latency": tts_latency,
            "ttt_latency": ttt_latency,
        }
    ).decode()


def agent_audio_done_message() -> str:
    """``AgentAudioDone``: the answer's last byte was sent."""
    return '{"type":"AgentAudioDone"}'


def function_call_request_message(functions: Sequence[FunctionCall]) -> str:
    """``FunctionCallRequest {functions: [{id, name, arguments, client_side}]}``."""
    return _dumps(
        {
            "type": "FunctionCallRequest",
            "functions": [
                {"id": f.id, "name": f.name, "arguments": f.arguments, "client_side": f.client_side}
                for f in functions
            ],
        }
    ).decode()


def warning_message(description: str, code: str) -> str:
    """``Warning {description, code}``."""
    return _dumps({"type": "Warning", "description": description, "code": code}).decode()


def error_message(description: str, code: str) -> str:
    """``Error {description, code}`` (e.g. ``UNPARSABLE_CLIENT_MESSAGE``, ``CLIENT_MESSAGE_TIMEOUT``)."""
    return _dumps({"type": "Error", "description": description, "code": code}).decode()


def history_message(role: str, content: str) -> str:
    """``History {role, content}``: a past message, as the service reports it."""
    return _dumps({"type": "History", "role": role, "content": content}).decode()


def prompt_updated_message() -> str:
    """``PromptUpdated``."""
    return '{"type":"PromptUpdated"}'


def speak_updated_message() -> str:
    """``SpeakUpdated``."""
    return '{"type":"SpeakUpdated"}'


def injection_refused_message(message: str) -> str:
    """``InjectionRefused {message}``."""
    return _dumps({"type": "InjectionRefused", "message": message}).decode()
