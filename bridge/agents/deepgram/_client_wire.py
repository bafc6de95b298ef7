"""Deepgram Voice Agent v1 messages from the bridge to the service, without I/O, both ends.

- bridge side: :class:`AgentSettings` and :func:`settings_message` (the first message, before any audio),
  :func:`keep_alive_message`, :func:`function_call_response_message`, :func:`inject_user_message`,
  :func:`inject_agent_message`; caller audio goes as raw binary frames, with nothing to build.
- service side (our emulator): :func:`parse_client_message`, as strict as the service: floats where integers
  belong, missing required fields and the retired pre-v1 sandbox format (``SettingsConfiguration``, flat
  ``model`` fields, ``think.instructions``) are refused with :class:`~bridge._errors.DeepgramProtocolError`,
  which the service reports as ``Error UNPARSABLE_CLIENT_MESSAGE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from bridge._errors import short_repr
from bridge.agents.deepgram._wire import (
    _MAX_FUNCTIONS,
    _MISSING,
    _SAMPLE_RATE_RANGE,
    CONTAINER,
    DEFAULT_LISTEN_MODEL,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_SPEAK_MODEL,
    DEFAULT_THINK_MODEL,
    DEFAULT_THINK_PROVIDER,
    ENCODING,
    INPUT_ENCODINGS,
    OUTPUT_ENCODINGS,
    SAMPLE_RATE,
    FunctionCallResponse,
    _bool,
    _dumps,
    _fail,
    _get,
    _in_range,
    _int,
    _load,
    _obj,
    _str,
    _string_list,
)

__all__ = [
    "END_CALL",
    "AgentSettings",
    "AudioFormat",
    "CallerAudio",
    "ClientMessage",
    "FunctionSpec",
    "InjectAgentMessage",
    "InjectUserMessage",
    "KeepAlive",
    "SettingsRequest",
    "UpdatePrompt",
    "UpdateSpeak",
    "function_call_response_message",
    "inject_agent_message",
    "inject_user_message",
    "keep_alive_message",
    "parse_client_message",
    "settings_message",
]


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
