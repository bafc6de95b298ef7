"""Twilio's REST API (the Calls resource) on 127.0.0.1, and Twilio's side of the calls it places.

Theory of operation
-------------------
:class:`TwilioRestApi` is a small Quart-Trio app served by Hypercorn on loopback, speaking the documented
wire format of ``/2010-04-01/Accounts/{AccountSid}/Calls.json`` (create, form-encoded) and
``.../Calls/{CallSid}.json`` (update, fetch): HTTP basic auth ``AccountSid:AuthToken`` (401, code 20003,
otherwise), Twilio-shaped Call resources in JSON, and errors as
``{"code", "message", "more_info", "status"}``: 21201 (no ``To``), 21211 (``To`` not a phone number),
21213 (no ``From``), 21212 (``From`` not a phone number), 32018 (inline ``Twiml`` over 4,000
characters), 20404 (unknown call), 21220 (hanging up a call that is no longer in progress). Every request
is recorded (:class:`RecordedRequest`: method, path, every form field, the basic-auth user, the answer's
status) before it is answered.

With ``simulate`` on, each created call then lives the way Twilio runs it, in a task of the emulator's own
nursery: the status callbacks the request subscribed to (``StatusCallbackEvent``; with none, only the final
one) are POSTed to ``StatusCallback`` and signed with ``X-Twilio-Signature`` like Twilio's (``initiated``,
``ringing``, then ``in-progress`` on answer, then the end status with ``CallDuration``); on answer, the
TwiML's ``<Connect><Stream>`` is dialled by a :class:`~bridge.emulators.TwilioCaller` with the
``<Parameter>``s as ``customParameters`` and the created CallSid, so a whole outbound call runs end to end
on loopback. A ``To`` listed in ``outcomes`` ends as ``busy``, ``no-answer`` or ``failed`` instead,
without a stream.

Asynchronous answering-machine detection: a create with ``MachineDetection`` (``Enable`` or
``DetectMessageEnd``), ``AsyncAmd=true`` and ``AsyncAmdStatusCallback`` gets, ``amd_delay_s`` after the stream
answer, a signed POST to that callback with Twilio's fields (``AccountSid``, ``CallSid``, ``AnsweredBy``,
``MachineDetectionDuration`` in ms). ``AnsweredBy`` is ``answered_by[To]`` or ``human``; with ``Enable`` a
machine is reported as ``machine_start`` (Twilio does not wait for the greeting's end then). A ``Twiml``
update of a live call (a transfer's ``<Dial>``, a voicemail's ``<Say>``) is recorded in ``twiml_updates`` and
ends the stream as Twilio does (``stop``, close 1000); the call then completes.

Hang-up through the API (``Status=completed`` on a live call) ends the call as Twilio does: the resource is
``completed`` at once (a second hang-up gets 21220), and the stream is torn down after
:data:`HANGUP_GRACE_S` unless the bridge has closed it by then (the bridge closes it right after asking).
Approximation: Twilio would send ``stop`` on the stream; :class:`TwilioCaller` has no external hang-up, so a
stream still open after the grace is cancelled (its socket closed) instead.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import partial
from typing import Any, Final

import httpx
import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio
from twilio.request_validator import RequestValidator

from bridge._server import serve_in_process
from bridge.emulators._twilio_caller import CallRecord, TwilioCaller

__all__ = ["EmulatedCall", "RecordedRequest", "TwilioRestApi"]

log = logging.getLogger("bridge.emulators.rest")

API_PREFIX: Final = "/2010-04-01/Accounts"
TWIML_MAX_CHARS: Final = 4000
#: After a hang-up through the API, how long the bridge has to close the stream before we tear it down.
HANGUP_GRACE_S: Final = 1.0
CALLBACK_TIMEOUT_S: Final = 5.0
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_TERMINAL: Final = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_END_OUTCOMES: Final = frozenset({"busy", "no-answer", "failed"})


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _rfc2822(wall: datetime) -> str:
    return format_datetime(wall)  # "Tue, 31 Aug 2010 20:36:28 +0000", as Twilio writes dates


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the emulator received.

    Attributes:
        method, path: as sent (the path without a query).
        form: every form field, repeated ones (``StatusCallbackEvent``) in the order sent.
        auth_user: the basic-auth user name (the account SID), None without basic auth. The password is
            never recorded.
        authenticated: whether the credentials were the emulator's.
        status: the HTTP status the emulator answered.
    """

    method: str
    path: str
    form: dict[str, list[str]]
    auth_user: str | None
    authenticated: bool
    status: int

    def field(self, name: str) -> str | None:
        """The first value of a form field, or None."""
        values = self.form.get(name)
        return values[0] if values else None


@dataclass(slots=True)
class EmulatedCall:
    """A call created through the emulator, as Twilio tracks it.

    Attributes:
        status: the Call resource's status (``queued``, ``ringing``, ``in-progress``, then an end status).
        callbacks: ``(CallStatus posted, HTTP status answered or None when the POST failed)`` in order.
        record: the emulated callee's :class:`CallRecord` once its stream has ended.
        completed_by_api: a ``Status=completed`` update ended it.
        ended: set once the call is over and its last callback was posted.
    """

    sid: str
    to: str
    from_: str
    twiml: str | None
    status_callback: str | None
    events: tuple[str, ...]
    created: datetime
    status: str = "queued"
    start: datetime | None = None
    end: datetime | None = None
    callbacks: list[tuple[str, int | None]] = field(default_factory=list)
    record: CallRecord | None = None
    completed_by_api: bool = False
    error: str | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    hangup: trio.Event = field(default_factory=trio.Event)
    #: TwiML given by ``Twiml`` updates of the live call, in order (e.g. a ``<Dial>`` transfer).
    twiml_updates: list[str] = field(default_factory=list)
    caller: TwilioCaller | None = None
    #: The create's ``MachineDetection`` and ``AsyncAmdStatusCallback`` (async AMD), when asked for.
    machine_detection: str | None = None
    amd_callback: str | None = None
    #: ``(AnsweredBy, HTTP status answered or None)`` and ``trio.current_time()`` just before that POST.
    amd_posted: tuple[str, int | None] | None = None
    amd_posted_at: float | None = None

    @property
    def duration_s(self) -> int | None:
        if self.start is None or self.end is None:
            return None
        return int((self.end - self.start).total_seconds())


class TwilioRestApi:
    """A stand-in for Twilio's REST API on loopback; see the module docstring.

    Args:
        account_sid, auth_token: the credentials it accepts (random ones by default).
        simulate: run each created call (status callbacks, then the stream) as Twilio would.
        ring_s: time between ``ringing`` and the answer (or the end status of an unanswered call).
        outcomes: ``To`` number -> ``"busy"``, ``"no-answer"`` or ``"failed"``; others are answered.
        errors: ``To`` number -> ``(http_status, code, message)`` to refuse the create with.
        caller_audio, caller_speed, hangup_after_s, max_call_s: passed to each call's :class:`TwilioCaller`
            (``hangup_after_s`` None: the callee stays until the bridge or the API ends the call).
        response_delay_s: wait this long before answering any request (a slow Twilio).
    """

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        simulate: bool = True,
        ring_s: float = 0.05,
        outcomes: Mapping[str, str] | None = None,
        errors: Mapping[str, tuple[int, int, str]] | None = None,
        caller_audio: bytes = b"",
        caller_speed: float = 1.0,
        hangup_after_s: float | None = None,
        max_call_s: float = 60.0,
        response_delay_s: float = 0.0,
        host: str = "127.0.0.1",
        answered_by: Mapping[str, str] | None = None,
        amd_delay_s: float = 0.3,
    ) -> None:
        for to, outcome in (outcomes or {}).items():
            if outcome not in _END_OUTCOMES:
                raise ValueError(
                    f"outcome for {to!r} must be one of {sorted(_END_OUTCOMES)}, got {outcome!r}"
                )
        self.account_sid = account_sid or _sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.simulate = simulate
        self.ring_s = ring_s
        self.outcomes = dict(outcomes or {})
        self.errors = dict(errors or {})
        self.caller_audio = caller_audio
        self.caller_speed = caller_speed
        self.hangup_after_s = hangup_after_s
        self.max_call_s = max_call_s
        self.response_delay_s = response_delay_s
        self.host = host
        self.answered_by = dict(answered_by or {})
        self.amd_delay_s = amd_delay_s
        self.requests: list[RecordedRequest] = []
        self.calls: dict[str, EmulatedCall] = {}
        self._base_url: str | None = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return (
            f"TwilioRestApi(account_sid={self.account_sid!r}, base_url={self._base_url!r}, "
            f"calls={len(self.calls)})"
        )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``TWILIO_API_BASE_URL``."""
        if self._base_url is None:
            raise RuntimeError("the REST emulator is not serving yet")
        return self._base_url

    async def serve(self, *, task_status: trio.TaskStatus[TwilioRestApi] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; use ``await nursery.start(api.serve)``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._base_url = await nursery.start(partial(serve_in_process, self._app(), host=self.host))
            log.info("Twilio REST emulator listening on %s", self._base_url)
            task_status.started(self)

    async def wait_for_call(self, n: int = 1) -> EmulatedCall:
        """Wait until ``n`` calls were created; returns the ``n``-th (1-based)."""
        while len(self.calls) < n:
            await self._changed.wait()
        return list(self.calls.values())[n - 1]

    async def wait_status(self, call_sid: str, status: str) -> EmulatedCall:
        """Wait until the call's resource has ``status``."""
        while call_sid not in self.calls or self.calls[call_sid].status != status:
            await self._changed.wait()
        return self.calls[call_sid]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- HTTP ---------------------------------------------------------------------------------------

    def _app(self) -> QuartTrio:
        app = QuartTrio("twilio-rest-emulator")

        @app.post(f"{API_PREFIX}/<account>/Calls.json")
        async def create(account: str) -> Response:
            return await self._handle(account, None)

        @app.route(f"{API_PREFIX}/<account>/Calls/<call_sid>.json", methods=["GET", "POST"])
        async def update(account: str, call_sid: str) -> Response:
            return await self._handle(account, call_sid)

        return app

    async def _handle(self, account: str, call_sid: str | None) -> Response:
        form = await request.form
        fields = {key: form.getlist(key) for key in form}
        user, authenticated = self._check_auth(request.headers.get("Authorization", ""))
        if self.response_delay_s:
            await trio.sleep(self.response_delay_s)
        if not authenticated:
            response = _error(401, 20003, "Authenticate")
        elif account != self.account_sid:
            response = _error(404, 20404, f"The requested resource {request.path} was not found")
        elif call_sid is None:
            response = self._create(fields)
        elif call_sid not in self.calls:
            response = _error(404, 20404, f"The requested resource {request.path} was not found")
        elif request.method == "GET":
            response = _json(self._resource(self.calls[call_sid]), 200)
        else:
            response = self._update(self.calls[call_sid], fields)
        self.requests.append(
            RecordedRequest(request.method, request.path, fields, user, authenticated, response.status_code)
        )
        self._notify()
        return response

    def _check_auth(self, header: str) -> tuple[str | None, bool]:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        ok = hmac.compare_digest(user.encode(), self.account_sid.encode()) and hmac.compare_digest(
            password.encode(), self.auth_token.encode()
        )
        return user, ok

    def _create(self, fields: dict[str, list[str]]) -> Response:
        def one(name: str) -> str | None:
            values = fields.get(name)
            return values[0] if values else None

        to, from_, twiml, url = one("To"), one("From"), one("Twiml"), one("Url")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not _E164.fullmatch(to):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not _E164.fullmatch(from_):
            return _error(400, 21212, f"The 'From' number {from_} is not a valid phone number.")
        if twiml is None and url is None:
            return _error(400, 21205, "Url parameter is required.")
        if twiml is not None and len(twiml) > TWIML_MAX_CHARS:
            return _error(
                400, 32018, f"Twiml size exceeded maximum allowed value of {TWIML_MAX_CHARS} characters"
            )
        if to in self.errors:
            status, code, message = self.errors[to]
            return _error(status, code, message)
        events = tuple(fields.get("StatusCallbackEvent", [])) or ("completed",)
        call = EmulatedCall(_sid("CA"), to, from_, twiml, one("StatusCallback"), events, _now())
        if one("MachineDetection") in ("Enable", "DetectMessageEnd") and one("AsyncAmd") == "true":
            call.machine_detection = one("MachineDetection")
            call.amd_callback = one("AsyncAmdStatusCallback")
        self.calls[call.sid] = call
        if self.simulate and self._nursery is not None:
            self._nursery.start_soon(self._run_call, call)
        return _json(self._resource(call), 201)

    def _update(self, call: EmulatedCall, fields: dict[str, list[str]]) -> Response:
        status = (fields.get("Status") or [""])[0]
        twiml = next(iter(fields.get("Twiml") or []), None)
        if twiml is not None and not status:
            # Twilio redirects the live call to the new TwiML: the stream ends (``stop``, close 1000) and
            # the call runs the new instructions (a <Dial>: the callee talks to the dialled party).
            if call.status in _TERMINAL:
                return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
            if len(twiml) > TWIML_MAX_CHARS:
                return _error(
                    400, 32018, f"Twiml size exceeded maximum allowed value of {TWIML_MAX_CHARS} characters"
                )
            call.twiml_updates.append(twiml)
            if call.caller is not None:
                call.caller.stop_requested.set()
            self._notify()
            return _json(self._resource(call), 200)
        if status in ("completed", "canceled"):
            if call.status in _TERMINAL:
                return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
            call.completed_by_api = True
            call.status = "completed" if call.status == "in-progress" else "canceled"
            if call.caller is not None:  # Twilio ends the stream: stop, then close 1000
                call.caller.stop_outcome = "completed_by_api"
                call.caller.stop_requested.set()
            call.end = _now()
            call.hangup.set()
            self._notify()
        return _json(self._resource(call), 200)

    def _resource(self, call: EmulatedCall) -> dict[str, Any]:
        """The Call resource, in the shape Twilio's API answers it."""
        uri = f"{API_PREFIX}/{self.account_sid}/Calls/{call.sid}.json"
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.to,
            "to_formatted": call.to,
            "from": call.from_,
            "from_formatted": call.from_,
            "status": call.status,
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": _rfc2822(call.created),
            "date_updated": _rfc2822(_now()),
            "start_time": _rfc2822(call.start) if call.start else None,
            "end_time": _rfc2822(call.end) if call.end else None,
            "duration": str(call.duration_s) if call.duration_s is not None else None,
            "price": None,
            "price_unit": "USD",
            "answered_by": None,
            "caller_name": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "queue_time": "0",
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
                "streams": uri.replace(".json", "/Streams.json"),
            },
        }

    # --- Twilio's side of a call --------------------------------------------------------------------

    async def _run_call(self, call: EmulatedCall) -> None:
        sequence = 0

        async def progress(event: str, status: str, **extra: str) -> None:
            nonlocal sequence
            if event in call.events and call.status_callback:
                await self._post_callback(call, status, sequence, extra)
                sequence += 1

        try:
            await progress("initiated", "initiated")
            if call.status not in _TERMINAL:
                call.status = "ringing"
                self._notify()
                await progress("ringing", "ringing")
            with trio.move_on_after(self.ring_s):
                await call.hangup.wait()
            outcome = self.outcomes.get(call.to)
            if call.status not in _TERMINAL and outcome is not None:
                call.status, call.end = outcome, _now()
            if call.status not in _TERMINAL:
                call.status, call.start = "in-progress", _now()
                self._notify()
                await progress("answered", "in-progress")
                await self._converse(call)
                if call.status not in _TERMINAL:
                    call.status = "completed"
                call.end = call.end or _now()
            self._notify()
            extra = {"CallDuration": str(call.duration_s or 0)} if call.start is not None else {}
            await progress("completed", call.status, **extra)
        finally:
            call.ended.set()
            self._notify()

    async def _converse(self, call: EmulatedCall) -> None:
        """The answered call: dial the TwiML's stream; Twilio hangs up when the API says so."""
        stream = _read_stream(call.twiml)
        if stream is None:
            call.error = "the TwiML has no <Connect><Stream> (or is not XML)"
            return
        url, parameters = stream
        caller = TwilioCaller(
            stream_url=url,
            auth_token=self.auth_token,
            audio=self.caller_audio,
            speed=self.caller_speed,
            hangup_after_s=self.hangup_after_s,
            custom_parameters=parameters,
            call_sid=call.sid,
            account_sid=self.account_sid,
            max_call_s=self.max_call_s,
            from_number=call.from_,
            to_number=call.to,
        )
        call.caller = caller
        async with trio.open_nursery() as nursery:

            async def talk() -> None:
                call.record = await caller.run()
                nursery.cancel_scope.cancel()

            nursery.start_soon(talk)
            if call.amd_callback:
                nursery.start_soon(self._detect, call)
            await call.hangup.wait()
            await trio.sleep(HANGUP_GRACE_S)
            nursery.cancel_scope.cancel()

    async def _detect(self, call: EmulatedCall) -> None:
        """Async AMD: the result, ``amd_delay_s`` after the answer, to the AMD callback."""
        await trio.sleep(self.amd_delay_s)
        answered_by = self.answered_by.get(call.to, "human")
        if answered_by.startswith("machine_end") and call.machine_detection == "Enable":
            answered_by = "machine_start"
        assert call.amd_callback is not None
        form = {
            "AccountSid": self.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(int(self.amd_delay_s * 1000)),
        }
        signature = RequestValidator(self.auth_token).compute_signature(call.amd_callback, form)
        answered: int | None = None
        try:
            async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S) as client:
                call.amd_posted_at = trio.current_time()
                response = await client.post(
                    call.amd_callback, data=form, headers={"X-Twilio-Signature": signature}
                )
            answered = response.status_code
        except httpx.HTTPError as exc:
            log.warning("AMD callback for %s failed: %s", call.sid, type(exc).__name__)
        call.amd_posted = (answered_by, answered)
        self._notify()

    async def _post_callback(
        self, call: EmulatedCall, status: str, sequence: int, extra: Mapping[str, str]
    ) -> None:
        assert call.status_callback is not None
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(sequence),
            "Timestamp": _rfc2822(_now()),
            **extra,
        }
        signature = RequestValidator(self.auth_token).compute_signature(call.status_callback, form)
        answered: int | None = None
        try:
            async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S) as client:
                response = await client.post(
                    call.status_callback, data=form, headers={"X-Twilio-Signature": signature}
                )
            answered = response.status_code
        except httpx.HTTPError as exc:
            log.warning("status callback %s for %s failed: %s", status, call.sid, type(exc).__name__)
        call.callbacks.append((status, answered))
        self._notify()


def _read_stream(twiml: str | None) -> tuple[str, dict[str, str]] | None:
    """``<Response><Connect><Stream url>`` and its ``<Parameter>``s, as Twilio reads them."""
    if twiml is None:
        return None
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError:
        return None
    stream = root.find("./Connect/Stream") if root.tag == "Response" else None
    if stream is None or not stream.get("url"):
        return None
    parameters = {
        p.get("name", ""): p.get("value", "") for p in stream.findall("./Parameter") if p.get("name")
    }
    return stream.get("url", ""), parameters


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _error(status: int, code: int, message: str) -> Response:
    """Twilio's error body."""
    return _json(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status,
    )
