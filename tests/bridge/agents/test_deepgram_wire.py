"""The Deepgram Voice Agent v1 wire module, both ends, with recorded messages and no sockets.

Server messages are shaped as the service sends them (the v1 reference and messages quoted in public bug
reports); the client messages are what the bridge sends and what the service refuses.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._errors import PROTOCOL_ERROR_KINDS, DeepgramProtocolError
from bridge.agents import deepgram as dg

# ---------------------------------------------------------------------------------------------- bridge side

EXPECTED_SETTINGS = {
    "type": "Settings",
    "audio": {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    },
    "agent": {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
            "prompt": "You are a helpful assistant",
            "functions": [dg.END_CALL.to_json()],
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        "greeting": "Hello! How can I help?",
    },
}


def test_settings_are_passthrough_mulaw_with_end_call_and_greeting() -> None:
    text = dg.settings_message(
        dg.AgentSettings("You are a helpful assistant", greeting="Hello! How can I help?")
    )
    assert orjson.loads(text) == EXPECTED_SETTINGS
    # Integers go as JSON integers: the service refuses 8000.0 where an integer belongs.
    assert '"sample_rate":8000,' in text and "8000.0" not in text
    function = orjson.loads(text)["agent"]["think"]["functions"][0]
    assert function["name"] == "end_call" and "endpoint" not in function  # client-side


def test_settings_without_greeting_or_functions_leave_the_fields_out() -> None:
    message = orjson.loads(dg.settings_message(dg.AgentSettings("Be brief.", functions=())))
    assert "greeting" not in message["agent"] and "functions" not in message["agent"]["think"]


def test_the_bridges_own_settings_pass_the_services_validation() -> None:
    request = dg.parse_client_message(dg.settings_message(dg.AgentSettings("Be brief.", greeting="Hi")))
    assert isinstance(request, dg.SettingsRequest)
    assert request.input == dg.AudioFormat("mulaw", 8000) == request.output
    assert (request.listen_model, request.think_provider, request.think_model) == (
        "nova-3",
        "open_ai",
        "gpt-4o-mini",
    )
    assert (request.speak_model, request.prompt, request.greeting) == ("aura-2-thalia-en", "Be brief.", "Hi")
    assert request.client_side_functions == {"end_call"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "  "},
        {"prompt": "p", "sample_rate": 8000.0},
        {"prompt": "p", "sample_rate": True},
        {"prompt": "p", "encoding": "opus"},
        {"prompt": "p", "functions": (dg.END_CALL, dg.END_CALL)},
        {"prompt": "p", "speak_model": ""},
    ],
)
def test_invalid_settings_cannot_be_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dg.AgentSettings(**kwargs)


def test_the_small_client_messages() -> None:
    assert orjson.loads(dg.keep_alive_message()) == {"type": "KeepAlive"}
    assert orjson.loads(dg.function_call_response_message("fc_1", "end_call", "ok")) == {
        "type": "FunctionCallResponse",
        "id": "fc_1",
        "name": "end_call",
        "content": "ok",
    }
    assert orjson.loads(dg.inject_user_message("The caller pressed 5")) == {
        "type": "InjectUserMessage",
        "content": "The caller pressed 5",
    }
    assert orjson.loads(dg.inject_agent_message("Are you still there?")) == {
        "type": "InjectAgentMessage",
        "message": "Are you still there?",
    }


RECORDED_SERVER = [
    (
        '{"type":"Welcome","request_id":"ba5e6d59-c4f2-4701-8360-dd25a2bc47e9"}',
        dg.Welcome("ba5e6d59-c4f2-4701-8360-dd25a2bc47e9"),
    ),
    ('{"type":"SettingsApplied"}', dg.SettingsApplied()),
    ('{"type":"ConversationText","role":"user","content":"Hello."}', dg.ConversationText("user", "Hello.")),
    (
        '{"type":"ConversationText","role":"assistant","content":"Hi!"}',
        dg.ConversationText("assistant", "Hi!"),
    ),
    ('{"type":"UserStartedSpeaking"}', dg.UserStartedSpeaking()),
    ('{"type":"AgentThinking","content":"…"}', dg.AgentThinking("…")),
    (
        '{"type":"AgentStartedSpeaking","total_latency":1.064,"tts_latency":0.27,"ttt_latency":0.794}',
        dg.AgentStartedSpeaking(1.064, 0.27, 0.794),
    ),
    (
        '{"type":"AgentStartedSpeaking","total_latency":1,"tts_latency":0,"ttt_latency":1}',
        dg.AgentStartedSpeaking(1.0, 0.0, 1.0),
    ),
    ('{"type":"AgentAudioDone"}', dg.AgentAudioDone()),
    (
        '{"type":"FunctionCallRequest","functions":[{"id":"fc_9","name":"end_call","arguments":"{}","client_side":true}]}',
        dg.FunctionCallRequest((dg.FunctionCall("fc_9", "end_call", "{}", True),)),
    ),
    (
        '{"type":"FunctionCallResponse","name":"get_weather","content":"sunny"}',
        dg.FunctionCallResponse(None, "get_weather", "sunny"),
    ),
    (
        '{"type":"Error","description":"Text message received from client did not match any of the '
        'formats we expect.","code":"UNPARSABLE_CLIENT_MESSAGE"}',
        dg.AgentError(
            "Text message received from client did not match any of the formats we expect.",
            "UNPARSABLE_CLIENT_MESSAGE",
        ),
    ),
    (
        '{"type":"Warning","description":"slow LLM","code":"THINK_SLOW"}',
        dg.AgentWarning("slow LLM", "THINK_SLOW"),
    ),
    ('{"type":"Error","message":"old style"}', dg.AgentError("", "")),
    ('{"type":"PromptUpdated"}', dg.PromptUpdated()),
    ('{"type":"SpeakUpdated"}', dg.SpeakUpdated()),
    (
        '{"type":"InjectionRefused","message":"the user is speaking"}',
        dg.InjectionRefused("the user is speaking"),
    ),
]


@pytest.mark.parametrize(("text", "event"), RECORDED_SERVER)
def test_recorded_server_messages_parse_into_events(text: str, event: object) -> None:
    assert dg.parse_event(text) == event


def test_server_builders_round_trip_through_the_parser() -> None:
    call = dg.FunctionCall("fc_1", "end_call", '{"reason":"done"}', True)
    pairs = [
        (dg.welcome_message("r"), dg.Welcome("r")),
        (dg.settings_applied_message(), dg.SettingsApplied()),
        (dg.conversation_text_message("user", "a"), dg.ConversationText("user", "a")),
        (dg.user_started_speaking_message(), dg.UserStartedSpeaking()),
        (dg.agent_thinking_message("t"), dg.AgentThinking("t")),
        (dg.agent_started_speaking_message(1.5, 0.5, 1.0), dg.AgentStartedSpeaking(1.5, 0.5, 1.0)),
        (dg.agent_audio_done_message(), dg.AgentAudioDone()),
        (dg.function_call_request_message([call]), dg.FunctionCallRequest((call,))),
        (dg.warning_message("w", "W1"), dg.AgentWarning("w", "W1")),
        (dg.error_message("e", "E1"), dg.AgentError("e", "E1")),
        (dg.prompt_updated_message(), dg.PromptUpdated()),
        (dg.speak_updated_message(), dg.SpeakUpdated()),
        (dg.injection_refused_message("no"), dg.InjectionRefused("no")),
        (dg.history_message("user", "h"), dg.History({"type": "History", "role": "user", "content": "h"})),
    ]
    for text, event in pairs:
        assert dg.parse_event(text) == event


def test_error_and_warning_codes_become_metric_labels() -> None:
    assert dg.AgentError("x", "CLIENT_MESSAGE_TIMEOUT").kind == "client_message_timeout"
    assert dg.AgentWarning("x", "").kind == "unknown"
    assert dg.AgentError("x", "Bad code! " * 20).kind == "bad_code_bad_code_bad_code_bad_c"


def test_binary_frames_are_agent_audio_and_unknown_types_are_not_errors() -> None:
    assert dg.parse_event(b"\xff\x7f\x00") == dg.AgentAudio(b"\xff\x7f\x00")
    assert repr(dg.parse_event(bytearray(5000))) == "AgentAudio(<5000 bytes>)"
    event = dg.parse_event('{"type":"AgentBrandNewThing","x":[1,2]}')
    assert isinstance(event, dg.Unknown) and event.type == "AgentBrandNewThing"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ("not json", "bad_json"),
        ('{"type":"Welcome"', "bad_json"),
        ("[1,2]", "not_object"),
        ('"Welcome"', "not_object"),
        ("{}", "missing_field"),
        ('{"type":7}', "bad_field"),
        ('{"type":"' + "T" * 65 + '"}', "bad_field"),
        ('{"type":"Welcome"}', "missing_field"),
        ('{"type":"Welcome","request_id":5}', "bad_field"),
        ('{"type":"ConversationText","role":"system","content":"x"}', "bad_field"),
        ('{"type":"ConversationText","role":"user"}', "missing_field"),
        ('{"type":"AgentStartedSpeaking","total_latency":"1","tts_latency":0,"ttt_latency":0}', "bad_field"),
        ('{"type":"AgentStartedSpeaking","total_latency":true,"tts_latency":0,"ttt_latency":0}', "bad_field"),
        ('{"type":"AgentStartedSpeaking","total_latency":-1,"tts_latency":0,"ttt_latency":0}', "bad_field"),
        ('{"type":"AgentStartedSpeaking","total_latency":1e999,"tts_latency":0,"ttt_latency":0}', "bad_json"),
        ('{"type":"AgentStartedSpeaking","tts_latency":0,"ttt_latency":0}', "missing_field"),
        ('{"type":"FunctionCallRequest","functions":{}}', "bad_field"),
        ('{"type":"FunctionCallRequest","functions":[1]}', "bad_field"),
        (
            '{"type":"FunctionCallRequest","functions":[{"id":"1","name":"f","arguments":"{}","client_side":"true"}]}',
            "bad_field",
        ),
        (
            '{"type":"FunctionCallRequest","functions":[{"id":"1","name":"f","client_side":true}]}',
            "missing_field",
        ),
        ('{"type":"FunctionCallRequest","functions":[' + ",".join(['{"id":"1"}'] * 65) + "]}", "too_large"),
        ('{"type":"Error","description":["x"],"code":"E"}', "bad_field"),
        ('{"type":"Warning","description":"x","code":500}', "bad_field"),
        ('{"type":"InjectionRefused","message":null}', "bad_field"),
        ('{"type":"Welcome","request_id":"' + "x" * 300_000 + '"}', "too_large"),
    ],
)
def test_hostile_server_messages_raise_typed_errors(data: str, kind: str) -> None:
    with pytest.raises(DeepgramProtocolError) as info:
        dg.parse_event(data)
    assert info.value.kind == kind and info.value.peer == "deepgram"
    assert len(str(info.value)) < 400


def test_a_huge_binary_frame_is_refused() -> None:
    with pytest.raises(DeepgramProtocolError) as info:
        dg.parse_event(bytes(dg.DEFAULT_MAX_AUDIO_BYTES + 1))
    assert info.value.kind == "too_large"
    assert dg.parse_event(bytes(10), max_audio_bytes=10) == dg.AgentAudio(bytes(10))


# --------------------------------------------------------------------------------------------- service side


def test_client_messages_parse_as_the_service_sees_them() -> None:
    assert dg.parse_client_message('{"type":"KeepAlive"}') == dg.KeepAlive()
    assert dg.parse_client_message(dg.function_call_response_message("fc_1", "end_call", "ok")) == (
        dg.FunctionCallResponse("fc_1", "end_call", "ok")
    )
    assert dg.parse_client_message(dg.inject_user_message("5")) == dg.InjectUserMessage("5")
    assert dg.parse_client_message('{"type":"InjectAgentMessage","message":"hi","behavior":"queue"}') == (
        dg.InjectAgentMessage("hi", "queue")
    )
    assert dg.parse_client_message('{"type":"UpdatePrompt","prompt":"p"}') == dg.UpdatePrompt("p")
    speak = {"provider": {"type": "deepgram", "model": "aura-2-zeus-en"}}
    assert dg.parse_client_message(
        orjson.dumps({"type": "UpdateSpeak", "speak": speak}).decode()
    ) == dg.UpdateSpeak(speak)
    assert dg.parse_client_message(b"\xff" * 160) == dg.CallerAudio(b"\xff" * 160)


def _settings(**changes: Any) -> str:
    """The bridge's settings with fields replaced (path "a.b.c" -> value) or removed (value ``...``)."""
    message = copy.deepcopy(EXPECTED_SETTINGS)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node: Any = message
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return orjson.dumps(message).decode()


@pytest.mark.parametrize(
    ("text", "kind", "where"),
    [
        (_settings(audio__input__sample_rate=8000.0), "bad_field", "audio.input.sample_rate"),
        (_settings(audio__output__sample_rate=8000.0), "bad_field", "audio.output.sample_rate"),
        (_settings(audio__output__bitrate=48000.0), "bad_field", "audio.output.bitrate"),
        (_settings(audio__input__sample_rate="8000"), "bad_field", "audio.input.sample_rate"),
        (_settings(audio__input__sample_rate=0), "bad_field", "audio.input.sample_rate"),
        (_settings(audio__input__encoding=...), "missing_field", "audio.input.encoding"),
        (_settings(audio__input__encoding="mp3"), "bad_field", "audio.input.encoding"),
        (_settings(audio__output__encoding="opus"), "bad_field", "audio.output.encoding"),
        (_settings(audio=...), "missing_field", "audio"),
        (_settings(agent=...), "missing_field", "agent"),
        (_settings(agent__think=...), "missing_field", "agent.think"),
        (_settings(agent__think__provider=...), "missing_field", "agent.think.provider"),
        (_settings(agent__think__provider__type=...), "missing_field", "agent.think.provider.type"),
        (_settings(agent__think__provider__temperature=3), "bad_field", "temperature"),
        (_settings(agent__think__instructions="old"), "bad_field", "agent.think.instructions"),
        (_settings(agent__listen={"model": "nova-2"}), "bad_field", "agent.listen.model"),
        (_settings(agent__speak={"model": "aura-asteria-en"}), "bad_field", "agent.speak.model"),
        (_settings(agent__speak__provider__model=...), "missing_field", "agent.speak.provider.model"),
        (_settings(agent__speak=[]), "bad_field", "agent.speak"),
        (_settings(agent__think__functions={"name": "end_call"}), "bad_field", "agent.think.functions"),
        (_settings(agent__think__functions=[{"description": "x"}]), "missing_field", "functions[0].name"),
        (_settings(agent__greeting=5), "bad_field", "agent.greeting"),
        (_settings(tags="demo"), "bad_field", "tags"),
    ],
)
def test_the_service_side_refuses_settings_the_service_refuses(text: str, kind: str, where: str) -> None:
    with pytest.raises(DeepgramProtocolError) as info:
        dg.parse_client_message(text)
    assert info.value.kind == kind and where in info.value.detail


def test_the_retired_sandbox_format_is_refused() -> None:
    """Seed 002's message: ``SettingsConfiguration`` with flat ``model`` fields and ``instructions``."""
    old = {
        "type": "SettingsConfiguration",
        "audio": {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none", "buffer_size": 250},
        },
        "agent": {
            "listen": {"model": "nova-2"},
            "think": {
                "provider": {"type": "anthropic"},
                "model": "claude-3-haiku-20240307",
                "instructions": "x",
            },
            "speak": {"model": "aura-asteria-en"},
        },
    }
    with pytest.raises(DeepgramProtocolError) as info:
        dg.parse_client_message(orjson.dumps(old).decode())
    assert info.value.kind == "unknown_event" and "retired" in info.value.detail
    old["type"] = "Settings"  # renamed but still the old shape
    with pytest.raises(DeepgramProtocolError) as info:
        dg.parse_client_message(orjson.dumps(old).decode())
    assert info.value.kind == "bad_field" and "retired" in info.value.detail


def test_settings_defaults_and_fallback_speak_providers_are_understood() -> None:
    minimal = '{"type":"Settings","audio":{},"agent":{"think":{"provider":{"type":"open_ai"}}}}'
    request = dg.parse_client_message(minimal)
    assert isinstance(request, dg.SettingsRequest)
    assert request.input == dg.AudioFormat("linear16", 24000) and request.output.container == "none"
    assert request.functions == () and request.greeting is None and request.speak_model is None
    fallback = _settings(
        agent__speak=[
            {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
            {"provider": {"type": "open_ai", "model": "tts-1", "voice": "alloy"}},
        ]
    )
    request = dg.parse_client_message(fallback)
    assert isinstance(request, dg.SettingsRequest) and request.speak_model == "aura-2-thalia-en"
    server_side = _settings(
        agent__think__functions=[
            {"name": "lookup", "endpoint": {"url": "https://x", "headers": {}}},
            {"name": "end_call"},
        ]
    )
    request = dg.parse_client_message(server_side)
    assert isinstance(request, dg.SettingsRequest) and request.client_side_functions == {"end_call"}


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ('{"type":"settings"}', "unknown_event"),
        ('{"type":"UpdateInstructions","instructions":"x"}', "unknown_event"),
        ('{"type":"Nope"}', "unknown_event"),
        ('{"type":"FunctionCallResponse","name":"end_call","content":"ok"}', "missing_field"),
        ('{"type":"InjectUserMessage","content":5}', "bad_field"),
        ('{"type":"InjectAgentMessage"}', "missing_field"),
        ('{"type":"UpdateSpeak","speak":{"provider":{}}}', "missing_field"),
        ("{", "bad_json"),
        ("[]", "not_object"),
    ],
)
def test_hostile_client_messages_raise_typed_errors(data: str, kind: str) -> None:
    with pytest.raises(DeepgramProtocolError) as info:
        dg.parse_client_message(data)
    assert info.value.kind == kind


# ------------------------------------------------------------------------------------------------ fuzzing
#
# Whatever arrives, each parser returns an event of its end or raises DeepgramProtocolError with a known kind.
# Derandomized, bounded by max_examples; each example carries BATCH inputs (hypothesis's bookkeeping dominates
# the cost, batching gives more inputs for the same time). Inputs per run: parse_event 2,000 arbitrary +
# 1,000 one-broken-field; parse_client_message 2,000 arbitrary + 1,000 one-broken-field (Settings mostly);
# 300 builder round trips (6,300 in all).

BATCH = 4
FRAMES = 500
FOCUSED = 250
ROUND_TRIPS = 300

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "user", "assistant", "Settings", "KeepAlive", "8000", "x" * 300])
)
json_values = (
    json_scalars
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=8), json_scalars, max_size=3)
)
any_text = st.text(st.characters(), max_size=100) | st.builds(
    lambda a, b: a + "\ud800" + b, st.text(max_size=20), st.text(max_size=20)
)
huge_strings = st.builds(
    lambda char, n: char * n, st.sampled_from(["A", "{", "[", "é", "\x00", '"']), st.integers(0, 300_000)
)
SERVER_TEMPLATES = [text for text, _ in RECORDED_SERVER] + [
    dg.history_message("user", "h"),
    '{"type":"History","function_calls":[{"id":"1","name":"f","client_side":true,"arguments":"{}","response":"r"}]}',
]
CLIENT_TEMPLATES = [
    SETTINGS_TEXT := dg.settings_message(dg.AgentSettings("p", greeting="g")),
    _settings(agent__speak=[{"provider": {"type": "deepgram", "model": "m"}}, {"provider": {"type": "x"}}]),
    dg.keep_alive_message(),
    dg.function_call_response_message("fc", "end_call", "ok"),
    dg.inject_user_message("5"),
    '{"type":"InjectAgentMessage","message":"m","behavior":"queue"}',
    '{"type":"UpdatePrompt","prompt":"p"}',
    '{"type":"UpdateSpeak","speak":{"provider":{"type":"deepgram","model":"m"}}}',
]
SERVER_EVENTS = (
    dg.Welcome,
    dg.SettingsApplied,
    dg.ConversationText,
    dg.UserStartedSpeaking,
    dg.AgentThinking,
    dg.AgentStartedSpeaking,
    dg.AgentAudioDone,
    dg.FunctionCallRequest,
    dg.FunctionCallResponse,
    dg.AgentWarning,
    dg.AgentError,
    dg.History,
    dg.PromptUpdated,
    dg.SpeakUpdated,
    dg.InjectionRefused,
    dg.Unknown,
    dg.AgentAudio,
)
CLIENT_MESSAGES = (
    dg.SettingsRequest,
    dg.KeepAlive,
    dg.FunctionCallResponse,
    dg.InjectUserMessage,
    dg.InjectAgentMessage,
    dg.UpdatePrompt,
    dg.UpdateSpeak,
    dg.CallerAudio,
)


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items: Any = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    )
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, templates: list[str]) -> str:
    """A valid message with one field (at any depth) replaced by any JSON value, or removed."""
    message = orjson.loads(draw(st.sampled_from(templates)))
    path = draw(st.sampled_from(_paths(message)))
    parent = message
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent[path[-1]] = draw(json_values)
    else:
        del parent[path[-1]]
    return orjson.dumps(message).decode()


@st.composite
def truncated(draw: st.DrawFn, templates: list[str]) -> str:
    text = draw(st.sampled_from(templates))
    return text[: draw(st.integers(0, len(text)))]


def frames(templates: list[str]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        mutated(templates),
        truncated(templates),
        any_text,
        st.binary(max_size=300),
        json_values.map(lambda v: orjson.dumps(v).decode()),
        st.dictionaries(
            st.sampled_from(["type", "role", "content", "functions", "audio", "agent", "code"]), json_values
        ).map(lambda v: orjson.dumps(v).decode()),
        huge_strings,
    )


def batch(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


def check(parse: Callable[[Any], object], data: str | bytes, events: tuple[type, ...]) -> None:
    try:
        event = parse(data)
    except DeepgramProtocolError as exc:
        assert exc.kind in PROTOCOL_ERROR_KINDS
        assert len(str(exc)) < 400
        return
    assert isinstance(event, events)
    repr(event)  # never raises
    if isinstance(event, dg.SettingsRequest):  # a Settings that passes carries integers where they belong
        assert type(event.input.sample_rate) is int and type(event.output.sample_rate) is int


@fuzz_settings(FRAMES)
@given(batch(frames(SERVER_TEMPLATES)))
def test_parse_event_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(dg.parse_event, data, SERVER_EVENTS)


@fuzz_settings(FOCUSED)
@given(batch(mutated(SERVER_TEMPLATES)))
def test_parse_event_on_one_broken_field(inputs: list[str]) -> None:
    for data in inputs:
        check(dg.parse_event, data, SERVER_EVENTS)


@fuzz_settings(FRAMES)
@given(batch(frames(CLIENT_TEMPLATES)))
def test_parse_client_message_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(dg.parse_client_message, data, CLIENT_MESSAGES)


@fuzz_settings(FOCUSED)
@given(batch(mutated(CLIENT_TEMPLATES[:2] + [SETTINGS_TEXT])))
def test_settings_with_one_broken_field_pass_or_raise_a_kind(inputs: list[str]) -> None:
    for data in inputs:
        check(dg.parse_client_message, data, CLIENT_MESSAGES)


@fuzz_settings(ROUND_TRIPS)
@given(st.text(max_size=200), st.text(max_size=50), st.booleans(), st.floats(0, 1e6))
def test_builders_round_trip_any_text(content: str, code: str, client_side: bool, latency: float) -> None:
    assert dg.parse_event(dg.conversation_text_message("assistant", content)) == dg.ConversationText(
        "assistant", content
    )
    assert dg.parse_event(dg.error_message(content, code)) == dg.AgentError(content, code)
    call = dg.FunctionCall(code, content, "{}", client_side)
    assert dg.parse_event(dg.function_call_request_message([call])) == dg.FunctionCallRequest((call,))
    started = dg.parse_event(dg.agent_started_speaking_message(latency, latency, 0))
    assert started == dg.AgentStartedSpeaking(latency, latency, 0.0)
    assert dg.parse_client_message(dg.inject_user_message(content)) == dg.InjectUserMessage(content)
    assert re.fullmatch(r"[a-z0-9_]{1,32}", dg.AgentWarning("", code).kind)
