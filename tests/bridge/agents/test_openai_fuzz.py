"""Property tests: whatever arrives, the OpenAI parsers return a clean event or raise OpenAIProtocolError.

Like ``tests/bridge/test_protocol_fuzz.py``: valid messages with one field (at any depth) replaced by any JSON
value or removed, valid messages cut short, random text (lone surrogates included), random bytes, random JSON
values, huge strings and huge audio deltas. Runs are derandomized and bounded by ``max_examples``; each
example carries ``BATCH`` inputs.

Inputs tried per run: ``parse_server_event`` 4,000 (2,000 arbitrary frames, 1,000 one-broken-field
mutations, 1,000 delta payloads), ``parse_client_event`` 2,000, builder round trips 800 (6,800 in all).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._errors import PROTOCOL_ERROR_KINDS, OpenAIProtocolError
from bridge.agents import openai as oa

BATCH = 4  # inputs per hypothesis example
FRAMES = 500  # examples (x BATCH inputs) for arbitrary frames
FOCUSED = 250  # examples (x BATCH inputs) for targeted mutations
ROUND_TRIPS = 400  # examples (one value set each) for builder -> parser round trips


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "-1", "QQ==", "AAAA", "audio/pcmu", "audio/pcm", "x" * 300])
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
    lambda char, n: char * n, st.sampled_from(["A", "{", "[", "é", "\x00", '"']), st.integers(0, 100_000)
)
huge_deltas = st.builds(
    lambda n, tail: (
        '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"'
        + "A" * n
        + tail
        + '"}'
    ),
    st.one_of(st.integers(1_333_300, 1_333_400), st.integers(0, 2_000_000)),
    st.sampled_from(["", "=", "==", "!"]),
)

ULAW = bytes(range(160))
SESSION = {
    "type": "realtime",
    "id": "sess_1",
    "audio": {
        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}
SERVER = [
    oa.session_created_message(SESSION),
    oa.session_updated_message(SESSION),
    oa.audio_delta_message("resp_1", "item_1", ULAW),
    oa.audio_done_message("resp_1", "item_1"),
    oa.transcript_delta_message("resp_1", "item_1", "Hel"),
    oa.transcript_done_message("resp_1", "item_1", "Hello."),
    oa.input_transcript_message("item_u", "hi there"),
    oa.speech_started_message(1200, "item_u"),
    oa.speech_stopped_message(2400, "item_u"),
    oa.response_created_message("resp_1"),
    oa.response_done_message("resp_1", "completed", output=[{"id": "item_1"}]),
    oa.function_call_arguments_done_message("resp_1", "item_f", "call_1", "end_call", "{}"),
    oa.error_message("invalid_request_error", "session_expired", "expired", param="p"),
]
CLIENT = [
    oa.session_update_message(instructions="Be brief."),
    oa.append_audio_message(ULAW),
    oa.truncate_message("item_1", 640),
    oa.user_text_message("5"),
    oa.function_call_output_message("call_1", "{}"),
    oa.response_create_message(),
    '{"type":"response.cancel","response_id":"resp_1"}',
]
SERVER_EVENTS = (
    oa.SessionCreated,
    oa.SessionUpdated,
    oa.AudioDelta,
    oa.AudioDone,
    oa.TranscriptDelta,
    oa.TranscriptDone,
    oa.InputTranscript,
    oa.SpeechStarted,
    oa.SpeechStopped,
    oa.ResponseCreated,
    oa.ResponseDone,
    oa.FunctionCall,
    oa.ErrorEvent,
    oa.Unknown,
)
CLIENT_EVENTS = (
    oa.SessionUpdate,
    oa.AppendAudio,
    oa.TruncateItem,
    oa.UserText,
    oa.FunctionCallOutput,
    oa.CreateItem,
    oa.ResponseCreate,
    oa.ResponseCancel,
    oa.Unknown,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
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
            st.sampled_from(["type", "delta", "session", "response", "error", "item_id", "audio"]),
            json_values,
        ).map(lambda v: orjson.dumps(v).decode()),
        huge_strings,
        huge_deltas,
        st.sampled_from(templates).map(str.encode),
    )


def batch(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bytes": (bytes,),
    "str | None": (str, type(None)),
    "AudioFormat | None": (oa.AudioFormat, type(None)),
    "int | None": (int, type(None)),
    "dict[str, Any]": (dict,),
}


def assert_typed(event: object) -> None:
    """Every field of an event has its declared type (an int is never a bool, a float or negative)."""
    for spec in dataclasses.fields(event):  # type: ignore[arg-type]
        value = getattr(event, spec.name)
        assert isinstance(value, _TYPES[str(spec.type)]), (spec.name, value)
        if type(value) is int:
            assert 0 <= value <= 2**53
        assert type(value) is not bool
        if isinstance(value, oa.AudioFormat):
            assert_typed(value)


def check(parse: Callable[[Any], object], data: str | bytes, events: tuple[type, ...]) -> None:
    try:
        event = parse(data)
    except OpenAIProtocolError as exc:
        assert exc.kind in PROTOCOL_ERROR_KINDS
        assert len(str(exc)) < 400
        return
    assert isinstance(event, events)
    assert_typed(event)
    repr(event)
    if isinstance(event, oa.AudioDelta | oa.AppendAudio):
        assert len(event.audio) <= oa.DEFAULT_MAX_AUDIO_BYTES
    if isinstance(event, oa.Unknown):
        assert len(event.type) <= oa.MAX_TYPE_CHARS


@fuzz_settings(FRAMES)
@given(batch(frames(SERVER)))
def test_parse_server_event_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(oa.parse_server_event, data, SERVER_EVENTS)


@fuzz_settings(FOCUSED)
@given(batch(mutated(SERVER)))
def test_parse_server_event_on_one_broken_field(inputs: list[str]) -> None:
    for data in inputs:
        check(oa.parse_server_event, data, SERVER_EVENTS)


@st.composite
def delta_payloads(draw: st.DrawFn) -> str:
    """Audio deltas whose ``delta`` is random base64 (cut anywhere) or any JSON value, ids of any type."""
    if draw(st.booleans()):
        delta: Any = base64.b64encode(draw(st.binary(max_size=400))).decode()
        if draw(st.booleans()):
            delta = delta[: draw(st.integers(0, len(delta)))]
    else:
        delta = draw(json_values)
    message = {
        "type": "response.output_audio.delta",
        "response_id": draw(st.sampled_from(["resp_1"]) | json_scalars),
        "item_id": draw(st.sampled_from(["item_1"]) | json_scalars),
        "output_index": draw(st.sampled_from([0, 1]) | json_scalars),
        "content_index": draw(st.sampled_from([0]) | json_scalars),
        "delta": delta,
    }
    return orjson.dumps(message).decode()


@fuzz_settings(FOCUSED)
@given(batch(delta_payloads()))
def test_audio_deltas_never_raise_anything_else(inputs: list[str]) -> None:
    for data in inputs:
        check(oa.parse_server_event, data, SERVER_EVENTS)


@fuzz_settings(FRAMES)
@given(batch(frames(CLIENT)))
def test_parse_client_event_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(oa.parse_client_event, data, CLIENT_EVENTS)
        if not isinstance(data, str):
            continue
        try:
            event = oa.parse_client_event(data)
        except OpenAIProtocolError:
            continue
        if isinstance(event, oa.SessionUpdate):
            oa.session_update_problem(event.session)  # never raises on any session object


ids = st.text(min_size=1, max_size=40)


@fuzz_settings(ROUND_TRIPS)
@given(ids, ids, st.binary(min_size=1, max_size=4000), st.integers(0, 2**40), st.text(max_size=60))
def test_builders_round_trip(response_id: str, item_id: str, audio: bytes, ms: int, text: str) -> None:
    assert oa.parse_server_event(oa.audio_delta_message(response_id, item_id, audio)) == oa.AudioDelta(
        response_id, item_id, 0, 0, audio
    )
    assert oa.parse_server_event(oa.speech_started_message(ms, item_id)) == oa.SpeechStarted(ms, item_id)
    assert oa.parse_server_event(oa.transcript_done_message(response_id, item_id, text)) == oa.TranscriptDone(
        response_id, item_id, text
    )
    assert oa.parse_client_event(oa.append_audio_message(audio)) == oa.AppendAudio(audio)
    assert oa.parse_client_event(oa.truncate_message(item_id, ms)) == oa.TruncateItem(item_id, 0, ms)


@fuzz_settings(ROUND_TRIPS)
@given(st.text(max_size=200), st.text(max_size=20), st.text(max_size=200))
def test_session_update_and_texts_round_trip(instructions: str, voice: str, text: str) -> None:
    try:
        instructions.encode()
        voice.encode()
        text.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate cannot be sent as JSON text at all
    event = oa.parse_client_event(oa.session_update_message(instructions=instructions, voice=voice))
    assert isinstance(event, oa.SessionUpdate)
    assert event.session["instructions"] == instructions
    assert oa.session_update_problem(event.session) is None
    assert oa.parse_client_event(oa.user_text_message(text)) == oa.UserText(text) or text == ""
