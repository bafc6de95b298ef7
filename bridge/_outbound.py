"""Outbound calls: ``POST /calls``, ``GET /calls/<sid>``, call-status tracking and the hang-up hook.

Theory of operation
-------------------
Placing a call (:meth:`OutboundCalls.place`, and the ``call`` command through :func:`prepare_call`): the
request is validated (:func:`parse_call_request`: E.164 numbers, the Speakr settings through
``_speakr.validate_field``, a small ``metadata`` object), then turned into TwiML that connects the call to
our own Media Stream exactly as the voice webhook would, with the per-call settings as ``<Parameter>``s
(the call runner already maps those onto that call's Speakr ``start``), and sent *inline* (``Twiml``) to
Twilio's Calls resource, with ``StatusCallback`` = ``PUBLIC_URL/twilio/status`` for every call-progress event.

Inline TwiML saves Twilio a webhook round trip when the callee answers, and needs no state shared between
the process that places the call (a server worker, or the ``call`` command) and the one that serves its
stream. Its limit is Twilio's 4,000 characters, which bounds ``system_prompt`` (a request that does not fit
is refused with 422, naming the field and the overflow).

Stream tokens: every stream must show a ``bridge_token`` (see ``_tokens.py``), normally an HMAC of the
CallSid issued by the signed voice webhook. Before the call exists there is no CallSid, so an outbound call's
token is issued for ``outbound:<nonce>``, a random 128-bit nonce that travels beside it as
``<Parameter name="bridge_nonce">``; :func:`token_subject` tells the redeeming side which subject to check.
The token is still single-use and expires (TTL + :data:`OUTBOUND_SETUP_ALLOWANCE_S`, for Twilio's queue and
the ringing); forging one still needs the auth token.

Tracking: placed calls live in a bounded registry (most recent :data:`REGISTRY_MAX_CALLS`), updated by the
status callbacks Twilio posts (:meth:`OutboundCalls.record_status`, called from the signed
``/twilio/status`` route). A callback for an ``outbound-api`` call we did not place in this process (placed
by the ``call`` command, or by another worker) starts a record of its own, so ``GET /calls/<sid>`` knows it
from then on. Durations use our receive times (milliseconds; Twilio's ``Timestamp`` has whole seconds only
and is kept beside them), and ``CallDuration`` from Twilio's final callback.

Hanging up: :meth:`OutboundCalls.hangup` is the call runner's hook after the agent's ``end`` has played
out; it completes the call through the REST API so that Twilio does not go on to the TwiML after
``</Connect>`` (the apology meant for failures). A call that already ended is not an error.

Sharing: the HTTP routes keep every record in the app's store (``_store.py``: a base set once, then an
append-only list of status and hang-up events, replayed by :meth:`_TrackedCall.replay`), so a callback may
land on any worker or host and ``GET /calls/<sid>`` gives the same answer from each. The synchronous
:meth:`OutboundCalls.record_status` and :meth:`OutboundCalls.view` keep a process-local registry for callers
without a store.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from prometheus_client import Counter
from quart import Blueprint, Response, request

from bridge._config import Config
from bridge._errors import ConfigError, short_repr
from bridge._metrics import Metrics
from bridge._store import MemoryStore, Store, StoreUnavailable
from bridge._tokens import CallTokens
from bridge._twilio_rest import STATUS_CALLBACK_EVENTS, TwilioRest, TwilioRestError
from bridge._twiml import connect_twiml, stream_url
from bridge.agents import AGENTS
from bridge.agents.speakr._wire import WIRE_FIELDS, validate_field

__all__ = [
    "NONCE_PARAMETER",
    "REGISTRY_MAX_CALLS",
    "TWIML_MAX_CHARS",
    "CallRequest",
    "CallRequestError",
    "OutboundCalls",
    "PreparedCall",
    "parse_call_request",
    "call_request_from_params",
    "prepare_call",
    "token_subject",
]

logger = logging.getLogger("bridge.outbound")

#: Twilio refuses inline ``Twiml`` longer than this (error 32018).
TWIML_MAX_CHARS: Final = 4000
#: ``POST /calls`` bodies past this are refused (413): a maximal prompt in UTF-8 plus metadata fits easily.
BODY_MAX_BYTES: Final = 64 * 1024
#: ``metadata`` is for the caller's own references (a CRM id, a campaign): small, kept in memory per call.
METADATA_MAX_BYTES: Final = 2048
#: Calls remembered for ``GET /calls/<sid>``; the oldest is forgotten first.
REGISTRY_MAX_CALLS: Final = 10_000
#: Status events kept per call (Twilio sends at most a handful; retries and strays must not grow it).
HISTORY_MAX_EVENTS: Final = 32
#: Extra lifetime of an outbound stream token: Twilio's outbound queue plus up to a minute of ringing.
OUTBOUND_SETUP_ALLOWANCE_S: Final = 600.0
#: Bound on the hang-up request, inside whatever bound the call runner sets.
HANGUP_TIMEOUT_S: Final = 5.0
NONCE_PARAMETER: Final = "bridge_nonce"
STATUS_CALLBACK_PATH: Final = "/twilio/status"
AMD_CALLBACK_PATH: Final = "/twilio/amd"

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_NONCE = re.compile(r"[0-9a-f]{32}")
# Characters XML 1.0 cannot carry at all: a prompt holding one would make Twilio reject the TwiML.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_NUMERIC_FIELDS: Final = frozenset({"temperature", "threshold", "silenceDuration", "prefixPadding"})
#: Per-call settings, sent to the call as stream parameters: the start-message fields, the backend that
#: answers (``agent``) and what it should achieve (``goal``, added to its instructions).
CALL_FIELDS: Final = (
    *WIRE_FIELDS, "agent", "goal", "greeting", "idle_checkin_s", "idle_hangup_s", "max_call_s"
)
#: The cascade's per-call limits, in seconds (0: off), over its ``CASCADE_*`` defaults.
_SECONDS_FIELDS: Final = {"idle_checkin_s": 600.0, "idle_hangup_s": 600.0, "max_call_s": 4 * 3600.0}
REQUEST_FIELDS: Final = ("to", "from", *CALL_FIELDS, "metadata", "machine_detection", "voicemail_message")
#: A goal is a sentence or a short paragraph: it goes into the agent's instructions.
GOAL_MAX_CHARS: Final = 2000
#: ``machine_detection`` values: what to do when a machine answers (see ``_amd.py``).
AMD_ACTIONS: Final = ("hangup", "voicemail")
#: A voicemail message is spoken by Twilio's <Say>: keep it to a minute or so of speech.
VOICEMAIL_MAX_CHARS: Final = 1000
#: Stream parameter that tells the call runner to hold the agent until the AMD result.
AMD_PARAMETER: Final = "bridge_amd"
_TERMINAL: Final = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_RANK: Final = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3, **{s: 4 for s in _TERMINAL}}
_MAX_FORM_TEXT: Final = 64


class CallRequestError(ValueError):
    """A call request we cannot place; ``field`` names the culprit (None: the request as a whole)."""

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message

    def as_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A validated request for an outbound call.

    Attributes:
        to, from_: E.164 numbers; ``from_`` None means ``TWILIO_FROM_NUMBER``.
        settings: start-message overrides by wire name (``voice_id``, ``silenceDuration``, ...), validated and
            typed.
        metadata: the caller's own small JSON object, kept with the call and never sent to Twilio.
    """

    to: str
    from_: str | None = None
    settings: Mapping[str, float | int | str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Answering-machine detection: None (off), "hangup" or "voicemail" (say ``voicemail_message``).
    machine_detection: str | None = None
    voicemail_message: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """What goes to Twilio's Calls resource for one call (the TwiML holds a stream token: do not log it)."""

    to: str
    from_: str
    twiml: str = field(repr=False)
    status_callback: str
    #: Extra Calls-resource fields (answering-machine detection).
    extra: Mapping[str, str] = field(default_factory=dict)


# --- validation ------------------------------------------------------------------------------------


def _phone(name: str, value: object) -> str:
    if type(value) is not str or not _E164.fullmatch(value):
        raise CallRequestError(
            name, f"{name} must be an E.164 number such as +14155550100, got {short_repr(value)}"
        )
    return value


def _setting(wire: str, value: object, *, json_types: bool) -> float | int | str:
    if wire == "agent":
        if type(value) is not str or value.strip().lower() not in AGENTS:
            raise CallRequestError(wire, f"agent must be one of {', '.join(AGENTS)}, got {short_repr(value)}")
        return value.strip().lower()
    if wire in _SECONDS_FIELDS:
        limit = _SECONDS_FIELDS[wire]
        seconds: float | None = None
        if type(value) in (int, float) or (not json_types and type(value) is str):
            try:
                seconds = float(value)  # type: ignore[arg-type]
            except ValueError:
                seconds = None
        if seconds is None or not 0 <= seconds <= limit:
            raise CallRequestError(wire, f"{wire} must be a number of seconds from 0 to {limit:g}")
        return seconds
    if wire == "greeting":
        if type(value) is not str or not value.strip() or len(value) > GOAL_MAX_CHARS:
            raise CallRequestError(wire, f"greeting must be text of 1 to {GOAL_MAX_CHARS} characters")
        if _XML_ILLEGAL.search(value):
            raise CallRequestError(wire, "greeting contains control characters that cannot travel in TwiML")
        return value
    if wire == "goal":
        if type(value) is not str or not value.strip() or len(value) > GOAL_MAX_CHARS:
            raise CallRequestError(wire, f"goal must be text of 1 to {GOAL_MAX_CHARS} characters")
        if _XML_ILLEGAL.search(value):
            raise CallRequestError(wire, "goal contains control characters that cannot travel in TwiML")
        return value
    if json_types:
        numeric = type(value) is int or type(value) is float
        if wire in _NUMERIC_FIELDS and not numeric:
            raise CallRequestError(wire, f"{wire} must be a JSON number, got {short_repr(value)}")
        if wire not in _NUMERIC_FIELDS and type(value) is not str:
            raise CallRequestError(wire, f"{wire} must be a string, got {short_repr(value)}")
    try:
        checked = validate_field(wire, value)
    except ValueError as exc:
        raise CallRequestError(wire, str(exc)) from None
    if isinstance(checked, str) and _XML_ILLEGAL.search(checked):
        raise CallRequestError(wire, f"{wire} contains control characters that cannot travel in TwiML")
    return checked


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CallRequestError("metadata", f"metadata must be a JSON object, got {short_repr(value)}")
    size = len(orjson.dumps(value))
    if size > METADATA_MAX_BYTES:
        raise CallRequestError(
            "metadata", f"metadata must be at most {METADATA_MAX_BYTES} bytes as JSON, got {size}"
        )
    return value


def parse_call_request(body: object) -> CallRequest:
    """Validate a ``POST /calls`` JSON body: strict JSON types, unknown fields refused.

    Raises:
        CallRequestError: the first problem found, with the field it concerns.
    """
    if not isinstance(body, dict):
        raise CallRequestError(None, "the body must be a JSON object")
    unknown = [key for key in body if key not in REQUEST_FIELDS]
    if unknown:
        name = unknown[0][:_MAX_FORM_TEXT]
        raise CallRequestError(
            name, f"unknown field {short_repr(name)}; known fields: {', '.join(REQUEST_FIELDS)}"
        )
    if "to" not in body:
        raise CallRequestError("to", "to is required")
    to = _phone("to", body["to"])
    from_ = None if body.get("from") is None else _phone("from", body["from"])
    settings = {wire: _setting(wire, body[wire], json_types=True) for wire in CALL_FIELDS if wire in body}
    amd = body.get("machine_detection")
    if amd is not None and amd not in AMD_ACTIONS:
        choices = ", ".join(AMD_ACTIONS)
        raise CallRequestError(
            "machine_detection", f"machine_detection must be one of {choices}, got {short_repr(amd)}"
        )
    message = body.get("voicemail_message")
    if message is not None:
        if type(message) is not str or not message.strip() or len(message) > VOICEMAIL_MAX_CHARS:
            raise CallRequestError(
                "voicemail_message",
                f"voicemail_message must be text of 1 to {VOICEMAIL_MAX_CHARS} characters",
            )
        if _XML_ILLEGAL.search(message):
            raise CallRequestError("voicemail_message", "voicemail_message contains control characters")
    if amd == "voicemail" and message is None:
        raise CallRequestError("voicemail_message", "machine_detection voicemail needs a voicemail_message")
    if message is not None and amd != "voicemail":
        raise CallRequestError(
            "voicemail_message", 'voicemail_message needs "machine_detection": "voicemail"'
        )
    return CallRequest(to, from_, settings, _metadata(body.get("metadata")), amd, message)


def call_request_from_params(number: str, params: Sequence[str]) -> CallRequest:
    """Validate the ``call NUMBER [--param k=v ...]`` command's arguments (values are text, as typed).

    ``k`` is a start-message field (``voice_id``, ``system_prompt``, ``temperature``, ``threshold``,
    ``silenceDuration``, ``prefixPadding``), ``agent``, ``goal`` or ``from``.

    Raises:
        CallRequestError: a malformed, unknown or repeated parameter, or an invalid value.
    """
    raw: dict[str, str] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CallRequestError(None, f"--param takes NAME=VALUE, got {short_repr(item)}")
        if key != "from" and key not in CALL_FIELDS:
            known = ", ".join(("from", *CALL_FIELDS))
            raise CallRequestError(
                key[:_MAX_FORM_TEXT], f"unknown parameter {short_repr(key)}; known: {known}"
            )
        if key in raw:
            raise CallRequestError(key, f"{key} is given twice")
        raw[key] = value
    to = _phone("to", number)
    from_ = _phone("from", raw.pop("from")) if "from" in raw else None
    settings = {wire: _setting(wire, value, json_types=False) for wire, value in raw.items()}
    return CallRequest(to, from_, settings)


# --- TwiML and tokens ----------------------------------------------------------------------------------


def _outbound_subject(nonce: str) -> str:
    return f"outbound:{nonce}"


def token_subject(call_sid: str, custom_parameters: Mapping[str, str]) -> str:
    """What a stream's ``bridge_token`` must have been issued for.

    The CallSid for calls answered through the voice webhook; ``outbound:<nonce>`` for calls we placed
    with inline TwiML (the nonce travels as ``<Parameter name="bridge_nonce">``). A nonce does not weaken
    the check: the token's HMAC covers the subject, so a stream cannot pick a subject it holds no token for.
    """
    nonce = custom_parameters.get(NONCE_PARAMETER)
    if isinstance(nonce, str) and _NONCE.fullmatch(nonce):
        return _outbound_subject(nonce)
    return call_sid


def _parameter_text(value: float | int | str) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def check_configured(config: Config) -> None:
    """Raise :class:`ConfigError` naming the first setting outbound calls lack."""
    TwilioRest.from_config(config)
    if not config.public_url:
        raise ConfigError(
            "PUBLIC_URL",
            "PUBLIC_URL is not set: Twilio needs it to reach the stream and the status callbacks of a call",
        )


def prepare_call(config: Config, call: CallRequest, *, nonce: str | None = None) -> PreparedCall:
    """The Calls-resource request for ``call``: inline TwiML with the settings and a stream token.

    Raises:
        ConfigError: credentials, ``PUBLIC_URL`` or ``TWILIO_FROM_NUMBER`` are missing or malformed.
        CallRequestError: no caller ID at all, or the TwiML would exceed :data:`TWIML_MAX_CHARS`.
    """
    check_configured(config)
    assert config.public_url is not None
    from_ = call.from_ or config.twilio_from_number
    if not from_:
        raise CallRequestError(
            "from", "from is required: the request has none and TWILIO_FROM_NUMBER is not set"
        )
    if call.from_ is None and not _E164.fullmatch(from_):
        raise ConfigError(
            "TWILIO_FROM_NUMBER", f"TWILIO_FROM_NUMBER must be an E.164 number, got {short_repr(from_)}"
        )
    nonce = nonce or secrets.token_hex(16)
    tokens = CallTokens(
        config.twilio_auth_token.reveal(), config.bridge_token_ttl_s + OUTBOUND_SETUP_ALLOWANCE_S
    )
    parameters = {wire: _parameter_text(value) for wire, value in call.settings.items()}
    parameters[NONCE_PARAMETER] = nonce
    extra: dict[str, str] = {}
    if call.machine_detection is not None:
        parameters[AMD_PARAMETER] = "1"
        # Twilio's asynchronous AMD: the call connects to the stream at once, the result is posted later.
        # DetectMessageEnd waits for the greeting's end (the beep) so that a message lands after it.
        extra = {
            "MachineDetection": "DetectMessageEnd" if call.machine_detection == "voicemail" else "Enable",
            "AsyncAmd": "true",
            "AsyncAmdStatusCallback": config.public_url + AMD_CALLBACK_PATH,
            "AsyncAmdStatusCallbackMethod": "POST",
        }
    parameters[CallTokens.PARAMETER] = tokens.issue(_outbound_subject(nonce))
    twiml = connect_twiml(stream_url(config.public_url), parameters)
    if len(twiml) > TWIML_MAX_CHARS:
        over = len(twiml) - TWIML_MAX_CHARS
        culprit = "system_prompt" if "system_prompt" in call.settings else None
        raise CallRequestError(
            culprit,
            f"the call's TwiML would be {len(twiml)} characters and Twilio accepts at most "
            f"{TWIML_MAX_CHARS}: "
            f"shorten system_prompt by at least {over} characters (XML escapes such as &quot; count)",
        )
    return PreparedCall(call.to, from_, twiml, config.public_url + STATUS_CALLBACK_PATH, extra)


# --- the registry ---------------------------------------------------------------------------------------


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _mask(number: str | None) -> str:
    """A phone number for a log line: enough to tell calls apart, not enough to dial."""
    if not number:
        return "-"
    return number[:3] + "…" + number[-4:] if len(number) > 8 else "…"


def _form_text(form: Mapping[str, str], name: str) -> str | None:
    value = form.get(name)
    return value[:_MAX_FORM_TEXT] if isinstance(value, str) and value else None


@dataclass(slots=True)
class _TrackedCall:
    sid: str
    to: str | None
    from_: str | None
    created_at: float
    source: str  # "api": placed by this process; "status_callback": first seen in a callback
    settings: dict[str, float | int | str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "queued"
    history: list[dict[str, Any]] = field(default_factory=list)
    first_at: dict[str, float] = field(default_factory=dict)
    seen: set[tuple[str, str | None]] = field(default_factory=set)
    call_duration_s: int | None = None
    hangup: dict[str, Any] | None = None
    direction: str = "outbound"
    #: What the call runner observed (``_records.py``), once its stream has ended.
    call: dict[str, Any] | None = None
    transfer: dict[str, Any] | None = None
    answered_by: dict[str, Any] | None = None
    #: Answering-machine detection asked for: {"on_machine", "voicemail_message"} (set once, in the base).
    amd: dict[str, Any] | None = None

    def add_event(self, status: str, at: float, timestamp: str | None, sequence: str | None) -> bool:
        """Record one status; False for a duplicate (Twilio retries) or past the history bound."""
        if (status, sequence) in self.seen or len(self.history) >= HISTORY_MAX_EVENTS:
            return False
        self.seen.add((status, sequence))
        self.history.append(
            {"status": status, "at": _iso(at), "twilio_timestamp": timestamp, "sequence": sequence}
        )
        self.first_at.setdefault(status, at)
        # Callbacks may arrive out of order: the furthest state wins, and the first end state sticks.
        if self.status not in _TERMINAL and _RANK[status] >= _RANK.get(self.status, 0):
            self.status = status
        return True

    def durations(self) -> dict[str, float | int | None]:
        first = self.first_at
        end = min((first[s] for s in _TERMINAL if s in first), default=None)
        dialing = first.get("ringing", first.get("initiated"))
        answered = first.get("in-progress")

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(max(0.0, b - a), 3)

        return {
            "queue_s": span(self.created_at, first.get("initiated")) if self.source == "api" else None,
            "ring_s": span(dialing, answered if answered is not None else end),
            "talk_s": span(answered, end),
            "total_s": span(self.created_at, end) if self.source == "api" else None,
            "call_duration_s": self.call_duration_s,
        }

    def base(self) -> dict[str, Any]:
        """What is set once, as stored."""
        return {
            "sid": self.sid, "to": self.to, "from": self.from_, "created_at": self.created_at,
            "source": self.source, "settings": dict(self.settings), "metadata": dict(self.metadata),
            "direction": self.direction, "amd": self.amd,
        }

    @classmethod
    def replay(cls, base: dict[str, Any], events: list[dict[str, Any]]) -> _TrackedCall:
        """A call rebuilt from its stored base and events, as :meth:`add_event` would have built it."""
        tracked = cls(
            str(base["sid"]), base.get("to"), base.get("from"), float(base["created_at"]),
            str(base["source"]),
            dict(base.get("settings") or {}), dict(base.get("metadata") or {}),
        )
        tracked.direction = str(base.get("direction") or "outbound")
        tracked.amd = base.get("amd")
        for event in events:
            tracked.apply(event)
        return tracked

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one stored event; True when it changed the record."""
        kind = event.get("kind")
        if kind == "hangup":
            self.hangup = event.get("hangup")
            return True
        if kind == "call":
            self.call = event
            return True
        if kind == "transfer":
            self.transfer = event.get("transfer")
            return True
        if kind == "amd":
            self.answered_by = event.get("amd")
            return True
        status = event.get("status")
        if status not in _RANK:
            return False
        if not self.add_event(status, float(event["at"]), event.get("timestamp"), event.get("sequence")):
            return False
        duration = event.get("duration")
        if status in _TERMINAL and isinstance(duration, int):
            self.call_duration_s = duration
        return True

    def view(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "created_at": _iso(self.created_at),
            "source": self.source,
            "status": self.status,
            "end_status": self.status if self.status in _TERMINAL else None,
            "settings": dict(self.settings),
            "metadata": self.metadata,
            "history": list(self.history),
            "durations": self.durations(),
            "hangup": self.hangup,
            **self.call_view(),
        }

    def call_view(self) -> dict[str, Any]:
        """What the call runner observed (empty fields until the stream has ended)."""
        call = self.call or {}
        reason = call.get("end_reason")
        if self.transfer is not None and self.transfer.get("outcome") == "transferred":
            reason = "transferred"
        elif self.hangup is not None and self.hangup.get("by") == "api" and reason is not None:
            reason = "hung_up_by_api"
        return {
            "direction": self.direction,
            "agent": call.get("agent", self.settings.get("agent")),
            "live": self.call is None and self.status not in _TERMINAL,
            "started_at": call.get("started_at"),
            "ended_at": call.get("ended_at"),
            "duration_s": call.get("duration_s"),
            "end_reason": reason,
            "barge_ins": call.get("barge_ins", {}),
            "played_ms": call.get("played_ms"),
            "cleared_ms": call.get("cleared_ms"),
            "agent_ready_ms": call.get("agent_ready_ms"),
            "agent_held_ms": call.get("agent_held_ms"),
            "latency_ms": call.get("latency_ms", []),
            "transcript": call.get("transcript", []),
            "dtmf": "".join(d.get("digit", "") for d in call.get("dtmf", [])),
            "dtmf_events": call.get("dtmf", []),
            "outcome": call.get("outcome"),
            "machine_detection": self.amd,
            "answered_by": self.answered_by,
            "transfer": self.transfer,
            "recording": call.get("recording"),
        }


def _json(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status=status, mimetype="application/json", headers=dict(headers or {})
    )


def _same_secret(given: str, expected: str) -> bool:
    # Digests first, so the comparison's time depends on neither value nor length.
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


class OutboundCalls:
    """Outbound calls for one app: the API blueprint, the registry, status callbacks, the hang-up hook.

    Args:
        config: the app's configuration (credentials, ``PUBLIC_URL``, ``BRIDGE_API_TOKEN``).
        metrics: the app's metrics; the outbound counters are added to its registry.
        max_calls: how many calls the registry remembers.
    """

    def __init__(self, config: Config, metrics: Metrics, *, max_calls: int = REGISTRY_MAX_CALLS) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls!r}")
        self.config = config
        self.max_calls = max_calls
        self._calls: OrderedDict[str, _TrackedCall] = OrderedDict()
        #: Where the HTTP routes keep records; the app replaces it with the server's store.
        self.store: Store = MemoryStore()
        self._rest: TwilioRest | None = None
        try:
            self._rest = TwilioRest.from_config(config)
        except ConfigError:
            pass  # outbound calls answer 503 and the hang-up hook does nothing; inbound calls are unaffected
        r = metrics.registry
        self.placed = Counter(
            "bridge_outbound_calls", "POST /calls requests, by outcome", ["outcome"], registry=r
        )
        self.ends = Counter(
            "bridge_outbound_call_ends", "Outbound calls ended, by final status", ["status"], registry=r
        )
        self.hangups = Counter(
            "bridge_outbound_hangups",
            "REST hang-ups after the agent's end, by outcome",
            ["outcome"],
            registry=r,
        )

    def __repr__(self) -> str:
        return f"OutboundCalls(calls={len(self._calls)}, rest={self._rest!r})"

    @property
    def rest_configured(self) -> bool:
        """True when the REST API can be used (account SID and auth token set)."""
        return self._rest is not None

    # --- placing calls ------------------------------------------------------------------------------

    async def place(self, call: CallRequest) -> dict[str, Any]:
        """Place ``call`` through Twilio and remember it; returns its record (as ``GET /calls/<sid>``).

        Raises:
            ConfigError: not configured for outbound calls (the message names the variable).
            CallRequestError: the request cannot be placed as it is (e.g. TwiML too long).
            TwilioRestError: Twilio refused the call or could not be reached.
        """
        prepared = prepare_call(self.config, call)
        assert self._rest is not None  # prepare_call checked the credentials
        info = await self._rest.create_call(
            to=prepared.to,
            from_=prepared.from_,
            twiml=prepared.twiml,
            status_callback=prepared.status_callback,
            status_callback_events=STATUS_CALLBACK_EVENTS,
            extra=prepared.extra,
        )
        now = time.time()
        tracked = _TrackedCall(
            info.sid, prepared.to, prepared.from_, now, "api", dict(call.settings), dict(call.metadata)
        )
        if call.machine_detection is not None:
            tracked.amd = {"on_machine": call.machine_detection, "voicemail_message": call.voicemail_message}
        first = {"status": info.status if info.status in _RANK else "queued", "at": now}
        tracked.apply(first)
        self._remember(tracked)
        try:
            await self.store.record_create(tracked.sid, tracked.base())
            await self.store.record_event(tracked.sid, first)
        except StoreUnavailable as exc:  # the call is placed: say so, and log that its record is not shared
            logger.error("[%s] call record not stored: %s", info.sid, exc)
        logger.info(
            "[%s] outbound call placed to %s (%s), settings: %s",
            info.sid,
            _mask(prepared.to),
            info.status,
            ", ".join(call.settings) or "defaults",
        )
        return tracked.view()

    def _remember(self, tracked: _TrackedCall) -> None:
        self._calls[tracked.sid] = tracked
        self._calls.move_to_end(tracked.sid)
        while len(self._calls) > self.max_calls:
            self._calls.popitem(last=False)

    def view(self, call_sid: str) -> dict[str, Any] | None:
        """What we know of a call, or None when it is not (or no longer) in the registry."""
        tracked = self._calls.get(call_sid)
        return None if tracked is None else tracked.view()

    async def shared_view(self, call_sid: str) -> dict[str, Any] | None:
        """What the store knows of a call (any worker or host wrote it), or None.

        Raises:
            StoreUnavailable: the store did not answer.
        """
        found = await self.store.record_get(call_sid)
        return None if found is None else _TrackedCall.replay(*found).view()

    async def record_status_shared(self, form: Mapping[str, str]) -> None:
        """:meth:`record_status` against the store: what every worker and host sees.

        Raises:
            StoreUnavailable: the store did not answer (the route answers 503: Twilio retries).
        """
        if form.get("StreamEvent"):
            return
        sid = form.get("CallSid", "")
        status = form.get("CallStatus", "")
        status = "in-progress" if status == "answered" else status
        if not _CALL_SID.fullmatch(sid) or status not in _RANK:
            logger.warning(
                "status callback ignored: CallSid %s, CallStatus %s", short_repr(sid), short_repr(status)
            )
            return
        now = time.time()
        found = await self.store.record_get(sid)
        if found is None:
            if form.get("Direction") != "outbound-api":
                return
            tracked = _TrackedCall(
                sid, _form_text(form, "To"), _form_text(form, "From"), now, "status_callback"
            )
            await self.store.record_create(sid, tracked.base())
            found = await self.store.record_get(sid)  # another worker may have created it first
            if found is None:
                return
        tracked = _TrackedCall.replay(*found)
        was_terminal = tracked.status in _TERMINAL
        duration = form.get("CallDuration")
        whole = isinstance(duration, str) and duration.isdigit() and len(duration) < 9
        event: dict[str, Any] = {
            "status": status, "at": now, "timestamp": _form_text(form, "Timestamp"),
            "sequence": _form_text(form, "SequenceNumber"),
            "duration": int(duration) if whole and isinstance(duration, str) else None,
        }
        if not tracked.apply(event):
            return  # a duplicate (Twilio retries) or past the history bound
        await self.store.record_event(sid, event)
        logger.info("[%s] outbound call status: %s", sid, status)
        if not was_terminal and tracked.status in _TERMINAL:
            self.ends.labels(tracked.status).inc()

    # --- status callbacks ---------------------------------------------------------------------------

    def record_status(self, form: Mapping[str, str]) -> None:
        """Record one call-progress callback (the route has checked its signature).

        Stream events (``StreamEvent``) and callbacks about calls that are neither ours nor ``outbound-api``
        are ignored; so are malformed ones (logged).
        """
        if form.get("StreamEvent"):
            return
        sid = form.get("CallSid", "")
        status = form.get("CallStatus", "")
        status = "in-progress" if status == "answered" else status
        if not _CALL_SID.fullmatch(sid) or status not in _RANK:
            logger.warning(
                "status callback ignored: CallSid %s, CallStatus %s", short_repr(sid), short_repr(status)
            )
            return
        tracked = self._calls.get(sid)
        if tracked is None:
            if form.get("Direction") != "outbound-api":
                return
            tracked = _TrackedCall(
                sid, _form_text(form, "To"), _form_text(form, "From"), time.time(), "status_callback"
            )
            self._remember(tracked)
        was_terminal = tracked.status in _TERMINAL
        if not tracked.add_event(
            status, time.time(), _form_text(form, "Timestamp"), _form_text(form, "SequenceNumber")
        ):
            return
        duration = form.get("CallDuration")
        if status in _TERMINAL and isinstance(duration, str) and duration.isdigit() and len(duration) < 9:
            tracked.call_duration_s = int(duration)
        logger.info("[%s] outbound call status: %s", sid, status)
        if not was_terminal and tracked.status in _TERMINAL:
            self.ends.labels(tracked.status).inc()

    # --- hanging up ---------------------------------------------------------------------------------

    async def hangup(self, call_sid: str) -> None:
        """The call runner's hook after ``end`` has played out: complete the call through the REST API.

        Works for any call the account owns (an inbound call is spared the fallback ``<Say>`` too). Never
        raises for a REST failure or a call that already ended: it logs and counts
        (``bridge_outbound_hangups_total{outcome}``). Does nothing without REST credentials.
        """
        if self._rest is None:
            self.hangups.labels("not_configured").inc()
            return
        outcome = await self._rest.complete_call(call_sid, timeout_s=HANGUP_TIMEOUT_S)
        self.hangups.labels(outcome).inc()
        hangup = {"at": _iso(time.time()), "outcome": outcome}
        tracked = self._calls.get(call_sid)
        if tracked is not None:
            tracked.hangup = hangup
        try:
            if await self.store.record_get(call_sid) is not None:
                await self.store.record_event(call_sid, {"kind": "hangup", "hangup": hangup})
        except StoreUnavailable as exc:
            logger.warning("[%s] hang-up not recorded: %s", call_sid, exc)

    # --- HTTP ---------------------------------------------------------------------------------------

    def blueprint(self) -> Blueprint:
        """``POST /calls`` and ``GET /calls/<sid>``, behind ``Authorization: Bearer BRIDGE_API_TOKEN``."""
        bp = Blueprint("outbound_calls", __name__)

        @bp.post("/calls")
        async def create_call() -> Response:
            return await self._create()

        @bp.get("/calls/<sid>")
        async def get_call(sid: str) -> Response:
            refusal = self._refusal()
            if refusal is not None:
                return refusal
            try:
                found = await self.shared_view(sid)
            except StoreUnavailable as exc:
                logger.warning("GET /calls/%s: %s", short_repr(sid), exc)
                return _json({"error": "the call store is unavailable, try again", "field": None}, 503)
            if found is None:
                return _json({"error": "no such call", "field": "sid"}, 404)
            return _json(found, 200)

        return bp

    def _refusal(self) -> Response | None:
        expected = self.config.bridge_api_token
        if not expected:
            return _json(
                {"error": "the calls API is disabled: BRIDGE_API_TOKEN is not set", "field": None}, 503
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _same_secret(given.strip(), expected.reveal()):
            return _json(
                {"error": "missing or invalid bearer token", "field": None},
                401,
                {"WWW-Authenticate": 'Bearer realm="speakr-bridge"'},
            )
        return None

    async def _create(self) -> Response:
        refusal = self._refusal()
        if refusal is not None:
            self.placed.labels("disabled" if refusal.status_code == 503 else "unauthorized").inc()
            return refusal
        try:
            check_configured(self.config)
        except ConfigError as exc:
            self.placed.labels("not_configured").inc()
            logger.warning("POST /calls refused: %s", exc)
            return _json(
                {
                    "error": f"outbound calls are not configured: {exc}",
                    "field": None,
                    "variable": exc.variable,
                },
                503,
            )
        body = await _read_body(BODY_MAX_BYTES)
        if body is None:
            self.placed.labels("invalid").inc()
            return _json({"error": f"the body must be at most {BODY_MAX_BYTES} bytes", "field": None}, 413)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.placed.labels("invalid").inc()
            return _json({"error": "the body must be a JSON object", "field": None}, 400)
        try:
            record = await self.place(parse_call_request(payload))
        except CallRequestError as exc:
            self.placed.labels("invalid").inc()
            return _json(exc.as_json(), 422)
        except ConfigError as exc:
            self.placed.labels("not_configured").inc()
            return _json(
                {
                    "error": f"outbound calls are not configured: {exc}",
                    "field": None,
                    "variable": exc.variable,
                },
                503,
            )
        except TwilioRestError as exc:
            self.placed.labels("twilio_unreachable" if exc.unreachable else "twilio_error").inc()
            logger.warning("POST /calls: %s", exc)
            what = "could not reach Twilio" if exc.unreachable else "Twilio refused the call"
            return _json(
                {"error": f"{what}: {exc.twilio_message}", "field": None, "twilio": exc.as_json()}, 502
            )
        self.placed.labels("placed").inc()
        return _json(
            {"sid": record["sid"], "status": record["status"]}, 201, {"Location": f"/calls/{record['sid']}"}
        )


async def _read_body(limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)
