"""Deepgram Voice Agent wire format (the v1 interface), without I/O, both ends (in the manner of h11/wsproto).

Text or bytes in, small frozen events out; arguments in, text out. Nothing here touches a socket or imports
trio, so the protocol is tested with recorded messages, and our emulator speaks the service's side with the
same code.

- service -> bridge: :func:`parse_event` (bridge side) and the builders of what the service sends
  (:func:`welcome_message`, :func:`conversation_text_message`, ...; emulator side). Binary frames are agent
  audio, in the ``audio.output`` format of the settings (μ-law 8 kHz, no container, for the bridge).
- bridge -> service: :func:`settings_message`, :func:`keep_alive_message`,
  :func:`function_call_response_message`, :func:`inject_user_message`, :func:`inject_agent_message`, and
  caller audio as raw binary frames, nothing to build (bridge side); :func:`parse_client_message` (emulator
  side, as strict as the service: floats where integers belong, missing required fields and the retired
  pre-v1 sandbox format are refused).

Every text frame is a JSON object whose ``type`` names the message, exactly as the v1 reference spells it.
A server message of a type we do not know becomes :class:`Unknown` (log it once, carry on: the service adds
types). Anything else we cannot use raises :class:`~bridge._errors.DeepgramProtocolError` with a fixed
``kind`` and never another exception, so one ``except`` in a receive loop counts and drops it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    "END_CALL",
    "INPUT_ENCODINGS",
    "OUTPUT_ENCODINGS",
    "SAMPLE_RATE",
    "AgentAudio",
    "AgentAudioDone",
    "AgentError",
    "AgentSettings",
    "AgentStartedSpeaking",
    "AgentThinking",
    "AgentWarning",
    "AudioFormat",
    "CallerAudio",
    "ClientMessage",
    "ConversationText",
    "DeepgramEvent",
    "FunctionCall",
    "FunctionCallRequest",
    "FunctionCallResponse",
    "FunctionSpec",
    "History",
    "InjectAgentMessage",
    "InjectUserMessage",
    "InjectionRefused",
    "KeepAlive",
    "PromptUpdated",
    "SettingsApplied",
    "SettingsRequest",
    "SpeakUpdated",
    "Unknown",
    "UpdatePrompt",
    "UpdateSpeak",
    "UserStartedSpeaking",
    "Welcome",
    "agent_audio_done_message",
    "agent_started_speaking_message",
    "agent_thinking_message",
    "conversation_text_message",
    "error_message",
    "function_call_request_message",
    "function_call_response_message",
    "history_message",
    "inject_agent_message",
    "inject_user_message",
    "injection_refused_message",
    "keep_alive_message",
    "parse_client_message",
    "parse_event",
    "prompt_updated_message",
    "settings_applied_message",
    "settings_message",
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
#: Sample rates the emulator accepts (Hz, inclusive); the service documents 8 kHz to 48 kHz in practice.
_SAMPLE_RATE_RANGE: Final = (1, 192_000)
#: A ``type`` longer than this is not a message type (and must not reach a log line whole).
_MAX_TYPE_CHARS: Final = 64
#: Functions in one ``FunctionCallRequest``; the service asks for one or a few at a time.
_MAX_FUNCTIONS: Final = 64


def _fail(kind: str, detail: str) -> NoReturn:
    raise DeepgramProtocolError(kind, detail)


# ----------------------------------------------------------------------------------------------------
# Settings, as the bridge builds them


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function offered to the agent's LLM (``agent.think.functions[]``).

    Without ``endpoint`` the function is client-side: the service sends a ``FunctionCallRequest`` with
    ``client_side: true`` and waits for our ``FunctionCallResponse``.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    endpoint: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The function as it goes in ``Settings``."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out["parameters"] = dict(self.parameters)
        if self.endpoint is not None:
            out["endpoint"] = dict(self.endpoint)
        return out


#: The client-side function every backend is offered: the agent calls it to hang up.
END_CALL: Final = FunctionSpec(
    name="end_call",
    description=(
        "End the phone call. Call it once the conversation is over and you have said goodbye; "
        "the caller hears everything you said before it."
    ),
    parameters={"type": "object", "properties": {}, "required": []},
)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """What the bridge puts in its ``Settings`` message; constructing one validates it (``ValueError``).

    Defaults are passthrough audio (μ-law 8 kHz both ways, no container) and the models PROTOCOLS names.
    """

    prompt: str
    greeting: str | None = None
    functions: tuple[FunctionSpec, ...] = (END_CALL,)
    listen_model: str = DEFAULT_LISTEN_MODEL
    think_provider: str = DEFAULT_THINK_PROVIDER
    think_model: str = DEFAULT_THINK_MODEL
    speak_model: str = DEFAULT_SPEAK_MODEL
    encoding: str = ENCODING
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if type(self.prompt) is not str or not self.prompt.strip():
            raise ValueError(f"prompt must be a non-blank string, got {short_repr(self.prompt)}")
        if self.greeting is not None and type(self.greeting) is not str:
            raise ValueError(f"greeting must be a string or None, got {short_repr(self.greeting)}")
        for name in ("listen_model", "think_provider", "think_model", "speak_model"):
            value = getattr(self, name)
            if type(value) is not str or not value:
                raise ValueError(f"{name} must be a non-empty string, got {short_repr(value)}")
        if self.encoding not in OUTPUT_ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(OUTPUT_ENCODINGS)}, got {self.encoding!r}")
        # An int, never a float: the service refuses 8000.0 where an integer belongs.
        if type(self.sample_rate) is not int or not _in_range(self.sample_rate, _SAMPLE_RATE_RANGE):
            raise ValueError(f"sample_rate must be an int in {_SAMPLE_RATE_RANGE}, got {self.sample_rate!r}")
        functions = tuple(self.functions)
        if not all(isinstance(f, FunctionSpec) for f in functions):
            raise ValueError(f"functions must be FunctionSpec instances, got {short_repr(functions)}")
        names = [f.name for f in functions]
        if len(set(names)) != len(names):
            raise ValueError(f"function names must be unique, got {names!r}")
        object.__setattr__(self, "functions", functions)


def _in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def settings_message(settings: AgentSettings) -> str:
    """The v1 ``Settings`` message: the first thing the bridge sends, before any audio.

    Integers stay JSON integers (``8000``, never ``8000.0``); ``greeting`` and ``functions`` appear only when
    set.
    """
    think: dict[str, Any] = {
        "provider": {"type": settings.think_provider, "model": settings.think_model},
        "prompt": settings.prompt,
    }
    if settings.functions:
        think["functions"] = [f.to_json() for f in settings.functions]
    agent: dict[str, Any] = {
        "listen": {"provider": {"type": "deepgram", "model": settings.listen_model}},
        "think": think,
        "speak": {"provider": {"type": "deepgram", "model": settings.speak_model}},
    }
    if settings.greeting:
        agent["greeting"] = settings.greeting
    audio_format = {"encoding": settings.encoding, "sample_rate": settings.sample_rate}
    return _dumps(
        {
            "type": "Settings",
            "audio": {"input": audio_format, "output": {**audio_format, "container": CONTAINER}},
            "agent": agent,
        }
    ).decode()


def keep_alive_message() -> str:
    """``{"type":"KeepAlive"}``: sent while no caller audio flows, so the service does not time out."""
    return '{"type":"KeepAlive"}'


def function_call_response_message(function_id: str | None, name: str, content: str) -> str:
    """``FunctionCallResponse {id, name, content}``: the answer to a client-side function call.

    The bridge always passes the request's ``id``; the service omits it for its own server-side calls.
    """
    message: dict[str, Any] = {"type": "FunctionCallResponse"}
    if function_id is not None:
        message["id"] = function_id
    message["name"] = name
    message["content"] = content
    return _dumps(message).decode()


def inject_user_message(content: str) -> str:
    """``InjectUserMessage {content}``: text as if the caller said it (DTMF digits, for example)."""
    return _dumps({"type": "InjectUserMessage", "content": content}).decode()


def inject_agent_message(message: str) -> str:
    """``InjectAgentMessage {message}``: makes the agent say ``message`` (refused while someone speaks)."""
    return _dumps({"type": "InjectAgentMessage", "message": message}).decode()


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


# ----------------------------------------------------------------------------------------------------
# Messages: bridge -> service, as the service sees them


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """``audio.input`` or ``audio.output`` of the settings (``container`` only for output)."""

    encoding: str
    sample_rate: int
    container: str = CONTAINER


@dataclass(frozen=True, slots=True, repr=False)
class SettingsRequest:
    """A valid ``Settings`` message, with what the service acts on pulled out; ``raw`` is the whole message.

    ``speak_model`` is the first speak provider's ``model`` (or ``model_id``); functions without an
    ``endpoint`` are client-side.
    """

    input: AudioFormat
    output: AudioFormat
    listen_model: str | None
    think_provider: str
    think_model: str | None
    prompt: str | None
    functions: tuple[FunctionSpec, ...]
    speak_model: str | None
    greeting: str | None
    raw: dict[str, Any]

    def __repr__(self) -> str:
        return (
            f"SettingsRequest(input={self.input!r}, output={self.output!r}, "
            f"think={self.think_provider}/{self.think_model}, "
            f"functions={[f.name for f in self.functions]!r}, "
            f"greeting={short_repr(self.greeting)})"
        )

    @property
    def client_side_functions(self) -> frozenset[str]:
        """Names of the functions the service would ask the client to run."""
        return frozenset(f.name for f in self.functions if f.endpoint is None)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """The client is alive while it sends no audio."""


@dataclass(frozen=True, slots=True)
class InjectUserMessage:
    """Text as if the user said it."""

    content: str


@dataclass(frozen=True, slots=True)
class InjectAgentMessage:
    """Something the agent should say now; ``behavior`` as sent, or None."""

    message: str
    behavior: str | None = None


@dataclass(frozen=True, slots=True)
class UpdatePrompt:
    """A new system prompt."""

    prompt: str


@dataclass(frozen=True, slots=True, repr=False)
class UpdateSpeak:
    """A new speak configuration, as sent."""

    speak: Any

    def __repr__(self) -> str:
        return f"UpdateSpeak({short_repr(self.speak)})"


@dataclass(frozen=True, slots=True, repr=False)
class CallerAudio:
    """A binary frame of caller audio, in the settings' input format."""

    audio: bytes

    def __repr__(self) -> str:
        return f"CallerAudio(<{len(self.audio)} bytes>)"


ClientMessage: TypeAlias = (
    SettingsRequest
    | KeepAlive
    | FunctionCallResponse
    | InjectUserMessage
    | InjectAgentMessage
    | UpdatePrompt
    | UpdateSpeak
    | CallerAudio
)

_KEEP_ALIVE: Final = KeepAlive()

#: Names the pre-v1 sandbox used (seen in old integrations) that the v1 service refuses.
_RETIRED_TYPES: Final = frozenset({"SettingsConfiguration", "UpdateInstructions"})
_RETIRED_THINK_KEYS: Final = ("instructions", "model")
_RETIRED_FLAT_KEYS: Final = ("model",)


def parse_client_message(
    data: str | bytes | bytearray | memoryview, *, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
) -> ClientMessage:
    """Parse one frame sent to the service (emulator side), as strictly as the service does.

    Binary frames are caller audio (any size). A ``Settings`` is validated like the service: required
    fields present, integers as JSON integers (``8000.0`` is refused), encodings from the v1 lists, and
    no field of the retired sandbox format (``SettingsConfiguration``, ``think.instructions``, flat
    ``model`` fields).

    Raises:
        DeepgramProtocolError: the service would answer ``Error`` (``UNPARSABLE_CLIENT_MESSAGE``); ``kind``
            says why.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return CallerAudio(bytes(data))
    kind, message = _load(data, max_text_chars)
    if kind in _RETIRED_TYPES:
        _fail("unknown_event", f"type {kind!r} is the retired pre-v1 format; v1 takes 'Settings'")
    handler = _CLIENT_MESSAGES.get(kind)
    if handler is None:
        _fail("unknown_event", f"type {short_repr(kind)}")
    return handler(message)  # type: ignore[no-any-return]


def _parse_audio_format(audio: dict[str, Any], key: str) -> AudioFormat:
    where = f"audio.{key}."
    defaults = AudioFormat("linear16", 24_000)
    spec = _obj(audio, key, "audio.", required=False)
    if spec is _MISSING:
        return defaults
    required = key == "input"  # the reference makes both fields of audio.input required
    encodings = INPUT_ENCODINGS if key == "input" else OUTPUT_ENCODINGS
    encoding = _str(spec, "encoding", where, required=required)
    if encoding is not _MISSING and encoding not in encodings:
        _fail("bad_field", f"{where}encoding: {short_repr(encoding)} is not one of {sorted(encodings)}")
    rate = _int(spec, "sample_rate", where, _SAMPLE_RATE_RANGE, required=required)
    _int(spec, "bitrate", where, (1, 10_000_000), required=False)
    container = _str(spec, "container", where, required=False)
    return AudioFormat(
        defaults.encoding if encoding is _MISSING else encoding,
        defaults.sample_rate if rate is _MISSING else rate,
        CONTAINER if container is _MISSING else container,
    )


def _parse_provider(parent: dict[str, Any], where: str) -> dict[str, Any]:
    provider: dict[str, Any] = _obj(parent, "provider", where)
    _str(provider, "type", f"{where}provider.")
    return provider


def _parse_function_spec(item: Any, index: int) -> FunctionSpec:
    where = f"agent.think.functions[{index}]."
    if type(item) is not dict:
        _fail("bad_field", f"agent.think.functions[{index}]: expected an object, got {short_repr(item)}")
    description = _str(item, "description", where, required=False)
    parameters = _obj(item, "parameters", where, required=False)
    endpoint = _obj(item, "endpoint", where, required=False)
    if endpoint is not _MISSING:
        _str(endpoint, "url", f"{where}endpoint.")
    return FunctionSpec(
        _str(item, "name", where),
        "" if description is _MISSING else description,
        {} if parameters is _MISSING else parameters,
        None if endpoint is _MISSING else endpoint,
    )


def _speak_model(speak: Any) -> str | None:
    """Validates ``agent.speak`` (an object, or a list of them: fallbacks) and returns the first model."""
    entries = speak if type(speak) is list else [speak]
    if not entries:
        _fail("bad_field", "agent.speak: an empty list")
    model: str | None = None
    for index, entry in enumerate(entries):
        where = "agent.speak." if type(speak) is not list else f"agent.speak[{index}]."
        if type(entry) is not dict:
            _fail("bad_field", f"{where[:-1]}: expected an object, got {short_repr(entry)}")
        for key in _RETIRED_FLAT_KEYS:
            if key in entry:
                _fail("bad_field", f"{where}{key}: a retired pre-v1 field; use {where}provider.{key}")
        provider = _parse_provider(entry, where)
        name = _str(provider, "model", f"{where}provider.", required=provider["type"] == "deepgram")
        if name is _MISSING:
            name = _str(provider, "model_id", f"{where}provider.", required=False)
        if model is None and name is not _MISSING:
            model = name
    return model


def _parse_settings(message: dict[str, Any]) -> SettingsRequest:
    audio = _obj(message, "audio")
    agent = _obj(message, "agent")
    _string_list(message, "tags", "")
    for flag in ("experimental", "mip_opt_out"):
        _bool(message, flag, required=False)
    _obj(message, "flags", required=False)
    input_format = _parse_audio_format(audio, "input")
    output_format = _parse_audio_format(audio, "output")

    listen_model: Any = _MISSING
    listen = _obj(agent, "listen", "agent.", required=False)
    if listen is not _MISSING:
        for key in _RETIRED_FLAT_KEYS:
            if key in listen:
                _fail("bad_field", f"agent.listen.{key}: a retired pre-v1 field; use provider.{key}")
        provider = _parse_provider(listen, "agent.listen.")
        listen_model = _str(provider, "model", "agent.listen.provider.", required=False)
        _string_list(provider, "keyterms", "agent.listen.provider.")

    think = _obj(agent, "think", "agent.")
    for key in _RETIRED_THINK_KEYS:
        if key in think:
            _fail("bad_field", f"agent.think.{key}: a retired pre-v1 field (v1: prompt, provider)")
    think_provider = _parse_provider(think, "agent.think.")
    think_model = _str(think_provider, "model", "agent.think.provider.", required=False)
    temperature = think_provider.get("temperature", _MISSING)
    if temperature is not _MISSING and (
        type(temperature) not in (int, float) or not 0 <= temperature <= 2  # NaN fails the range check
    ):
        _fail("bad_field", f"agent.think.provider.temperature: expected 0..2, got {short_repr(temperature)}")
    prompt = _str(think, "prompt", "agent.think.", required=False)
    functions = _get(think, "functions", "agent.think.", False)
    if functions is _MISSING:
        functions = []
    elif type(functions) is not list:
        _fail("bad_field", f"agent.think.functions: expected a list, got {short_repr(functions)}")
    if len(functions) > _MAX_FUNCTIONS:
        _fail("too_large", f"agent.think.functions: {len(functions)} functions, limit {_MAX_FUNCTIONS}")
    specs = tuple(_parse_function_spec(f, i) for i, f in enumerate(functions))

    speak = _get(agent, "speak", "agent.", False)
    speak_model = None if speak is _MISSING else _speak_model(speak)
    greeting = _str(agent, "greeting", "agent.", required=False)
    _str(agent, "language", "agent.", required=False)
    _obj(agent, "context", "agent.", required=False)
    return SettingsRequest(
        input=input_format,
        output=output_format,
        listen_model=None if listen_model is _MISSING else listen_model,
        think_provider=think_provider["type"],
        think_model=None if think_model is _MISSING else think_model,
        prompt=None if prompt is _MISSING else prompt,
        functions=specs,
        speak_model=speak_model,
        greeting=None if greeting is _MISSING else greeting,
        raw=message,
    )


def _parse_client_function_response(message: dict[str, Any]) -> FunctionCallResponse:
    # A client answers a request: unlike the service's own responses, its ``id`` is required.
    return FunctionCallResponse(_str(message, "id"), _str(message, "name"), _str(message, "content"))


def _parse_inject_agent(message: dict[str, Any]) -> InjectAgentMessage:
    behavior = _str(message, "behavior", required=False)
    return InjectAgentMessage(_str(message, "message"), None if behavior is _MISSING else behavior)


def _parse_update_speak(message: dict[str, Any]) -> UpdateSpeak:
    speak = _get(message, "speak", "", True)
    _speak_model(speak)
    return UpdateSpeak(speak)


_CLIENT_MESSAGES: Final[dict[str, Any]] = {
    "Settings": _parse_settings,
    "KeepAlive": lambda m: _KEEP_ALIVE,
    "FunctionCallResponse": _parse_client_function_response,
    "InjectUserMessage": lambda m: InjectUserMessage(_str(m, "content")),
    "InjectAgentMessage": _parse_inject_agent,
    "UpdatePrompt": lambda m: UpdatePrompt(_str(m, "prompt")),
    "UpdateSpeak": _parse_update_speak,
}
