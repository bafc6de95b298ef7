"""The OpenAI Realtime GA wire, both ends, with recorded messages (no sockets).

The server messages below are shaped field for field like the GA service's (the ``openai`` package's
``types/realtime/`` models), extra fields included, so the parser is tested on what the service sends and not
only on what our own builders produce.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from bridge._errors import PROTOCOL_ERROR_KINDS, OpenAIProtocolError
from bridge.agents import openai as oa

ULAW = bytes(range(256)) * 3  # every μ-law code, 96 ms


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def session_object(output: dict[str, Any], input_: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_C9xYz",
        "model": "gpt-realtime-2025-08-28",
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": 1756324625,
        "audio": {
            "input": {
                "format": input_ or {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300},
            },
            "output": {"format": output, "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


# ----------------------------------------------------------------------------------------------------
# service -> bridge, recorded


def test_session_created_reports_the_default_pcm_formats() -> None:
    event = oa.parse_server_event(
        dumps(
            {
                "type": "session.created",
                "event_id": "event_C9",
                "session": session_object({"type": "audio/pcm", "rate": 24000}),
            }
        )
    )
    assert event == oa.SessionCreated(
        "sess_C9xYz", oa.AudioFormat("audio/pcm", 24000), oa.AudioFormat("audio/pcm", 24000)
    )
    assert event.output_format is not None and not event.output_format.is_pcmu


def test_session_updated_reads_back_pcmu_and_the_voice() -> None:
    event = oa.parse_server_event(
        dumps(
            {
                "type": "session.updated",
                "event_id": "event_CA",
                "session": session_object({"type": "audio/pcmu"}, {"type": "audio/pcmu"}),
            }
        )
    )
    assert isinstance(event, oa.SessionUpdated)
    assert event.output_format == oa.AudioFormat("audio/pcmu") and event.output_format.is_pcmu
    assert event.input_format == oa.AudioFormat("audio/pcmu")
    assert event.voice == "marin"


def test_session_updated_with_a_custom_voice_object_has_no_voice_name() -> None:
    session = session_object({"type": "audio/pcmu"})
    session["audio"]["output"]["voice"] = {"id": "voice_1234"}
    event = oa.parse_server_event(dumps({"type": "session.updated", "session": session}))
    assert isinstance(event, oa.SessionUpdated) and event.voice is None


def test_audio_delta_is_decoded_with_its_ids() -> None:
    event = oa.parse_server_event(
        dumps(
            {
                "type": "response.output_audio.delta",
                "event_id": "event_D1",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": b64(ULAW),
            }
        )
    )
    assert event == oa.AudioDelta("resp_1", "item_1", 0, 0, ULAW)
    assert "768 bytes" in repr(event)


def test_the_beta_audio_delta_name_is_not_audio() -> None:
    # A GA session never sends it; treating it as audio would hide a beta session behind our back.
    event = oa.parse_server_event(dumps({"type": "response.audio.delta", "delta": b64(ULAW)}))
    assert event == oa.Unknown("response.audio.delta")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {
                "type": "response.output_audio.done",
                "event_id": "e",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
            },
            oa.AudioDone("resp_1", "item_1", 0, 0),
        ),
        (
            {
                "type": "response.output_audio_transcript.delta",
                "event_id": "e",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hel",
            },
            oa.TranscriptDelta("resp_1", "item_1", "Hel"),
        ),
        (
            {
                "type": "response.output_audio_transcript.done",
                "event_id": "e",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "transcript": "Hello there.",
            },
            oa.TranscriptDone("resp_1", "item_1", "Hello there."),
        ),
        (
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "e",
                "item_id": "item_u1",
                "content_index": 0,
                "transcript": "I'd like to book a table.",
                "usage": {"type": "duration", "seconds": 2.1},
            },
            oa.InputTranscript("item_u1", 0, "I'd like to book a table."),
        ),
        (
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": "e",
                "audio_start_ms": 1260,
                "item_id": "item_u2",
            },
            oa.SpeechStarted(1260, "item_u2"),
        ),
        (
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": "e",
                "audio_end_ms": 2980,
                "item_id": "item_u2",
            },
            oa.SpeechStopped(2980, "item_u2"),
        ),
        (
            {
                "type": "response.created",
                "event_id": "e",
                "response": {
                    "id": "resp_2",
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            },
            oa.ResponseCreated("resp_2"),
        ),
        (
            {
                "type": "response.done",
                "event_id": "e",
                "response": {
                    "id": "resp_2",
                    "object": "realtime.response",
                    "status": "cancelled",
                    "status_details": {"type": "cancelled", "reason": "turn_detected"},
                    "output": [],
                    "usage": {"total_tokens": 10},
                },
            },
            oa.ResponseDone("resp_2", "cancelled"),
        ),
        (
            {
                "type": "response.function_call_arguments.done",
                "event_id": "e",
                "response_id": "resp_3",
                "item_id": "item_fc",
                "output_index": 1,
                "call_id": "call_1",
                "name": "end_call",
                "arguments": '{"reason":"done"}',
            },
            oa.FunctionCall("resp_3", "item_fc", "call_1", "end_call", '{"reason":"done"}'),
        ),
        (
            {
                "type": "error",
                "event_id": "e",
                "error": {
                    "type": "invalid_request_error",
                    "code": "session_expired",
                    "message": "Your session hit the maximum duration of 60 minutes.",
                    "param": None,
                    "event_id": None,
                },
            },
            oa.ErrorEvent(
                "invalid_request_error",
                "session_expired",
                "Your session hit the maximum duration of 60 minutes.",
                None,
                "session_expired",
            ),
        ),
        (
            {"type": "error", "error": {"type": "server_error", "code": None, "message": "oops"}},
            oa.ErrorEvent("server_error", None, "oops", None, "server_error"),
        ),
        ({"type": "rate_limits.updated", "rate_limits": []}, oa.Unknown("rate_limits.updated")),
        ({"type": "response.output_item.added", "item": {}}, oa.Unknown("response.output_item.added")),
        ({"type": "conversation.item.truncated", "item_id": "x"}, oa.Unknown("conversation.item.truncated")),
    ],
)
def test_recorded_server_events(message: dict[str, Any], expected: object) -> None:
    assert oa.parse_server_event(dumps(message)) == expected
    assert oa.parse_server_event(dumps(message).encode().decode()) == expected


def test_error_label_is_metric_safe() -> None:
    event = oa.parse_server_event(
        dumps({"type": "error", "error": {"type": "x", "code": "Rate-Limit Exceeded!", "message": "m"}})
    )
    assert isinstance(event, oa.ErrorEvent) and event.label == "rate_limit_exceeded"
    event = oa.parse_server_event(dumps({"type": "error", "error": {"type": "", "code": "***"}}))
    assert isinstance(event, oa.ErrorEvent) and event.label == "error"


# ----------------------------------------------------------------------------------------------------
# service -> bridge, hostile


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ("not json", "bad_json"),
        (b'{"type":"session.created"}', "binary_frame"),
        ("[1,2]", "not_object"),
        ('{"delta":"AAAA"}', "missing_field"),
        ('{"type":7}', "bad_field"),
        ('{"type":"response.output_audio.delta","response_id":"r","item_id":"i"}', "missing_field"),
        (
            '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"@@@@"}',
            "bad_base64",
        ),
        (
            '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"AAA"}',
            "bad_base64",
        ),
        ('{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"é"}', "bad_base64"),
        ('{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":5}', "bad_field"),
        ('{"type":"response.output_audio.delta","response_id":1,"item_id":"i","delta":""}', "bad_field"),
        (
            '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","output_index":-1,"delta":""}',
            "bad_field",
        ),
        (
            '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","output_index":true,'
            '"delta":""}',
            "bad_field",
        ),
        ('{"type":"input_audio_buffer.speech_started","item_id":"i"}', "missing_field"),
        ('{"type":"input_audio_buffer.speech_started","item_id":"i","audio_start_ms":1.5}', "bad_field"),
        ('{"type":"input_audio_buffer.speech_started","item_id":"i","audio_start_ms":1e400}', "bad_json"),
        ('{"type":"session.updated"}', "missing_field"),
        ('{"type":"session.updated","session":[]}', "bad_field"),
        ('{"type":"session.updated","session":{"audio":{"output":{"format":"audio/pcmu"}}}}', "bad_field"),
        (
            '{"type":"session.updated","session":{"audio":{"output":{"format":{"rate":8000}}}}}',
            "missing_field",
        ),
        (
            '{"type":"session.updated","session":{"audio":{"output":{"format":{"type":"audio/pcm","rate":"24k"}}}}}',
            "bad_field",
        ),
        ('{"type":"response.done","response":{"status":"completed"}}', "missing_field"),
        ('{"type":"error","error":"boom"}', "bad_field"),
        ('{"type":"error","error":{"code":5}}', "bad_field"),
        ('{"type":"response.function_call_arguments.done","name":"end_call"}', "missing_field"),
    ],
)
def test_bad_server_events_raise_a_typed_error(data: str | bytes, kind: str) -> None:
    with pytest.raises(OpenAIProtocolError) as info:
        oa.parse_server_event(data)
    assert info.value.kind == kind
    assert info.value.kind in PROTOCOL_ERROR_KINDS
    assert str(info.value).startswith("openai protocol error")


def test_an_oversized_delta_is_refused_before_it_is_decoded() -> None:
    frame = dumps(
        {
            "type": "response.output_audio.delta",
            "response_id": "r",
            "item_id": "i",
            "delta": b64(b"\0" * 3001),
        }
    )
    with pytest.raises(OpenAIProtocolError) as info:
        oa.parse_server_event(frame, max_audio_bytes=3000)
    assert info.value.kind == "too_large"
    assert oa.parse_server_event(frame, max_audio_bytes=3001) == oa.AudioDelta("r", "i", 0, 0, b"\0" * 3001)


def test_a_huge_unknown_type_and_error_message_stay_short() -> None:
    event = oa.parse_server_event(dumps({"type": "x" * 100_000}))
    assert isinstance(event, oa.Unknown) and len(event.type) == oa.MAX_TYPE_CHARS
    event = oa.parse_server_event(dumps({"type": "error", "error": {"message": "m" * 100_000}}))
    assert isinstance(event, oa.ErrorEvent) and len(event.message) == oa.MAX_ERROR_MESSAGE_CHARS


# ----------------------------------------------------------------------------------------------------
# bridge -> service


def test_session_update_is_ga_only_with_pcmu_both_ways() -> None:
    message = orjson.loads(
        oa.session_update_message(instructions="Be brief.", voice="cedar", transcription_model="whisper-1")
    )
    assert message["type"] == "session.update"
    session = message["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"] == {"type": "server_vad"}
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
    assert [tool["name"] for tool in session["tools"]] == ["end_call"]
    assert session["tools"][0]["type"] == "function"
    assert "temperature" not in session and "modalities" not in session
    assert oa.session_update_problem(session) is None  # what a GA session accepts


def test_session_update_without_tools_or_transcription() -> None:
    session = orjson.loads(
        oa.session_update_message(instructions="x", transcription_model=None, tools=False)
    )["session"]
    assert "tools" not in session and "transcription" not in session["audio"]["input"]


def test_append_is_exact_json_and_round_trips() -> None:
    text = oa.append_audio_message(ULAW)
    assert orjson.loads(text) == {"type": "input_audio_buffer.append", "audio": b64(ULAW)}
    assert oa.parse_client_event(text) == oa.AppendAudio(ULAW)
    with pytest.raises(ValueError):
        oa.append_audio_message(b"")


def test_truncate_message() -> None:
    text = oa.truncate_message("item_7", 1240)
    assert orjson.loads(text) == {
        "type": "conversation.item.truncate",
        "item_id": "item_7",
        "content_index": 0,
        "audio_end_ms": 1240,
    }
    assert oa.parse_client_event(text) == oa.TruncateItem("item_7", 0, 1240)
    for bad in (("", 1), ("i", -1)):
        with pytest.raises(ValueError):
            oa.truncate_message(*bad)
    with pytest.raises(TypeError):
        oa.truncate_message("i", 1.5)  # type: ignore[arg-type]


def test_user_text_and_function_output_items() -> None:
    text = oa.user_text_message("The caller pressed 5.")
    assert orjson.loads(text) == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "The caller pressed 5."}],
        },
    }
    assert oa.parse_client_event(text) == oa.UserText("The caller pressed 5.")
    text = oa.function_call_output_message("call_1", '{"ok":true}')
    assert orjson.loads(text)["item"] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"ok":true}',
    }
    assert oa.parse_client_event(text) == oa.FunctionCallOutput("call_1", '{"ok":true}')
    assert oa.parse_client_event(oa.response_create_message()) == oa.ResponseCreate({})
    assert oa.parse_client_event(oa.response_cancel_message()) == oa.ResponseCancel(None)


# ----------------------------------------------------------------------------------------------------
# The service's end: what it accepts


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        (
            {"type": "realtime", "input_audio_format": "g711_ulaw"},
            "unknown_parameter",
            "session.input_audio_format",
        ),
        (
            {"type": "realtime", "output_audio_format": "g711_ulaw"},
            "unknown_parameter",
            "session.output_audio_format",
        ),
        ({"type": "realtime", "modalities": ["audio"]}, "unknown_parameter", "session.modalities"),
        ({"type": "realtime", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "session.temperature"),
        ({"type": "realtime", "turn_detection": {}}, "unknown_parameter", "session.turn_detection"),
        (
            {"type": "realtime", "audio": {"input": {"vad": 1}}},
            "unknown_parameter",
            "session.audio.input.vad",
        ),
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        (
            {"type": "realtime", "audio": {"output": {"format": {"type": "g711_ulaw"}}}},
            "invalid_value",
            "session.audio.output.format.type",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}}}},
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        ({"type": "realtime", "audio": {"input": "pcmu"}}, "invalid_type", "session.audio.input"),
    ],
)
def test_the_service_refuses_beta_and_bad_sessions(session: dict[str, Any], code: str, param: str) -> None:
    problem = oa.session_update_problem(session)
    assert problem is not None
    assert (problem.code, problem.param) == (code, param)


def test_the_beta_format_name_is_refused_with_the_services_words() -> None:
    problem = oa.session_update_problem({"type": "realtime", "input_audio_format": "g711_ulaw"})
    assert problem is not None
    assert problem.message == "Unknown parameter: 'session.input_audio_format'."
    event = oa.parse_server_event(
        oa.error_message("invalid_request_error", problem.code, problem.message, param=problem.param)
    )
    assert event == oa.ErrorEvent(
        "invalid_request_error", "unknown_parameter", problem.message, problem.param, "unknown_parameter"
    )


def test_a_pcm_session_at_24k_is_accepted() -> None:
    session = {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    assert oa.session_update_problem(session) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            '{"type":"conversation.item.create","item":{"type":"message","role":"assistant","content":[]}}',
            oa.CreateItem,
        ),
        ('{"type":"input_audio_buffer.commit"}', oa.Unknown),
        ('{"type":"response.create","response":{"instructions":"x"}}', oa.ResponseCreate),
        ('{"type":"response.cancel","response_id":"resp_1"}', oa.ResponseCancel),
    ],
)
def test_other_client_events(data: str, expected: type) -> None:
    assert isinstance(oa.parse_client_event(data), expected)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ('{"type":"input_audio_buffer.append"}', "missing_field"),
        ('{"type":"input_audio_buffer.append","audio":"A"}', "bad_base64"),
        ('{"type":"conversation.item.truncate","item_id":"i","content_index":0}', "missing_field"),
        (
            '{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c"}}',
            "missing_field",
        ),
        (
            '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":"hi"}}',
            "bad_field",
        ),
        ('{"type":"session.update","session":"x"}', "bad_field"),
        ('{"type":"response.create","response":[]}', "bad_field"),
        (b"\x00\x01", "binary_frame"),
    ],
)
def test_bad_client_events_raise_a_typed_error(data: str | bytes, kind: str) -> None:
    with pytest.raises(OpenAIProtocolError) as info:
        oa.parse_client_event(data)
    assert info.value.kind == kind


def test_server_builders_round_trip_through_the_bridge_parser() -> None:
    session = session_object({"type": "audio/pcmu"}, {"type": "audio/pcmu"})
    cases: list[tuple[str, object]] = [
        (
            oa.session_created_message(session),
            oa.SessionCreated("sess_C9xYz", oa.AudioFormat("audio/pcmu"), oa.AudioFormat("audio/pcmu")),
        ),
        (
            oa.audio_delta_message("r", "i", ULAW, output_index=2, content_index=1),
            oa.AudioDelta("r", "i", 2, 1, ULAW),
        ),
        (oa.audio_done_message("r", "i"), oa.AudioDone("r", "i", 0, 0)),
        (oa.transcript_delta_message("r", "i", "Hi"), oa.TranscriptDelta("r", "i", "Hi")),
        (oa.transcript_done_message("r", "i", "Hi."), oa.TranscriptDone("r", "i", "Hi.")),
        (oa.input_transcript_message("u", "hello"), oa.InputTranscript("u", 0, "hello")),
        (oa.speech_started_message(300, "u"), oa.SpeechStarted(300, "u")),
        (oa.speech_stopped_message(900, "u"), oa.SpeechStopped(900, "u")),
        (oa.response_created_message("r"), oa.ResponseCreated("r")),
        (oa.response_done_message("r", "cancelled"), oa.ResponseDone("r", "cancelled")),
        (
            oa.function_call_arguments_done_message("r", "f", "c", "end_call", "{}"),
            oa.FunctionCall("r", "f", "c", "end_call", "{}"),
        ),
        (oa.item_truncated_message("i", 0, 50), oa.Unknown("conversation.item.truncated")),
    ]
    for text, expected in cases:
        assert oa.parse_server_event(text) == expected
        assert orjson.loads(text)["event_id"].startswith("event_")


# ----------------------------------------------------------------------------------------------------
# The handshake


def updated(output: dict[str, Any], input_: dict[str, Any] | None = None) -> oa.ServerEvent:
    return oa.parse_server_event(
        dumps({"type": "session.updated", "session": session_object(output, input_)})
    )


def test_handshake_is_ready_once_pcmu_is_read_back() -> None:
    handshake = oa.Handshake(instructions="Be brief.", voice="marin")
    assert handshake.state is oa.HandshakeState.CONNECTING
    first = handshake.initial_message()
    assert orjson.loads(first)["session"]["instructions"] == "Be brief."
    with pytest.raises(RuntimeError):
        handshake.initial_message()
    created = oa.parse_server_event(
        dumps({"type": "session.created", "session": session_object({"type": "audio/pcm"})})
    )
    assert handshake.receive(created) is oa.HandshakeState.CONFIGURING  # the defaults are not a refusal
    assert (
        handshake.receive(updated({"type": "audio/pcmu"}, {"type": "audio/pcmu"})) is oa.HandshakeState.READY
    )
    assert handshake.ready and handshake.done and handshake.session_id == "sess_C9xYz"
    # Once ready, later events are the data phase's business.
    assert handshake.receive(updated({"type": "audio/pcm"})) is oa.HandshakeState.READY
    assert "Be brief" not in repr(handshake)


def test_handshake_refuses_a_session_left_at_pcm() -> None:
    handshake = oa.Handshake(instructions="x")
    handshake.initial_message()
    assert handshake.receive(updated({"type": "audio/pcm", "rate": 24000})) is oa.HandshakeState.REFUSED
    assert handshake.reason == "output_format" and not handshake.ready
    assert handshake.output_format == oa.AudioFormat("audio/pcm", 24000)


def test_handshake_refuses_on_an_error_with_its_label() -> None:
    handshake = oa.Handshake(instructions="x")
    handshake.initial_message()
    error = oa.parse_server_event(
        oa.error_message("invalid_request_error", "unknown_parameter", "Unknown parameter: 'session.x'.")
    )
    assert handshake.receive(error) is oa.HandshakeState.REFUSED
    assert handshake.reason == "unknown_parameter" and "session.x" in handshake.detail
