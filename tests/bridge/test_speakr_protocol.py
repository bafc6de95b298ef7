"""Speakr wire format (bridge/_speakr.py), tested with recorded frames and no sockets."""

from __future__ import annotations

import base64
import math
import re

import orjson
import pytest

from bridge._errors import ProtocolError, SpeakrProtocolError
from bridge.agents.speakr import _wire as sp

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"
PCM = b"\x01\x00\xff\x7f\x00\x80\x10"  # odd length on purpose: three samples and a half


def agent_media(metadata: bytes, audio: bytes = PCM) -> str:
    """A media frame laid out as the Speakr guide reads it: base64(<metadata> 0x00 <PCM16LE 24 kHz>)."""
    return '{"type":"media","msg":"' + base64.b64encode(metadata + b"\x00" + audio).decode() + '"}'


def speakr_error(data: str | bytes) -> SpeakrProtocolError:
    with pytest.raises(SpeakrProtocolError) as info:
        sp.parse_event(data)
    return info.value


def short_id(value: object) -> str | None:
    """Readable test ids for parametrized messages (the default id would be the whole message)."""
    if isinstance(value, str | bytes | bytearray) and len(value) > 40:
        return f"{value[:32]!r}…"
    return None


# ----------------------------------------------------------------------------------------------------
# Speakr -> bridge


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"initial"}', sp.Initial()),
        ('{"type":"ready","msg":""}', sp.Ready()),
        ('{"type":"pause","msg":null}', sp.Pause()),
        ('{"type":"continue","msg":{}}', sp.Continue()),
        ('{"type":"clear"}', sp.Clear()),
        ('{"type":"end","msg":"bye"}', sp.End()),
        ('{"event":"ready"}', sp.Ready()),  # "event" is a synonym of "type"
        ('{"type":null,"event":"pause"}', sp.Pause()),
        ('{"type":"READY"}', sp.Ready()),
        ('{"type":" clear "}', sp.Clear()),
    ],
)
def test_control_events_are_parsed_whatever_their_msg(frame: str, expected: sp.SpeakrEvent) -> None:
    assert sp.parse_event(frame) == expected


def test_media_splits_metadata_from_audio_and_keeps_odd_bytes() -> None:
    event = sp.parse_event(agent_media(b'{"session_id":"' + SESSION.encode() + b'","sequence_id":"3"}'))
    assert event == sp.AgentMedia(SESSION, "3", PCM, {"session_id": SESSION, "sequence_id": "3"})


@pytest.mark.parametrize(
    ("session_id", "sequence_id"),
    [(SESSION, 7), (42, "7"), (1.5, None), ({"a": 1}, [1, 2]), (True, 18446744073709551615), ("é☃", -3)],
)
def test_media_ids_keep_their_json_types_and_the_status_echoes_them(
    session_id: object, sequence_id: object
) -> None:
    metadata = orjson.dumps({"sequence_id": sequence_id, "session_id": session_id, "extra": "kept"})
    event = sp.parse_event(agent_media(metadata))
    assert isinstance(event, sp.AgentMedia)
    assert (event.session_id, event.sequence_id) == (session_id, sequence_id)
    assert type(event.session_id) is type(session_id) and type(event.sequence_id) is type(sequence_id)
    assert event.metadata["extra"] == "kept"
    status = orjson.loads(sp.status_message(event.session_id, event.sequence_id))
    assert status == {"type": "status", "msg": {"session_id": session_id, "sequence_id": sequence_id}}


def test_media_with_empty_audio_is_an_event_with_no_audio() -> None:
    event = sp.parse_event(agent_media(b'{"session_id":1,"sequence_id":2}', b""))
    assert isinstance(event, sp.AgentMedia) and event.audio == b""


def test_media_audio_may_contain_nul_bytes_after_the_first() -> None:
    audio = b"\x00\x00\x00\x01"
    event = sp.parse_event(agent_media(b'{"session_id":1,"sequence_id":2}', audio))
    assert isinstance(event, sp.AgentMedia) and event.audio == audio


def test_media_msg_may_itself_be_json_encoded() -> None:
    b64 = base64.b64encode(b'{"session_id":1,"sequence_id":2}\x00' + PCM).decode()
    frame = orjson.dumps({"type": "media", "msg": orjson.dumps(b64).decode()}).decode()
    assert sp.parse_event(frame) == sp.AgentMedia(1, 2, PCM, {"session_id": 1, "sequence_id": 2})


def test_media_repr_does_not_dump_the_audio() -> None:
    event = sp.parse_event(agent_media(b'{"session_id":1,"sequence_id":2}', bytes(48_000)))
    assert "<48000 bytes>" in repr(event) and len(repr(event)) < 300


@pytest.mark.parametrize(
    ("msg", "message", "kind"),
    [
        ("Invalid API key", "Invalid API key", "message"),
        (
            {"type": "INVALID_API_KEY", "message": "bad key"},
            {"type": "INVALID_API_KEY", "message": "bad key"},
            "invalid_api_key",
        ),
        (
            '{"code":"bad-parameter","param":"voice_id"}',
            {"code": "bad-parameter", "param": "voice_id"},
            "bad_parameter",
        ),
        ({"code": 4001}, {"code": 4001}, "4001"),
        ({"kind": "Rate limit!"}, {"kind": "Rate limit!"}, "rate_limit"),
        ({"type": "x" * 33}, {"type": "x" * 33}, "message"),  # not a short identifier
        ({"type": "☃☃"}, {"type": "☃☃"}, "message"),  # nothing label-like left
        ({"type": ["a"], "code": "E1"}, {"type": ["a"], "code": "E1"}, "e1"),
        (None, None, "message"),
        ('{"not closed', '{"not closed', "message"),  # looks like JSON, is text: kept as text
        ([1, 2], [1, 2], "message"),
    ],
)
def test_info_keeps_its_payload_and_derives_a_metric_label(msg: object, message: object, kind: str) -> None:
    event = sp.parse_event(orjson.dumps({"type": "info", "msg": msg}).decode())
    assert event == sp.Info(message, kind)
    assert re.fullmatch(r"[a-z0-9_]{1,32}", event.kind)


def test_info_without_msg() -> None:
    assert sp.parse_event('{"type":"info"}') == sp.Info(None, "message")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'{"type":"ready"}', "binary_frame"),
        (bytearray(512), "binary_frame"),
        ("", "bad_json"),
        ('{"type":"ready"', "bad_json"),
        ('{"type":"info","msg":"\ud800"}', "bad_json"),
        ('["ready"]', "not_object"),
        ("1", "not_object"),
        ('{"msg":"x"}', "missing_field"),
        ('{"type":null}', "missing_field"),
        ('{"type":3}', "bad_field"),
        ('{"type":"dance"}', "unknown_event"),
        ('{"type":"status","msg":{}}', "unknown_event"),  # a bridge->Speakr type
        ('{"type":"media"}', "missing_field"),
        ('{"type":"media","msg":null}', "missing_field"),
        ('{"type":"media","msg":{"audio":"AAAA"}}', "bad_field"),
        ('{"type":"media","msg":"not base64"}', "bad_base64"),
        ('{"type":"media","msg":"QQ"}', "bad_base64"),
        ('{"type":"media","msg":"\\"\\\\u00e9\\""}', "bad_base64"),  # JSON-encoded non-ASCII
        ('{"type":"media","msg":"\\"[1]"}', "bad_base64"),
        ('{"type":"media","msg":""}', "no_metadata"),
        (
            '{"type":"media","msg":"' + base64.b64encode(b'{"session_id":1,"sequence_id":2}').decode() + '"}',
            "no_metadata",
        ),
        (agent_media(b"not json"), "bad_metadata"),
        (agent_media(b"\xff\xfe"), "bad_metadata"),
        (agent_media(b""), "bad_metadata"),
        (agent_media(b"[1,2]"), "bad_metadata"),
        (agent_media(b'{"session_id":1}'), "bad_metadata"),
        (agent_media(b'{"sequence_id":1}'), "bad_metadata"),
    ],
    ids=short_id,
)
def test_each_malformed_frame_raises_one_speakr_error_with_its_kind(data: str | bytes, kind: str) -> None:
    error = speakr_error(data)
    assert error.kind == kind
    assert error.peer == "speakr"
    assert isinstance(error, ProtocolError)


def test_error_text_stays_short_and_truncates_the_echoed_input() -> None:
    huge = "A" * 200_000
    for frame in (huge, '{"type":"media","msg":"' + huge + '!"}', '{"type":"' + huge + '"}'):
        error = speakr_error(frame)
        assert len(str(error)) < 400


# ----------------------------------------------------------------------------------------------------
# bridge -> Speakr


def test_start_message_is_the_guides_shape_with_msg_a_json_string_in_key_order() -> None:
    text = sp.start_message(sp.StartParams(session_id=SESSION))
    assert text == (
        '{"type":"start","msg":"{\\"temperature\\":0.7,\\"prefixPadding\\":0.7,\\"voice_id\\":\\"jill\\",'
        '\\"silenceDuration\\":1000,\\"threshold\\":0.18,'
        '\\"system_prompt\\":\\"You are a helpful assistant\\",'
        f'\\"sessionId\\":\\"{SESSION}\\"}}"}}'
    )
    outer = orjson.loads(text)
    assert isinstance(outer["msg"], str)
    assert list(orjson.loads(outer["msg"])) == [
        "temperature",
        "prefixPadding",
        "voice_id",
        "silenceDuration",
        "threshold",
        "system_prompt",
        "sessionId",
    ]


def test_status_message_msg_is_an_object() -> None:
    assert sp.status_message("s", 3) == '{"type":"status","msg":{"session_id":"s","sequence_id":3}}'


def test_status_message_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        sp.status_message(object(), 1)


# ----------------------------------------------------------------------------------------------------
# Start parameters


def test_start_params_defaults_are_the_guides_and_session_ids_are_fresh_uuid4s() -> None:
    a, b = sp.StartParams(), sp.StartParams()
    assert (
        a.temperature,
        a.prefix_padding,
        a.voice_id,
        a.silence_duration_ms,
        a.threshold,
        a.system_prompt,
    ) == (
        0.7,
        0.7,
        "jill",
        1000,
        0.18,
        "You are a helpful assistant",
    )
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", a.session_id)
    assert a.session_id != b.session_id


def test_overrides_convert_strings_to_the_fields_types() -> None:
    base = sp.StartParams(session_id=SESSION)
    params, warnings = base.with_overrides(
        {
            "temperature": "1.2",
            "threshold": "0.5",
            "silenceDuration": "800",
            "prefixPadding": " 1e-1 ",
            "voice_id": "emma.v2",
            "system_prompt": "Speak like a pirate.",
            "bridge_token": "not-ours",
            "sessionId": "not-overridable",
        }
    )
    assert warnings == []
    assert params == sp.StartParams(1.2, 0.1, "emma.v2", 800, 0.5, "Speak like a pirate.", SESSION)
    assert type(params.silence_duration_ms) is int and type(params.temperature) is float
    inner = orjson.loads(orjson.loads(sp.start_message(params))["msg"])
    assert inner["silenceDuration"] == 800 and inner["temperature"] == 1.2  # numbers stay numbers


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("temperature", "hot"),
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("temperature", "2.5"),
        ("temperature", "0x1"),
        ("temperature", "1_0"),
        ("temperature", "١"),  # a non-ASCII digit
        ("temperature", ""),
        ("threshold", "-0.1"),
        ("threshold", "1.01"),
        ("silenceDuration", "1000.5"),
        ("silenceDuration", "49"),
        ("silenceDuration", "10001"),
        ("silenceDuration", "1" * 400),
        ("prefixPadding", "5.5"),
        ("voice_id", ""),
        ("voice_id", "jill smith"),
        ("voice_id", "j" * 65),
        ("voice_id", "jöll"),
        ("system_prompt", "   "),
        ("system_prompt", "x" * 8001),
    ],
)
def test_an_invalid_override_is_ignored_with_a_warning_and_the_default_kept(name: str, raw: str) -> None:
    base = sp.StartParams(session_id=SESSION)
    valid_name, valid_raw, valid_value = (
        ("threshold", "0.3", 0.3) if name == "voice_id" else ("voice_id", "rachel", "rachel")
    )
    params, warnings = base.with_overrides({name: raw, valid_name: valid_raw})
    assert len(warnings) == 1 and name in warnings[0]
    assert len(warnings[0]) < 400  # an 8001-character prompt is not copied into the log
    assert getattr(params, sp.WIRE_FIELDS[name]) == getattr(base, sp.WIRE_FIELDS[name])
    assert getattr(params, sp.WIRE_FIELDS[valid_name]) == valid_value  # the valid one next to it applies


def test_validate_field_takes_wire_or_attribute_names_and_json_numbers() -> None:
    assert sp.validate_field("silenceDuration", 800) == 800
    assert sp.validate_field("silence_duration_ms", 800.0) == 800
    assert sp.validate_field("prefix_padding", 2) == 2.0
    assert sp.validate_field("temperature", "0") == 0.0
    assert sp.validate_field("threshold", 1) == 1.0
    for name, value in [
        ("temperature", True),
        ("temperature", math.nan),
        ("threshold", math.inf),
        ("voice_id", 7),
    ]:
        with pytest.raises(ValueError):
            sp.validate_field(name, value)
    with pytest.raises(ValueError, match="unknown start parameter"):
        sp.validate_field("bridge_token", "x")


def test_ranges_are_the_documented_ones_and_inclusive() -> None:
    assert (sp.TEMPERATURE_RANGE, sp.THRESHOLD_RANGE, sp.PREFIX_PADDING_RANGE) == (
        (0.0, 2.0),
        (0.0, 1.0),
        (0.0, 5.0),
    )
    assert sp.SILENCE_DURATION_MS_RANGE == (50, 10_000) and sp.SYSTEM_PROMPT_MAX_CHARS == 8000
    assert sp.validate_field("temperature", "2") == 2.0
    assert sp.validate_field("silenceDuration", "50") == 50
    assert sp.validate_field("voice_id", "a" * 64) == "a" * 64
    assert sp.validate_field("system_prompt", "x" * 8000) == "x" * 8000


def test_start_params_cannot_be_built_invalid() -> None:
    with pytest.raises(ValueError):
        sp.StartParams(temperature=3.0)
    with pytest.raises(ValueError):
        sp.StartParams(session_id="")
    assert sp.StartParams(temperature=1).temperature == 1.0  # normalised to float


# ----------------------------------------------------------------------------------------------------
# Agent side


def test_what_the_bridge_sends_is_what_the_agent_reads() -> None:
    params = sp.StartParams(session_id=SESSION, voice_id="emma")
    request = sp.parse_client_message(sp.start_message(params))
    assert request == sp.StartRequest(
        {
            "temperature": 0.7,
            "prefixPadding": 0.7,
            "voice_id": "emma",
            "silenceDuration": 1000,
            "threshold": 0.18,
            "system_prompt": "You are a helpful assistant",
            "sessionId": SESSION,
        }
    )
    assert sp.parse_client_message(sp.status_message(SESSION, 5)) == sp.Status(SESSION, 5)
    assert sp.parse_client_message(bytes(512)) == sp.AudioFrame(bytes(512))
    assert sp.parse_client_message(bytearray(b"\x01\x02")) == sp.AudioFrame(b"\x01\x02")


def test_agent_accepts_start_as_an_object_and_status_as_a_json_string() -> None:
    assert sp.parse_client_message('{"type":"start","msg":{"voice_id":"x"}}') == sp.StartRequest(
        {"voice_id": "x"}
    )
    status = '{"event":"status","msg":"{\\"session_id\\":1,\\"sequence_id\\":2}"}'
    assert sp.parse_client_message(status) == sp.Status(1, 2)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ("{", "bad_json"),
        ("[]", "not_object"),
        ('{"msg":{}}', "missing_field"),
        ('{"type":"media","msg":"AAAA"}', "unknown_event"),
        ('{"type":"start"}', "missing_field"),
        ('{"type":"start","msg":"not json"}', "bad_field"),
        ('{"type":"start","msg":"[1]"}', "bad_field"),
        ('{"type":"start","msg":5}', "bad_field"),
        ('{"type":"status","msg":{"session_id":1}}', "missing_field"),
        ('{"type":"status","msg":"{}"}', "missing_field"),
    ],
    ids=short_id,
)
def test_agent_rejects_malformed_client_frames(frame: str, kind: str) -> None:
    with pytest.raises(SpeakrProtocolError) as info:
        sp.parse_client_message(frame)
    assert info.value.kind == kind


def test_every_agent_message_round_trips_through_parse_event() -> None:
    assert sp.parse_event(sp.initial_message()) == sp.Initial()
    assert sp.parse_event(sp.ready_message()) == sp.Ready()
    assert sp.parse_event(sp.pause_message()) == sp.Pause()
    assert sp.parse_event(sp.continue_message()) == sp.Continue()
    assert sp.parse_event(sp.clear_message()) == sp.Clear()
    assert sp.parse_event(sp.end_message()) == sp.End()
    assert sp.parse_event(sp.info_message({"code": "E_PARAM", "detail": "voice"})) == sp.Info(
        {"code": "E_PARAM", "detail": "voice"}, "e_param"
    )
    assert sp.parse_event(sp.info_message("plain")) == sp.Info("plain", "message")
    for pcm in (b"", PCM, bytes(48_000)):
        assert sp.parse_event(sp.media_message("s", 9, pcm)) == sp.AgentMedia(
            "s", 9, pcm, {"session_id": "s", "sequence_id": 9}
        )
