"""Twilio Media Streams wire format (bridge/_twilio.py), tested with recorded messages and no sockets."""

from __future__ import annotations

import base64

import orjson
import pytest

from bridge import _twilio as tw
from bridge._errors import PROTOCOL_ERROR_KINDS, ProtocolError, TwilioProtocolError

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA5e36e9b0b46ff1a7a71bf8ad1b1f7a0e"
ACCOUNT_SID = "AC25e16e9a716a4a1786a7c83f58e30482"

# Messages as Twilio sends them (compact JSON, numbers as strings, field order as Twilio's documentation).
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = (
    '{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC25e16e9a716a4a1786a7c83f58e30482",'
    '"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","callSid":"CA5e36e9b0b46ff1a7a71bf8ad1b1f7a0e",'
    '"tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    '"customParameters":{"voice_id":"jill","temperature":"0.5","bridge_token":"s3cr3t-t0ken-value"}},'
    '"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)
# 20 ms of a 440 Hz tone, μ-law (160 bytes).
PAYLOAD_B64 = (
    "/87Aure3ur/M809BOzg3Oj5La9HCu7i3ub7J5lRDOzg3OT1IYNfEvLi3ub3H3VpGPDg3ODxGWt3Hvbm3uLzE12BIPTk3ODtDVObJ"
    "vrm3uLvC0WtLPjo3ODtBT/PMv7q3t7rAzv9OQDo3Nzo/THPPwbu4t7q+y+tRQjs4Nzk+SWXUw7y4t7m9yOBXRDw4Nzk9R13axry4"
    "t7i8xtpdRz05Nw=="
)
MEDIA = (
    '{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
    f'"payload":"{PAYLOAD_B64}"}},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}}'
)
MARK = (
    '{"event":"mark","sequenceNumber":"41","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"mark":{"name":"7session_id3f2a"}}'
)
DTMF = (
    '{"event":"dtmf","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","sequenceNumber":"5",'
    '"dtmf":{"track":"inbound_track","digit":"1"}}'
)
STOP = (
    '{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC25e16e9a716a4a1786a7c83f58e30482",'
    '"callSid":"CA5e36e9b0b46ff1a7a71bf8ad1b1f7a0e"},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)


def twilio_error(data: str | bytes, **kwargs: int) -> TwilioProtocolError:
    with pytest.raises(TwilioProtocolError) as info:
        tw.parse_event(data, **kwargs)
    return info.value


def with_field(message: str, path: tuple[str, ...], value: object) -> str:
    """The recorded message with one field replaced (or removed when value is ...)."""
    msg = orjson.loads(message)
    target = msg
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return orjson.dumps(msg).decode()


def short_id(value: object) -> str | None:
    """Readable test ids for parametrized messages (the default id would be the whole message)."""
    if isinstance(value, str | bytes | bytearray) and len(value) > 40:
        return f"{value[:32]!r}…"
    return None


# ----------------------------------------------------------------------------------------------------
# Twilio -> bridge: recorded messages


def test_connected_is_parsed() -> None:
    assert tw.parse_event(CONNECTED) == tw.Connected(protocol="Call", version="1.0.0")


def test_start_carries_ids_format_and_custom_parameters_as_strings() -> None:
    event = tw.parse_event(START)
    assert event == tw.Start(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid=ACCOUNT_SID,
        tracks=("inbound",),
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        custom_parameters={"voice_id": "jill", "temperature": "0.5", "bridge_token": "s3cr3t-t0ken-value"},
        sequence_number=1,
    )


def test_start_repr_shows_parameter_names_but_never_their_values() -> None:
    text = repr(tw.parse_event(START))
    assert "bridge_token" in text
    assert "s3cr3t" not in text


def test_media_payload_is_decoded_and_string_numbers_become_ints() -> None:
    event = tw.parse_event(MEDIA)
    assert isinstance(event, tw.Media)
    assert event.payload == base64.b64decode(PAYLOAD_B64)
    assert len(event.payload) == 160
    assert (event.stream_sid, event.track, event.chunk, event.timestamp_ms, event.sequence_number) == (
        STREAM_SID,
        "inbound",
        2,
        5,
        4,
    )


def test_media_accepts_json_integers_for_numbers() -> None:
    text = with_field(with_field(MEDIA, ("media", "chunk"), 2), ("sequenceNumber",), 4)
    event = tw.parse_event(text)
    assert isinstance(event, tw.Media)
    assert (event.chunk, event.sequence_number) == (2, 4)


def test_media_without_optional_numbers_and_track_still_parses() -> None:
    text = MEDIA
    for path in (("media", "chunk"), ("media", "timestamp"), ("media", "track"), ("sequenceNumber",)):
        text = with_field(text, path, ...)
    event = tw.parse_event(text)
    assert event == tw.Media(STREAM_SID, base64.b64decode(PAYLOAD_B64), "inbound", None, None, None)


def test_media_repr_does_not_dump_the_audio() -> None:
    assert "<160 bytes>" in repr(tw.parse_event(MEDIA))


def test_mark_dtmf_and_stop_are_parsed() -> None:
    assert tw.parse_event(MARK) == tw.Mark(STREAM_SID, "7session_id3f2a", 41)
    assert tw.parse_event(DTMF) == tw.Dtmf(STREAM_SID, "1", "inbound_track", 5)
    assert tw.parse_event(STOP) == tw.Stop(STREAM_SID, CALL_SID, ACCOUNT_SID, 5)


def test_stop_without_details_is_still_a_stop() -> None:
    event = tw.parse_event('{"event":"stop","streamSid":"MZ1"}')
    assert event == tw.Stop("MZ1", "", "", None)


def test_unknown_extra_fields_are_ignored() -> None:
    text = with_field(MEDIA, ("media", "newField"), {"x": [1, 2]})
    assert isinstance(tw.parse_event(text), tw.Media)


def test_utf8_bytes_are_accepted_as_text() -> None:
    assert tw.parse_event(MARK.encode()) == tw.parse_event(MARK)


# ----------------------------------------------------------------------------------------------------
# Twilio -> bridge: every way to be wrong has one kind


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ("", "bad_json"),
        ("{", "bad_json"),
        (MEDIA[:-10], "bad_json"),
        (b'{"event":"mark","x":"\xff"}', "bad_json"),  # bytes that are not UTF-8
        ('{"event":"mark","x":"\ud800"}', "bad_json"),  # a lone surrogate cannot be JSON text
        ("[1, 2]", "not_object"),
        ('"media"', "not_object"),
        ("null", "not_object"),
        ('{"event":"hangup","streamSid":"MZ1"}', "unknown_event"),
        ('{"event":"clear","streamSid":"MZ1"}', "unknown_event"),  # we send clear; Twilio never does
        ('{"streamSid":"MZ1"}', "missing_field"),
        ('{"event":7}', "bad_field"),
        (with_field(MEDIA, ("streamSid",), ...), "missing_field"),
        (with_field(MEDIA, ("streamSid",), ""), "bad_field"),
        (with_field(MEDIA, ("streamSid",), 12), "bad_field"),
        (with_field(MEDIA, ("media",), ...), "missing_field"),
        (with_field(MEDIA, ("media",), "x"), "bad_field"),
        (with_field(MEDIA, ("media", "payload"), ...), "missing_field"),
        (with_field(MEDIA, ("media", "payload"), None), "bad_field"),
        (with_field(MEDIA, ("media", "payload"), "not base64!"), "bad_base64"),
        (with_field(MEDIA, ("media", "payload"), "QQ"), "bad_base64"),  # missing padding
        (with_field(MEDIA, ("media", "payload"), "QUJD\nREVG"), "bad_base64"),  # strict: no newlines
        (with_field(MEDIA, ("media", "payload"), "QUJDé"), "bad_base64"),  # non-ASCII text
        (with_field(MEDIA, ("media", "track"), 1), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), "-1"), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), -1), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), "+2"), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), " 2"), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), "2.0"), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), 2.0), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), "٢"), "bad_field"),  # a non-ASCII digit
        (with_field(MEDIA, ("media", "chunk"), "1_000"), "bad_field"),
        (with_field(MEDIA, ("media", "chunk"), "9" * 5000), "bad_field"),
        (with_field(MEDIA, ("media", "timestamp"), True), "bad_field"),
        (with_field(MEDIA, ("sequenceNumber",), [4]), "bad_field"),
        (with_field(START, ("start",), ...), "missing_field"),
        (with_field(START, ("start",), []), "bad_field"),
        (with_field(with_field(START, ("start", "streamSid"), ...), ("streamSid",), ...), "missing_field"),
        (with_field(START, ("start", "streamSid"), "MZother"), "bad_field"),
        (with_field(START, ("start", "callSid"), ...), "missing_field"),
        (with_field(START, ("start", "tracks"), "inbound"), "bad_field"),
        (with_field(START, ("start", "tracks"), ["inbound", 1]), "bad_field"),
        (with_field(START, ("start", "mediaFormat"), "mulaw"), "bad_field"),
        (with_field(START, ("start", "mediaFormat", "sampleRate"), "0"), "bad_field"),
        (with_field(START, ("start", "mediaFormat", "channels"), "two"), "bad_field"),
        (with_field(START, ("start", "customParameters"), ["a"]), "bad_field"),
        (with_field(START, ("start", "customParameters", "temperature"), 0.5), "bad_field"),
        (with_field(MARK, ("mark",), ...), "missing_field"),
        (with_field(MARK, ("mark", "name"), ...), "missing_field"),
        (with_field(MARK, ("mark", "name"), 7), "bad_field"),
        (with_field(DTMF, ("dtmf", "digit"), ""), "bad_field"),
        (with_field(DTMF, ("dtmf",), ...), "missing_field"),
        (with_field(STOP, ("streamSid",), ...), "missing_field"),
        (with_field(STOP, ("stop",), "done"), "bad_field"),
        (with_field(CONNECTED, ("version",), 1), "bad_field"),
    ],
    ids=short_id,
)
def test_each_malformed_message_raises_one_twilio_error_with_its_kind(data: str | bytes, kind: str) -> None:
    error = twilio_error(data)
    assert error.kind == kind
    assert error.peer == "twilio"
    assert isinstance(error, ProtocolError)


def test_start_fields_absent_from_twilio_get_defaults() -> None:
    text = START
    for path in (("start", "accountSid"), ("start", "tracks"), ("start", "mediaFormat"), ("sequenceNumber",)):
        text = with_field(text, path, ...)
    text = with_field(text, ("start", "customParameters"), None)
    event = tw.parse_event(with_field(text, ("start", "streamSid"), ...))  # the top-level streamSid serves
    assert event == tw.Start(STREAM_SID, CALL_SID, "", ("inbound",), "audio/x-mulaw", 8000, 1, {}, None)


def test_payload_at_the_limit_passes_and_one_byte_more_is_too_large() -> None:
    at_limit = with_field(MEDIA, ("media", "payload"), base64.b64encode(bytes(300)).decode())
    over = with_field(MEDIA, ("media", "payload"), base64.b64encode(bytes(301)).decode())
    event = tw.parse_event(at_limit, max_payload_bytes=300)
    assert isinstance(event, tw.Media) and len(event.payload) == 300
    assert twilio_error(over, max_payload_bytes=300).kind == "too_large"


def test_a_huge_payload_is_refused_by_its_length_before_any_decoding() -> None:
    # Not even base64: if it were decoded first this would be bad_base64.
    text = with_field(MEDIA, ("media", "payload"), "!" * 2_000_000)
    assert twilio_error(text).kind == "too_large"


def test_error_text_stays_short_and_truncates_the_echoed_input() -> None:
    huge = "!" * 100_000
    for data in (huge, with_field(MEDIA, ("media", "payload"), huge[:20_000]), '{"event":"' + huge + '"}'):
        error = twilio_error(data)
        assert len(str(error)) < 400
        assert huge[:200] not in str(error)


def test_bad_custom_parameter_value_is_not_echoed() -> None:
    error = twilio_error(with_field(START, ("start", "customParameters", "bridge_token"), 98765432123))
    assert error.kind == "bad_field"
    assert "bridge_token" in str(error)
    assert "98765432123" not in str(error)


def test_error_kinds_are_the_documented_set() -> None:
    assert {
        "bad_json",
        "not_object",
        "unknown_event",
        "missing_field",
        "bad_field",
        "bad_base64",
        "too_large",
        "binary_frame",
        "no_metadata",
        "bad_metadata",
    } == PROTOCOL_ERROR_KINDS
    with pytest.raises(ValueError):
        TwilioProtocolError("oops", "not a kind")


# ----------------------------------------------------------------------------------------------------
# bridge -> Twilio


def test_media_message_has_twilios_exact_shape() -> None:
    text = tw.media_message(STREAM_SID, b"\xff\x7f\x00")
    assert (
        text
        == '{"event":"media","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","media":{"payload":"/38A"}}'
    )


def test_media_message_refuses_an_empty_payload() -> None:
    with pytest.raises(ValueError):
        tw.media_message(STREAM_SID, b"")


def test_mark_and_clear_messages_have_twilios_exact_shape() -> None:
    assert (
        tw.mark_message("MZ1", 'seq "7"')
        == '{"event":"mark","streamSid":"MZ1","mark":{"name":"seq \\"7\\""}}'
    )
    assert tw.clear_message("MZ1") == '{"event":"clear","streamSid":"MZ1"}'


def test_builders_reject_a_missing_stream_sid() -> None:
    with pytest.raises(ValueError):
        tw.clear_message("")
    with pytest.raises(TypeError):
        tw.mark_message(None, "x")  # type: ignore[arg-type]


def test_what_the_bridge_sends_is_what_the_emulator_reads() -> None:
    ulaw = base64.b64decode(PAYLOAD_B64)
    assert tw.parse_outbound(tw.media_message(STREAM_SID, ulaw)) == tw.PlayMedia(STREAM_SID, ulaw)
    assert tw.parse_outbound(tw.mark_message(STREAM_SID, "m1")) == tw.PlayMark(STREAM_SID, "m1")
    assert tw.parse_outbound(tw.clear_message(STREAM_SID)) == tw.ClearAudio(STREAM_SID)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'{"event":"clear","streamSid":"MZ1"}', "binary_frame"),
        (bytearray(b"\x00\x01"), "binary_frame"),
        (CONNECTED, "unknown_event"),
        ('{"event":"start","streamSid":"MZ1"}', "unknown_event"),
        ('{"streamSid":"MZ1"}', "missing_field"),
        ('{"event":null,"streamSid":"MZ1"}', "bad_field"),
        ('{"event":"clear"}', "missing_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"payload":""}}', "bad_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"payload":"QQ"}}', "bad_base64"),
        ('{"event":"media","streamSid":"MZ1"}', "missing_field"),
        ('{"event":"mark","streamSid":"MZ1","mark":{}}', "missing_field"),
        ('{"event":"mark","streamSid":"MZ1","mark":{"name":3}}', "bad_field"),
        ("not json", "bad_json"),
        ("[]", "not_object"),
    ],
    ids=short_id,
)
def test_emulator_is_as_strict_as_twilio(data: str | bytes, kind: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        tw.parse_outbound(data)
    assert info.value.kind == kind


# ----------------------------------------------------------------------------------------------------
# Emulator builders: Twilio's shapes, and they round-trip through the bridge's parser


def test_emulator_messages_match_the_recorded_ones_byte_for_byte() -> None:
    assert tw.connected_message() == CONNECTED
    params = {"voice_id": "jill", "temperature": "0.5", "bridge_token": "s3cr3t-t0ken-value"}
    start = tw.start_message(
        stream_sid=STREAM_SID, call_sid=CALL_SID, account_sid=ACCOUNT_SID, custom_parameters=params
    )
    assert start == START
    media = tw.media_event_message(
        stream_sid=STREAM_SID,
        payload=base64.b64decode(PAYLOAD_B64),
        chunk=2,
        timestamp_ms=5,
        sequence_number=4,
    )
    assert media == MEDIA
    assert tw.mark_event_message(stream_sid=STREAM_SID, name="7session_id3f2a", sequence_number=41) == MARK
    assert tw.dtmf_message(stream_sid=STREAM_SID, digit="1", sequence_number=5) == DTMF
    stop = tw.stop_message(
        stream_sid=STREAM_SID, call_sid=CALL_SID, account_sid=ACCOUNT_SID, sequence_number=5
    )
    assert stop == STOP


def test_every_emulator_message_round_trips_through_parse_event() -> None:
    ulaw = bytes(range(256)) * 2
    cases = [
        (tw.connected_message(), tw.Connected("Call", "1.0.0")),
        (
            tw.start_message(
                stream_sid="MZa",
                call_sid="CAb",
                account_sid="ACc",
                custom_parameters={"système": "ünï", "empty": ""},
                sequence_number=9,
                tracks=("inbound", "outbound"),
            ),
            tw.Start(
                "MZa",
                "CAb",
                "ACc",
                ("inbound", "outbound"),
                "audio/x-mulaw",
                8000,
                1,
                {"système": "ünï", "empty": ""},
                9,
            ),
        ),
        (
            tw.media_event_message(
                stream_sid="MZa", payload=ulaw, chunk=7, timestamp_ms=140, sequence_number=8
            ),
            tw.Media("MZa", ulaw, "inbound", 7, 140, 8),
        ),
        (tw.mark_event_message(stream_sid="MZa", name="", sequence_number=3), tw.Mark("MZa", "", 3)),
        (
            tw.dtmf_message(stream_sid="MZa", digit="#", sequence_number=4),
            tw.Dtmf("MZa", "#", "inbound_track", 4),
        ),
        (
            tw.stop_message(stream_sid="MZa", call_sid="CAb", account_sid="ACc", sequence_number=10),
            tw.Stop("MZa", "CAb", "ACc", 10),
        ),
    ]
    for text, expected in cases:
        assert tw.parse_event(text) == expected


def test_emulator_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        tw.media_event_message(stream_sid="MZa", payload=b"", chunk=1, timestamp_ms=0, sequence_number=2)
    with pytest.raises(ValueError):
        tw.mark_event_message(stream_sid="MZa", name="x", sequence_number=-1)
    with pytest.raises(TypeError):
        tw.start_message(stream_sid="MZa", call_sid="CAb", account_sid="ACc", custom_parameters={"n": 1})  # type: ignore[dict-item]
