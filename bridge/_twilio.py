"""Twilio Media Streams wire format, without I/O (in the manner of h11/wsproto).

Text in, small frozen events out; arguments in, text out. Nothing here touches a socket or imports
trio, so the whole protocol is tested with recorded messages.

Two directions, each with both ends, because our Twilio caller emulator speaks the other side of the
same wire:

- Twilio -> bridge: :func:`parse_event` (bridge side) and the ``*_message`` builders of what Twilio sends
  (:func:`connected_message`, :func:`start_message`, :func:`media_event_message`, ...; emulator side).
- bridge -> Twilio: :func:`media_message`, :func:`mark_message`, :func:`clear_message` (bridge side) and
  :func:`parse_outbound` (emulator side, as strict as Twilio).

Everything from Twilio is untrusted. Bad input raises :class:`~bridge._errors.TwilioProtocolError` with
a fixed ``kind`` and never anything else, so one ``except`` in the call loop counts and drops it. Twilio
sends numbers as JSON strings (``"sequenceNumber": "4"``); we accept strings of ASCII digits or JSON
integers and return ints.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeAlias

import orjson

from bridge._errors import TwilioProtocolError, short_repr

__all__ = [
    "SAMPLE_RATE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ClearAudio",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "OutboundMessage",
    "PlayMark",
    "PlayMedia",
    "Start",
    "Stop",
    "TwilioEvent",
    "clear_message",
    "connected_message",
    "dtmf_message",
    "mark_event_message",
    "mark_message",
    "media_event_message",
    "media_message",
    "parse_event",
    "parse_outbound",
    "start_message",
    "stop_message",
]

#: Twilio Media Streams carry μ-law at 8 kHz, one byte a sample: the call's rate everywhere in the bridge.
SAMPLE_RATE: Final = 8000
#: Default cap on one decoded inbound media payload. Twilio sends 160 bytes (20 ms); 64 kB is 8 s of audio,
#: far above anything real, low enough that a hostile frame cannot make us decode megabytes.
DEFAULT_MAX_PAYLOAD_BYTES: Final = 64_000

# Digits allowed in a numeric string: 18 always fit in a signed 64-bit int, and int() never sees a huge
# string.
_MAX_INT_DIGITS: Final = 18

# Bound once: the media path runs 50 times a second per call.
_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64
_MISSING: Final[Any] = object()


# ----------------------------------------------------------------------------------------------------
# Events: Twilio -> bridge


@dataclass(frozen=True, slots=True)
class Connected:
    """First message on every stream: the protocol Twilio will speak."""

    protocol: str = "Call"
    version: str = "1.0.0"


@dataclass(frozen=True, slots=True, repr=False)
class Start:
    """Stream metadata, sent once after :class:`Connected`.

    ``custom_parameters`` are the ``<Parameter>``s of the ``<Stream>`` TwiML, values kept as strings. They may
    carry a per-call token, so ``repr`` shows their names only.
    """

    stream_sid: str
    call_sid: str
    account_sid: str = ""
    tracks: tuple[str, ...] = ("inbound",)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1
    custom_parameters: dict[str, str] = field(default_factory=dict)
    sequence_number: int | None = None

    def __repr__(self) -> str:
        return (
            f"Start(stream_sid={self.stream_sid!r}, call_sid={self.call_sid!r}, "
            f"account_sid={self.account_sid!r}, "
            f"tracks={self.tracks!r}, encoding={self.encoding!r}, sample_rate={self.sample_rate}, "
            f"channels={self.channels}, custom_parameters=<names {sorted(self.custom_parameters)!r}>, "
            f"sequence_number={self.sequence_number!r})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class Media:
    """One chunk of caller audio: ``payload`` is raw μ-law 8 kHz (160 bytes = 20 ms), already base64-decoded.

    ``timestamp_ms`` is stream time (ms since the stream started), not wall time.
    """

    stream_sid: str
    payload: bytes
    track: str = "inbound"
    chunk: int | None = None
    timestamp_ms: int | None = None
    sequence_number: int | None = None

    def __repr__(self) -> str:
        return (
            f"Media(stream_sid={self.stream_sid!r}, payload=<{len(self.payload)} bytes>, "
            f"track={self.track!r}, chunk={self.chunk!r}, timestamp_ms={self.timestamp_ms!r}, "
            f"sequence_number={self.sequence_number!r})"
        )


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark we sent came back: the audio before it has played, *or* it was cleared (see PROTOCOLS.md)."""

    stream_sid: str
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key."""

    stream_sid: str
    digit: str
    track: str = "inbound_track"
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream is over (for a bidirectional stream: the call ended)."""

    stream_sid: str
    call_sid: str = ""
    account_sid: str = ""
    sequence_number: int | None = None


TwilioEvent: TypeAlias = Connected | Start | Media | Mark | Dtmf | Stop


# ----------------------------------------------------------------------------------------------------
# Events: bridge -> Twilio, as the emulator sees them


@dataclass(frozen=True, slots=True, repr=False)
class PlayMedia:
    """Audio for Twilio to buffer and play: raw μ-law 8 kHz, base64-decoded."""

    stream_sid: str
    payload: bytes

    def __repr__(self) -> str:
        return f"PlayMedia(stream_sid={self.stream_sid!r}, payload=<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True)
class PlayMark:
    """Echo ``name`` back once the audio buffered before it has played (or at once when cleared)."""

    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Drop all buffered audio and send back every pending mark."""

    stream_sid: str


OutboundMessage: TypeAlias = PlayMedia | PlayMark | ClearAudio


# ----------------------------------------------------------------------------------------------------
# Field helpers. Each raises TwilioProtocolError naming the field by its dotted path.


def _fail(kind: str, detail: str) -> NoReturn:
    raise TwilioProtocolError(kind, detail)


def _load_object(data: str | bytes) -> dict[str, Any]:
    try:
        msg = _loads(data)
    except _JSONDecodeError as exc:
        _fail("bad_json", f"{exc} in {short_repr(data)}")
    if type(msg) is not dict:
        _fail("not_object", f"expected a JSON object, got {type(msg).__name__}: {short_repr(msg)}")
    return msg


def _str(obj: dict[str, Any], key: str, path: str, default: Any = _MISSING, *, nonempty: bool = False) -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str and (value or not nonempty):
        return value
    if value is _MISSING:
        if default is _MISSING:
            _fail("missing_field", f"{path} is missing")
        return default  # type: ignore[no-any-return]
    _fail(
        "bad_field", f"{path}: expected a {'non-empty ' if nonempty else ''}string, got {short_repr(value)}"
    )


def _opt_sid(obj: dict[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key, _MISSING)
    if type(value) is str and value:
        return value
    if value is _MISSING:
        return None
    _fail("bad_field", f"{path}: expected a non-empty string, got {short_repr(value)}")


def _object(obj: dict[str, Any], key: str, path: str, *, required: bool = True) -> dict[str, Any]:
    value = obj.get(key, _MISSING)
    if type(value) is dict:
        return value
    if value is _MISSING or (value is None and not required):
        if required:
            _fail("missing_field", f"{path} is missing")
        return {}
    _fail("bad_field", f"{path}: expected an object, got {short_repr(value)}")


def _int(value: Any, path: str) -> int | None:
    """Twilio's numbers: a string of ASCII digits or a JSON integer, >= 0. Absent (None) stays None."""
    if type(value) is str:
        if value.isascii() and value.isdigit() and len(value) <= _MAX_INT_DIGITS:
            return int(value)
    elif type(value) is int:  # bool is not int here: type() is exact
        if value >= 0:
            return value
    elif value is None:
        return None
    _fail("bad_field", f"{path}: expected a non-negative integer or digit string, got {short_repr(value)}")


def _positive(obj: dict[str, Any], key: str, path: str, default: int) -> int:
    value = _int(obj.get(key), path)
    if value is None:
        return default
    if value == 0:
        _fail("bad_field", f"{path}: must be positive, got 0")
    return value


def _stream_sid(msg: dict[str, Any]) -> str:
    return _str(msg, "streamSid", "streamSid", nonempty=True)


def _decode_b64(text: str, path: str) -> bytes:
    try:
        return _a2b(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        _fail("bad_base64", f"{path}: {exc} in {short_repr(text)}")


# ----------------------------------------------------------------------------------------------------
# Twilio -> bridge


def parse_event(data: str | bytes, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> TwilioEvent:
    """Parse one text frame from Twilio.

    Unknown extra fields are ignored (Twilio adds fields over time); what the bridge relies on is checked.

    Args:
        data: the frame's text. ``bytes`` are accepted only as UTF-8 JSON text (Twilio sends text frames).
        max_payload_bytes: largest decoded ``media`` payload accepted; the base64 text is measured before it
            is decoded, so an oversized frame costs no decoding.

    Returns:
        One of :class:`Connected`, :class:`Start`, :class:`Media`, :class:`Mark`, :class:`Dtmf`,
        :class:`Stop`.

    Raises:
        TwilioProtocolError: the frame is not a message we can use; ``kind`` says why.
    """
    msg = _load_object(data)
    event = msg.get("event", _MISSING)
    if event == "media":
        return _parse_media(msg, max_payload_bytes)
    if type(event) is str:
        parser = _PARSERS.get(event)
        if parser is None:
            _fail("unknown_event", f"event {short_repr(event)}")
        return parser(msg)
    if event is _MISSING:
        _fail("missing_field", "event is missing")
    _fail("bad_field", f"event: expected a string, got {short_repr(event)}")


def _parse_media(msg: dict[str, Any], max_payload_bytes: int) -> Media:
    # The hot path: 50 messages a second per call. Lookups are done once and the happy path is straight.
    stream_sid = msg.get("streamSid")
    if type(stream_sid) is not str or not stream_sid:
        stream_sid = _stream_sid(msg)  # raises the precise error
    media = msg.get("media")
    if type(media) is not dict:
        media = _object(msg, "media", "media")  # raises
    payload = media.get("payload")
    if type(payload) is not str:
        payload = _str(media, "payload", "media.payload")  # raises
    # 4 base64 characters carry 3 bytes: anything longer than this cannot decode to <= max_payload_bytes.
    if len(payload) > 4 * ((max_payload_bytes + 2) // 3):
        _fail(
            "too_large",
            f"media.payload: {len(payload)} base64 chars, limit {max_payload_bytes} bytes decoded",
        )
    try:
        audio = _a2b(payload, strict_mode=True)
    except ValueError as exc:
        _fail("bad_base64", f"media.payload: {exc} in {short_repr(payload)}")
    if len(audio) > max_payload_bytes:
        _fail("too_large", f"media.payload: {len(audio)} bytes, limit {max_payload_bytes}")
    track = media.get("track", "inbound")
    if type(track) is not str:
        _fail("bad_field", f"media.track: expected a string, got {short_repr(track)}")
    return Media(
        stream_sid,
        audio,
        track,
        _int(media.get("chunk"), "media.chunk"),
        _int(media.get("timestamp"), "media.timestamp"),
        _int(msg.get("sequenceNumber"), "sequenceNumber"),
    )


def _parse_connected(msg: dict[str, Any]) -> Connected:
    return Connected(_str(msg, "protocol", "protocol", ""), _str(msg, "version", "version", ""))


def _parse_start(msg: dict[str, Any]) -> Start:
    start = _object(msg, "start", "start")
    inner_sid = _opt_sid(start, "streamSid", "start.streamSid")
    outer_sid = _opt_sid(msg, "streamSid", "streamSid")
    if inner_sid is not None and outer_sid is not None and inner_sid != outer_sid:
        _fail(
            "bad_field",
            f"start.streamSid {short_repr(inner_sid)} differs from streamSid {short_repr(outer_sid)}",
        )
    stream_sid = inner_sid if inner_sid is not None else outer_sid
    if stream_sid is None:
        _fail("missing_field", "start.streamSid is missing")

    tracks_value = start.get("tracks", _MISSING)
    if tracks_value is _MISSING or tracks_value is None:
        tracks: tuple[str, ...] = ("inbound",)
    elif type(tracks_value) is list and all(type(t) is str for t in tracks_value):
        tracks = tuple(tracks_value)
    else:
        _fail("bad_field", f"start.tracks: expected a list of strings, got {short_repr(tracks_value)}")

    media_format = _object(start, "mediaFormat", "start.mediaFormat", required=False)
    params = _object(start, "customParameters", "start.customParameters", required=False)
    for name, value in params.items():
        if type(value) is not str:
            # The value is not echoed: parameters may carry a per-call token.
            _fail(
                "bad_field",
                f"start.customParameters[{short_repr(name)}]: expected a string, got {type(value).__name__}",
            )

    return Start(
        stream_sid=stream_sid,
        call_sid=_str(start, "callSid", "start.callSid", nonempty=True),
        account_sid=_str(start, "accountSid", "start.accountSid", ""),
        tracks=tracks,
        encoding=_str(media_format, "encoding", "start.mediaFormat.encoding", "audio/x-mulaw"),
        sample_rate=_positive(media_format, "sampleRate", "start.mediaFormat.sampleRate", 8000),
        channels=_positive(media_format, "channels", "start.mediaFormat.channels", 1),
        custom_parameters=params,
        sequence_number=_int(msg.get("sequenceNumber"), "sequenceNumber"),
    )


def _parse_mark(msg: dict[str, Any]) -> Mark:
    stream_sid = _stream_sid(msg)
    mark = _object(msg, "mark", "mark")
    return Mark(
        stream_sid, _str(mark, "name", "mark.name"), _int(msg.get("sequenceNumber"), "sequenceNumber")
    )


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    stream_sid = _stream_sid(msg)
    dtmf = _object(msg, "dtmf", "dtmf")
    return Dtmf(
        stream_sid,
        _str(dtmf, "digit", "dtmf.digit", nonempty=True),
        _str(dtmf, "track", "dtmf.track", "inbound_track"),
        _int(msg.get("sequenceNumber"), "sequenceNumber"),
    )


def _parse_stop(msg: dict[str, Any]) -> Stop:
    stream_sid = _stream_sid(msg)
    stop = _object(msg, "stop", "stop", required=False)  # liberal: a stop is a stop even without details
    return Stop(
        stream_sid,
        _str(stop, "callSid", "stop.callSid", ""),
        _str(stop, "accountSid", "stop.accountSid", ""),
        _int(msg.get("sequenceNumber"), "sequenceNumber"),
    )


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], TwilioEvent]]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "stop": _parse_stop,
}


# ----------------------------------------------------------------------------------------------------
# bridge -> Twilio


def _check_sid(stream_sid: str) -> None:
    if type(stream_sid) is not str:
        raise TypeError(f"stream_sid must be str, got {type(stream_sid).__name__}")
    if not stream_sid:
        raise ValueError("stream_sid must not be empty")


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """Audio for Twilio to play: ``{"event":"media","streamSid":…,"media":{"payload":"<base64 μ-law>"}}``.

    Args:
        stream_sid: the stream's SID (Twilio ignores messages for another stream).
        ulaw: raw μ-law 8 kHz, any length but not empty.

    Raises:
        ValueError: ``ulaw`` is empty (Twilio must never get an empty payload) or ``stream_sid`` is empty.
    """
    if not ulaw:
        raise ValueError("refusing to build a Twilio media message with an empty payload")
    _check_sid(stream_sid)
    payload = _b2a(ulaw, newline=False).decode("ascii")
    return _dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}).decode()


def mark_message(stream_sid: str, name: str) -> str:
    """``{"event":"mark","streamSid":…,"mark":{"name":…}}``: echoed once the audio before it played."""
    _check_sid(stream_sid)
    if type(name) is not str:
        raise TypeError(f"mark name must be str, got {type(name).__name__}")
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear_message(stream_sid: str) -> str:
    """``{"event":"clear","streamSid":…}``: Twilio drops its buffered audio and echoes every pending mark."""
    _check_sid(stream_sid)
    return _dumps({"event": "clear", "streamSid": stream_sid}).decode()


# ----------------------------------------------------------------------------------------------------
# Emulator side: what Twilio accepts, and what Twilio sends


def parse_outbound(data: str | bytes) -> OutboundMessage:
    """Parse a frame sent to Twilio, as strictly as Twilio does (for our Twilio caller emulator).

    Raises:
        TwilioProtocolError: ``binary_frame`` for any bytes (Twilio rejects binary frames),
            ``unknown_event`` for anything but ``media``/``mark``/``clear``, or a field error; an empty
            payload is ``bad_field``.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        _fail("binary_frame", f"Twilio accepts text frames only, got a binary frame of {len(data)} bytes")
    msg = _load_object(data)
    event = msg.get("event", _MISSING)
    if event is _MISSING:
        _fail("missing_field", "event is missing")
    if type(event) is not str:
        _fail("bad_field", f"event: expected a string, got {short_repr(event)}")
    if event not in ("media", "mark", "clear"):
        _fail("unknown_event", f"event {short_repr(event)} is not one Twilio accepts")
    stream_sid = _stream_sid(msg)
    if event == "media":
        payload = _str(_object(msg, "media", "media"), "payload", "media.payload")
        if not payload:
            _fail("bad_field", "media.payload is empty")
        return PlayMedia(stream_sid, _decode_b64(payload, "media.payload"))
    if event == "mark":
        return PlayMark(stream_sid, _str(_object(msg, "mark", "mark"), "name", "mark.name"))
    return ClearAudio(stream_sid)


def _num(value: int, what: str) -> str:
    """Twilio sends its numbers as strings."""
    if type(value) is not int:
        raise TypeError(f"{what} must be int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return str(value)


def connected_message() -> str:
    """What Twilio sends first on every stream."""
    return '{"event":"connected","protocol":"Call","version":"1.0.0"}'


def start_message(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    custom_parameters: Mapping[str, str],
    sequence_number: int = 1,
    tracks: Sequence[str] = ("inbound",),
) -> str:
    """Twilio's ``start`` message, field for field (μ-law 8 kHz mono, numbers as strings)."""
    _check_sid(stream_sid)
    params = dict(custom_parameters)
    for name, value in params.items():
        if type(name) is not str or type(value) is not str:
            raise TypeError(
                f"custom parameters must map str to str, got a {type(value).__name__} for {name!r}"
            )
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": _num(sequence_number, "sequence_number"),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": list(tracks),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params,
            },
            "streamSid": stream_sid,
        }
    ).decode()


def media_event_message(
    *, stream_sid: str, payload: bytes, chunk: int, timestamp_ms: int, sequence_number: int
) -> str:
    """Twilio's inbound ``media`` message: caller audio (raw μ-law 8 kHz, not empty).

    Raises:
        ValueError: ``payload`` is empty (Twilio never sends that).
    """
    if not payload:
        raise ValueError("Twilio never sends an empty media payload")
    _check_sid(stream_sid)
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": _num(sequence_number, "sequence_number"),
            "media": {
                "track": "inbound",
                "chunk": _num(chunk, "chunk"),
                "timestamp": _num(timestamp_ms, "timestamp_ms"),
                "payload": _b2a(payload, newline=False).decode("ascii"),
            },
            "streamSid": stream_sid,
        }
    ).decode()


def mark_event_message(*, stream_sid: str, name: str, sequence_number: int) -> str:
    """Twilio's echo of a mark: the audio before it has played (or was cleared)."""
    _check_sid(stream_sid)
    return _dumps(
        {
            "event": "mark",
            "sequenceNumber": _num(sequence_number, "sequence_number"),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    ).decode()


def dtmf_message(*, stream_sid: str, digit: str, sequence_number: int) -> str:
    """Twilio's ``dtmf`` message: the caller pressed ``digit``."""
    _check_sid(stream_sid)
    return _dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": _num(sequence_number, "sequence_number"),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    ).decode()


def stop_message(*, stream_sid: str, call_sid: str, account_sid: str, sequence_number: int) -> str:
    """Twilio's ``stop`` message: the call is over."""
    _check_sid(stream_sid)
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": _num(sequence_number, "sequence_number"),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    ).decode()
