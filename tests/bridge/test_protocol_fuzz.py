"""Property tests: whatever arrives, each parser returns a clean event or raises its peer's ProtocolError.

Inputs are a space, not a few examples: valid messages with one field replaced by any JSON value or removed,
valid messages cut short, random text (lone surrogates included), random bytes, random JSON values and huge
strings. Runs are derandomized (the same inputs every run) and bounded by ``max_examples``.

Each hypothesis example carries a batch of ``BATCH`` inputs: hypothesis's own bookkeeping (~1 ms an example)
dominates the cost, and batching gives three times the inputs for the same time. Inputs tried per run,
round trips included: Twilio ``parse_event`` 3,800, ``parse_outbound`` 3,200, Speakr ``parse_event``
3,800, ``parse_client_message`` 2,400, ``StartParams.with_overrides`` 1,000 (14,200 in all).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import _twilio as tw
from bridge._errors import PROTOCOL_ERROR_KINDS, ProtocolError, SpeakrProtocolError, TwilioProtocolError
from bridge.agents.speakr import _wire as sp

BATCH = 4  # inputs per hypothesis example in the batched tests
FRAMES = 500  # examples (x BATCH inputs) per parser for arbitrary frames
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


# ----------------------------------------------------------------------------------------------------
# Strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "-1", "4", "+4", " 4", "٤", "1e3", "QQ==", "AAAA", "media", "x" * 300])
)
# One level of nesting finds every type confusion a field can have, at a fraction of st.recursive's cost.
json_values = (
    json_scalars
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=8), json_scalars, max_size=3)
)
any_text = st.text(st.characters(), max_size=100) | st.builds(
    lambda a, b: a + "\ud800" + b, st.text(max_size=20), st.text(max_size=20)
)
# Whole frames of one repeated character ("[" * 100_000 is nesting far past orjson's depth limit), and
# media messages whose payload is around the 64 kB limit or far past it.
huge_strings = st.builds(
    lambda char, n: char * n, st.sampled_from(["A", "{", "[", "é", "\x00", '"']), st.integers(0, 100_000)
)
huge_media = st.builds(
    lambda n, tail: '{"event":"media","streamSid":"MZ1","media":{"payload":"' + "A" * n + tail + '"}}',
    st.one_of(st.integers(85_300, 85_400), st.integers(0, 400_000)),
    st.sampled_from(["", "=", "==", "!"]),
)

ULAW = bytes(range(160))
TWILIO_INBOUND = [
    tw.connected_message(),
    tw.start_message(
        stream_sid="MZ1",
        call_sid="CA1",
        account_sid="AC1",
        custom_parameters={"voice_id": "jill", "bridge_token": "t"},
    ),
    tw.media_event_message(stream_sid="MZ1", payload=ULAW, chunk=1, timestamp_ms=20, sequence_number=3),
    tw.mark_event_message(stream_sid="MZ1", name="5session_id1", sequence_number=4),
    tw.dtmf_message(stream_sid="MZ1", digit="9", sequence_number=5),
    tw.stop_message(stream_sid="MZ1", call_sid="CA1", account_sid="AC1", sequence_number=6),
]
TWILIO_OUTBOUND = [tw.media_message("MZ1", ULAW), tw.mark_message("MZ1", "m"), tw.clear_message("MZ1")]
SPEAKR_INBOUND = [
    sp.initial_message(),
    sp.ready_message(),
    sp.media_message("sess", 7, b"\x01\x02\x03"),
    sp.pause_message(),
    sp.continue_message(),
    sp.clear_message(),
    sp.info_message({"code": "E1", "message": "bad voice"}),
    sp.end_message(),
]
SPEAKR_CLIENT = [sp.start_message(sp.StartParams(session_id="s")), sp.status_message("s", 7)]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts/lists (the root excluded)."""
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
            st.sampled_from(["event", "type", "msg", "streamSid", "media", "mark"]), json_values
        ).map(lambda v: orjson.dumps(v).decode()),
        huge_strings,
        huge_media,
        st.sampled_from(templates).map(str.encode),
    )


# ----------------------------------------------------------------------------------------------------
# The property


def check(
    parse: Callable[[Any], object],
    error_type: type[ProtocolError],
    data: str | bytes,
    events: tuple[type, ...],
) -> None:
    try:
        event = parse(data)
    except error_type as exc:
        assert exc.kind in PROTOCOL_ERROR_KINDS
        assert len(str(exc)) < 400
        return
    assert isinstance(event, events)
    repr(event)  # never raises, never huge enough to matter
    assert len(repr(event)) < 2000 or isinstance(event, sp.StartRequest | sp.Info)


TWILIO_EVENTS = (tw.Connected, tw.Start, tw.Media, tw.Mark, tw.Dtmf, tw.Stop)
OUTBOUND_EVENTS = (tw.PlayMedia, tw.PlayMark, tw.ClearAudio)
SPEAKR_EVENTS = (sp.Initial, sp.Ready, sp.AgentMedia, sp.Pause, sp.Continue, sp.Clear, sp.Info, sp.End)
CLIENT_EVENTS = (sp.StartRequest, sp.Status, sp.AudioFrame)


def batch(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


@fuzz_settings(FRAMES)
@given(batch(frames(TWILIO_INBOUND)), st.sampled_from([0, 160, 64_000]))
def test_twilio_parse_event_never_raises_anything_else(inputs: list[str | bytes], limit: int) -> None:
    for data in inputs:
        check(lambda d: tw.parse_event(d, max_payload_bytes=limit), TwilioProtocolError, data, TWILIO_EVENTS)


@fuzz_settings(FOCUSED)
@given(batch(mutated(TWILIO_INBOUND)))
def test_twilio_parse_event_on_one_broken_field(inputs: list[str]) -> None:
    for data in inputs:
        check(tw.parse_event, TwilioProtocolError, data, TWILIO_EVENTS)


@fuzz_settings(FRAMES)
@given(batch(frames(TWILIO_OUTBOUND)))
def test_twilio_parse_outbound_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(tw.parse_outbound, TwilioProtocolError, data, OUTBOUND_EVENTS)


@fuzz_settings(FRAMES)
@given(batch(frames(SPEAKR_INBOUND)))
def test_speakr_parse_event_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(sp.parse_event, SpeakrProtocolError, data, SPEAKR_EVENTS)


@st.composite
def media_payloads(draw: st.DrawFn) -> str:
    """Speakr media frames whose decoded payload is random: metadata of any shape, NUL or not, any audio."""
    metadata = draw(st.one_of(json_values.map(orjson.dumps), st.binary(max_size=40)))
    raw = metadata + draw(st.sampled_from([b"\x00", b""])) + draw(st.binary(max_size=64))
    b64 = base64.b64encode(raw).decode()
    if draw(st.booleans()):
        b64 = b64[: draw(st.integers(0, len(b64)))]
    return orjson.dumps({draw(st.sampled_from(["type", "event"])): "media", "msg": b64}).decode()


@fuzz_settings(FOCUSED)
@given(batch(media_payloads()))
def test_speakr_media_payloads_never_raise_anything_else(inputs: list[str]) -> None:
    for data in inputs:
        check(sp.parse_event, SpeakrProtocolError, data, SPEAKR_EVENTS)


@fuzz_settings(FRAMES)
@given(batch(frames(SPEAKR_CLIENT)))
def test_speakr_parse_client_message_never_raises_anything_else(inputs: list[str | bytes]) -> None:
    for data in inputs:
        check(sp.parse_client_message, SpeakrProtocolError, data, CLIENT_EVENTS)


# ----------------------------------------------------------------------------------------------------
# Round trips and invariants over generated values

ids = json_values.filter(lambda v: not (isinstance(v, float) and math.isnan(v)))
sids = st.text(min_size=1, max_size=40)


@fuzz_settings(ROUND_TRIPS)
@given(ids, ids, st.binary(max_size=2000))
def test_speakr_media_round_trips_ids_and_audio(session_id: Any, sequence_id: Any, pcm: bytes) -> None:
    event = sp.parse_event(sp.media_message(session_id, sequence_id, pcm))
    assert isinstance(event, sp.AgentMedia)
    assert (event.session_id, event.sequence_id, event.audio) == (session_id, sequence_id, pcm)
    assert sp.parse_client_message(sp.status_message(session_id, sequence_id)) == sp.Status(
        session_id, sequence_id
    )


@fuzz_settings(ROUND_TRIPS)
@given(sids, st.binary(min_size=1, max_size=2000), st.text(max_size=40))
def test_twilio_outbound_round_trips(stream_sid: str, ulaw: bytes, name: str) -> None:
    assert tw.parse_outbound(tw.media_message(stream_sid, ulaw)) == tw.PlayMedia(stream_sid, ulaw)
    assert tw.parse_outbound(tw.mark_message(stream_sid, name)) == tw.PlayMark(stream_sid, name)
    assert tw.parse_outbound(tw.clear_message(stream_sid)) == tw.ClearAudio(stream_sid)


@fuzz_settings(ROUND_TRIPS)
@given(
    sids,
    st.binary(min_size=1, max_size=2000),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=5),
)
def test_twilio_inbound_round_trips(
    sid: str, ulaw: bytes, chunk: int, ts: int, seq: int, params: dict[str, str]
) -> None:
    media = tw.media_event_message(
        stream_sid=sid, payload=ulaw, chunk=chunk, timestamp_ms=ts, sequence_number=seq
    )
    assert tw.parse_event(media) == tw.Media(sid, ulaw, "inbound", chunk, ts, seq)
    start = tw.start_message(stream_sid=sid, call_sid="CA1", account_sid="AC1", custom_parameters=params)
    event = tw.parse_event(start)
    assert isinstance(event, tw.Start) and event.custom_parameters == params


@fuzz_settings(FOCUSED)
@given(
    batch(
        st.dictionaries(
            st.sampled_from([*sp.WIRE_FIELDS, "bridge_token", "sessionId"]),
            st.one_of(any_text, json_scalars.map(str), st.floats().map(str), st.integers().map(str)),
        )
    )
)
def test_overrides_never_raise_and_always_yield_valid_params(inputs: list[dict[str, str]]) -> None:
    for params in inputs:
        check_overrides(params)


def check_overrides(params: dict[str, str]) -> None:
    base = sp.StartParams(session_id="s")
    result, warnings = base.with_overrides(params)
    assert result.session_id == "s"
    assert len(warnings) <= len(params)
    sp.StartParams(
        **{field: getattr(result, field) for field in sp.StartParams.__dataclass_fields__}
    )  # valid
    inner = orjson.loads(orjson.loads(sp.start_message(result))["msg"])
    assert all(
        math.isfinite(inner[k]) for k in ("temperature", "threshold", "prefixPadding", "silenceDuration")
    )


@fuzz_settings(ROUND_TRIPS)
@given(
    json_values
    | st.dictionaries(
        st.sampled_from(["type", "code", "kind", "message"]), json_scalars | st.text(max_size=40)
    )
    | st.dictionaries(st.sampled_from(["type", "code", "kind"]), json_scalars)
    .map(orjson.dumps)
    .map(bytes.decode)
)
def test_info_kind_is_always_a_metric_safe_label(msg: Any) -> None:
    event = sp.parse_event(sp.info_message(msg))
    assert isinstance(event, sp.Info)
    assert re.fullmatch(r"[a-z0-9_]{1,32}", event.kind)
