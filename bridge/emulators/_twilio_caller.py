"""A Twilio caller for one call: Twilio's voice webhook and Media Stream as the bridge sees them.

Theory of operation
-------------------
:meth:`TwilioCaller.run` optionally plays Twilio's webhook step (a signed form POST, then the TwiML answer
read for ``<Connect><Stream url>`` and its ``<Parameter>``s), then opens the stream's WebSocket and sends
``connected`` and ``start``. The instant ``start`` is sent is phone time 0. From then on one task, the ticker,
runs the phone clock in 20 ms ticks on absolute deadlines (``trio.sleep_until(epoch + k * 20 ms / speed)``, so
a late tick never shifts the ones after it). At tick ``k``, before anything that could wait, it starts speaker
span ``k`` on the :class:`~bridge.emulators._phone.PhonePlayback` model; then it sends uplink frame ``k - 1``
(the 20 ms the microphone captured in ``[k-1, k)``: the input audio, then silence) and the marks due. A tick
that wakes ``L`` late (``CallRecord.max_tick_lateness_s``) may play audio that arrived up to ``L`` after its
span's deadline: the phone-clock figures are exact to ``L`` times ``speed``. The other task receives what
the bridge sends: ``media`` is queued on the phone, ``mark`` is queued (or echoed at once), ``clear`` empties
the queue and echoes every pending mark at once. Both tasks send on the one socket (trio-websocket serialises
sends).

The call ends when the caller hangs up (``hangup_after_s`` of phone time: ``stop``, then close 1000), when the
bridge closes the socket, when a ``drop_after_s`` fault cuts the TCP connection, or at ``max_call_s`` (safety
net). Whichever task ends first cancels the other. Recorded tracks: sample ``i`` of ``sent`` and of ``heard``
is the same phone instant ``i / 8000`` s; at the end they may differ in length by one frame.
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
import struct
import wave
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import httpx
import numpy as np
import trio
import trio_websocket
from twilio.request_validator import RequestValidator

import codec
from bridge import _twilio
from bridge._errors import TwilioProtocolError
from bridge._twilio import SAMPLE_RATE
from bridge.emulators._phone import SILENCE_ULAW, PhonePlayback

__all__ = ["CallCounters", "CallEvent", "CallRecord", "TwilioCaller"]

log = logging.getLogger("bridge.emulators.caller")

FRAME_SAMPLES: Final = 160  # Twilio sends 20 ms of μ-law 8 kHz per media message
FRAME_S: Final = FRAME_SAMPLES / SAMPLE_RATE
DEFAULT_MAX_CALL_S: Final = 600.0
# The bridge may send one large media message (Twilio accepts any size); trio-websocket's default is 1 MiB.
WS_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
_SILENT_FRAME: Final = bytes([SILENCE_ULAW]) * FRAME_SAMPLES
_EPS: Final = 1e-9

#: Kinds of :class:`CallEvent` that record a message received from the bridge.
RECEIVED_KINDS: Final = frozenset({"media_received", "mark_received", "clear_received", "bad_message"})


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One thing that happened on the call.

    Attributes:
        kind: ``webhook``, ``start_sent``, ``media_received`` (``size`` = μ-law bytes), ``mark_received``,
            ``mark_echoed``, ``clear_received`` (``size`` = queued samples dropped), ``bad_message``
            (``detail`` = error kind), ``first_audio_heard``, ``injected``, ``dtmf_sent``, ``stop_sent``,
            ``dropped``, ``closed`` (``detail`` = ``"<code> <reason>"``).
        phone_s: phone-clock time (0 = ``start`` sent; scaled by ``speed``).
        wall_s: ``trio.current_time()`` when it happened (for latency against other recorders).
    """

    kind: str
    phone_s: float
    wall_s: float
    detail: str = ""
    size: int = 0


@dataclass(slots=True)
class CallCounters:
    """What crossed the socket, counted."""

    frames_sent: int = 0
    media_received: int = 0
    bytes_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    protocol_errors: int = 0
    injections_sent: int = 0
    late_ticks: int = 0  # ticks that started more than one tick late (the caller could not keep up)


@dataclass(slots=True)
class CallRecord:
    """Everything one emulated call saw and did. ``outcome`` says how it ended:

    ``hung_up`` (the caller sent ``stop`` and closed 1000), ``bridge_closed`` (the bridge closed the socket,
    see ``close_code``), ``dropped`` (fault: TCP cut without a close frame), ``max_duration`` (safety net
    reached), ``no_stream`` (the TwiML has no ``<Connect><Stream>``: busy or fallback answer), ``bad_twiml``,
    ``webhook_failed``, ``connect_failed`` (``error`` and ``rejected_status`` say why).
    """

    call_sid: str
    stream_sid: str
    account_sid: str
    speed: float
    stream_url: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    outcome: str = "not_started"
    error: str | None = None
    webhook_status: int | None = None
    twiml: str | None = None
    rejected_status: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None  # "caller", "bridge" or "drop"
    start_wall_s: float | None = None  # trio.current_time() at phone time 0
    first_audio_heard_s: float | None = None  # phone time
    first_audio_heard_wall_s: float | None = None
    duration_s: float = 0.0  # phone time the call lasted after start
    max_tick_lateness_s: float = 0.0
    counters: CallCounters = field(default_factory=CallCounters)
    protocol_error_kinds: dict[str, int] = field(default_factory=dict)
    events: list[CallEvent] = field(default_factory=list)
    sent_ulaw: bytearray = field(default_factory=bytearray, repr=False)
    heard_ulaw: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def connected(self) -> bool:
        """True once the stream's WebSocket was open and ``start`` sent."""
        return self.start_wall_s is not None

    @property
    def sent_pcm(self) -> bytes:
        """What the caller sent, PCM16LE 8 kHz, from phone time 0 (as the bridge decodes it)."""
        return codec.ulaw_decode(bytes(self.sent_ulaw))

    @property
    def heard_pcm(self) -> bytes:
        """What the caller heard, PCM16LE 8 kHz, from phone time 0 (silence where nothing played)."""
        return codec.ulaw_decode(bytes(self.heard_ulaw))

    @property
    def received(self) -> list[CallEvent]:
        """Every message received from the bridge, in order, with its wall receive time."""
        return [e for e in self.events if e.kind in RECEIVED_KINDS]

    def events_of(self, kind: str) -> list[CallEvent]:
        """The events of one kind, in order."""
        return [e for e in self.events if e.kind == kind]

    def phone_time(self, wall_s: float) -> float:
        """Phone time of a ``trio.current_time()`` instant (needs the call to have started)."""
        if self.start_wall_s is None:
            raise RuntimeError("the call never started: no phone clock")
        return (wall_s - self.start_wall_s) * self.speed

    def stereo_wav(self, path: str) -> None:
        """Writes the call as a 16-bit 8 kHz stereo WAV: left = what the caller sent, right = what it
        heard."""
        sent = np.frombuffer(self.sent_pcm, dtype="<i2")
        heard = np.frombuffer(self.heard_pcm, dtype="<i2")
        n = max(len(sent), len(heard))
        frames = np.zeros((n, 2), dtype="<i2")
        frames[: len(sent), 0] = sent
        frames[: len(heard), 1] = heard
        with wave.open(path, "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(frames.tobytes())


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _tick_at(phone_s: float) -> int:
    """The first tick at or after a phone time."""
    return max(0, math.ceil(phone_s / FRAME_S - _EPS))


class TwilioCaller:
    """Places one emulated call the way Twilio does, and records it.

    Args:
        stream_url: the stream's WebSocket URL. With ``webhook_url`` too, it overrides the TwiML's URL
            (e.g. to reach a local server whose TwiML names its public address).
        webhook_url: when given, POST the voice webhook first and take the stream URL and its parameters from
            the TwiML answer.
        auth_token: signs the webhook (and the stream's upgrade) with ``X-Twilio-Signature``. Never recorded.
        audio: what the caller says, PCM16LE 8 kHz mono, from phone time 0; then silence.
        speed: phone clock rate; 1.0 is real time, ``k`` runs the whole call ``k`` times faster.
        hangup_after_s: phone time at which the caller hangs up; ``None``: talk, then wait for the bridge.
        custom_parameters: ``start.customParameters`` (merged over the TwiML's ``<Parameter>``s).
        call_sid, stream_sid, account_sid: identifiers; random Twilio-shaped ones when ``None``.
        injections: ``(phone_time_s, frame)`` pairs sent verbatim (text or binary) at those times: faults.
        connect_timeout_s: bound on the webhook request, the WebSocket handshake and the closing handshake.
        max_call_s: safety net on phone time: the caller hangs up there whatever happens.
        media_before_start: fault: send this many silent ``media`` frames between ``connected`` and ``start``.
        double_start: fault: send ``start`` twice.
        drop_after_s: fault: at this phone time cut the TCP connection (RST, no ``stop``, no close frame).
        dtmf: ``(phone_time_s, digit)`` key presses to send as ``dtmf`` events.
        gaps: fault: ``(start_s, end_s)`` spans of phone time in which no ``media`` is sent (a stalled network
            or a muted line); those frames are lost, never sent late (and missing from ``sent_ulaw``).
        from_number, to_number: the webhook's ``From`` and ``To``.
        handset_delay_s: phone time a handset buffers audio before it plays it (audio arriving at ``t`` plays
            from ``t + handset_delay_s`` at the earliest; marks come back that much later too). 0: none.
    """

    def __init__(
        self,
        *,
        stream_url: str | None = None,
        webhook_url: str | None = None,
        auth_token: str | None = None,
        audio: bytes = b"",
        speed: float = 1.0,
        hangup_after_s: float | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str | None = None,
        injections: Sequence[tuple[float, str | bytes]] = (),
        connect_timeout_s: float = 5.0,
        max_call_s: float = DEFAULT_MAX_CALL_S,
        media_before_start: int = 0,
        double_start: bool = False,
        drop_after_s: float | None = None,
        dtmf: Sequence[tuple[float, str]] = (),
        gaps: Sequence[tuple[float, float]] = (),
        from_number: str = "+15005550006",
        to_number: str = "+15005550001",
        handset_delay_s: float = 0.0,
    ) -> None:
        if stream_url is None and webhook_url is None:
            raise ValueError("give stream_url or webhook_url")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        if len(audio) % 2:
            raise ValueError(f"audio must be PCM16 (even length), got {len(audio)!r} bytes")
        for name, value in (
            ("hangup_after_s", hangup_after_s),
            ("drop_after_s", drop_after_s),
            ("handset_delay_s", handset_delay_s),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not max_call_s > 0:
            raise ValueError(f"max_call_s must be > 0, got {max_call_s!r}")
        if media_before_start < 0:
            raise ValueError(f"media_before_start must be >= 0, got {media_before_start!r}")
        for start_s, end_s in gaps:
            if not 0 <= start_s <= end_s:
                raise ValueError(f"a gap must be 0 <= start_s <= end_s, got {(start_s, end_s)!r}")
        self.stream_url = stream_url
        self.webhook_url = webhook_url
        self._auth_token = auth_token
        self._audio_ulaw = codec.ulaw_encode(bytes(audio))
        self.speed = float(speed)
        self.hangup_after_s = hangup_after_s
        self.custom_parameters = dict(custom_parameters or {})
        self.call_sid = call_sid or _sid("CA")
        self.stream_sid = stream_sid or _sid("MZ")
        self.account_sid = account_sid or _sid("AC")
        self.injections = sorted(injections, key=lambda item: item[0])
        self.connect_timeout_s = connect_timeout_s
        self.max_call_s = max_call_s
        self.media_before_start = media_before_start
        self.double_start = double_start
        self.drop_after_s = drop_after_s
        self.dtmf = sorted(dtmf, key=lambda item: item[0])
        self.gaps = tuple(gaps)
        self.from_number = from_number
        self.to_number = to_number
        self.handset_delay_s = handset_delay_s
        #: Set to make Twilio leave the stream (a REST update redirected the call): ``stop``, then close 1000.
        self.stop_requested = trio.Event()
        self.stop_outcome = "redirected"  # the record's outcome then (``completed_by_api`` for a hang-up)

    def __repr__(self) -> str:
        token = "<set>" if self._auth_token else None
        return (
            f"TwilioCaller(call_sid={self.call_sid!r}, stream_url={self.stream_url!r}, "
            f"webhook_url={self.webhook_url!r}, auth_token={token}, speed={self.speed!r})"
        )

    async def run(self) -> CallRecord:
        """Places the call and returns its record when it has ended (never raises for a failed call)."""
        rec = CallRecord(
            call_sid=self.call_sid, stream_sid=self.stream_sid, account_sid=self.account_sid, speed=self.speed
        )
        params = dict(self.custom_parameters)
        url = self.stream_url
        signed_url = url
        if self.webhook_url is not None:
            answer = await self._webhook(rec)
            if answer is None:
                return rec
            signed_url, twiml_params = answer
            params = {**twiml_params, **self.custom_parameters}
            url = self.stream_url or signed_url
        assert url is not None and signed_url is not None
        rec.stream_url = url
        rec.custom_parameters = params
        headers: list[tuple[bytes, bytes]] = []
        if self._auth_token:
            signature = RequestValidator(self._auth_token).compute_signature(signed_url, {})
            headers.append((b"X-Twilio-Signature", signature.encode()))
        try:
            async with trio_websocket.open_websocket_url(
                url,
                extra_headers=headers,
                max_message_size=WS_MAX_MESSAGE_BYTES,
                connect_timeout=self.connect_timeout_s,
                disconnect_timeout=self.connect_timeout_s,
            ) as ws:
                await _ActiveCall(self, rec, ws).converse()
        except trio_websocket.ConnectionRejected as exc:
            rec.outcome, rec.rejected_status = "connect_failed", exc.status_code
            rec.error = f"WebSocket upgrade rejected with HTTP {exc.status_code}"
        except trio_websocket.HandshakeError as exc:
            if not rec.connected:
                rec.outcome = "connect_failed"
            rec.error = f"{type(exc).__name__}: {exc.__cause__ or exc}"
        log.info(
            "emulated call ended call_sid=%s stream_sid=%s outcome=%s close=%s",
            rec.call_sid,
            rec.stream_sid,
            rec.outcome,
            rec.close_code,
        )
        return rec

    async def _webhook(self, rec: CallRecord) -> tuple[str, dict[str, str]] | None:
        """Twilio's voice webhook: returns the stream URL and parameters, or ``None`` (outcome recorded)."""
        assert self.webhook_url is not None
        form = {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.from_number,
            "To": self.to_number,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        headers = {}
        if self._auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self._auth_token).compute_signature(
                self.webhook_url, form
            )
        try:
            async with httpx.AsyncClient(timeout=self.connect_timeout_s) as client:
                response = await client.post(self.webhook_url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            rec.outcome, rec.error = "webhook_failed", f"{type(exc).__name__}: {exc}"
            return None
        now = trio.current_time()
        rec.webhook_status = response.status_code
        rec.events.append(CallEvent("webhook", 0.0, now, detail=str(response.status_code)))
        if not response.is_success:
            rec.outcome, rec.error = "webhook_failed", f"webhook answered HTTP {response.status_code}"
            return None
        rec.twiml = response.text
        return _read_twiml(rec, response.text)


def _read_twiml(rec: CallRecord, twiml: str) -> tuple[str, dict[str, str]] | None:
    """The ``<Connect><Stream>`` of a TwiML answer, as Twilio reads it; ``None`` with the outcome recorded."""
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError as exc:
        rec.outcome, rec.error = "bad_twiml", f"TwiML is not XML: {exc}"
        return None
    if root.tag != "Response":
        rec.outcome, rec.error = "bad_twiml", f"TwiML root is <{root.tag}>, not <Response>"
        return None
    stream = root.find("./Connect/Stream")
    if stream is None:
        rec.outcome = "no_stream"
        return None
    url = stream.get("url", "")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        rec.outcome, rec.error = "bad_twiml", f"<Stream url={url!r}> is not a WebSocket URL"
        return None
    if parts.query:
        # Twilio does not pass a query string through to the stream; per-call data goes in <Parameter>s.
        rec.outcome, rec.error = "bad_twiml", "<Stream url> carries a query string"
        return None
    params = {}
    for parameter in stream.findall("./Parameter"):
        name = parameter.get("name")
        if name:
            params[name] = parameter.get("value", "")
    return url, params


class _ActiveCall:
    """The state of one connected call: the two tasks, the phone, the sequence counter."""

    def __init__(self, caller: TwilioCaller, rec: CallRecord, ws: trio_websocket.WebSocketConnection) -> None:
        self.caller = caller
        self.rec = rec
        self.ws = ws
        self.phone = PhonePlayback(start_delay_samples=round(caller.handset_delay_s * SAMPLE_RATE))
        self.epoch = trio.current_time()
        self._sequence = 0
        self._closing = False  # we are hanging up or dropping: a ConnectionClosed is ours

    def _seq(self) -> int:
        self._sequence += 1
        return self._sequence

    def _event(self, kind: str, *, detail: str = "", size: int = 0, wall_s: float | None = None) -> None:
        wall = trio.current_time() if wall_s is None else wall_s
        self.rec.events.append(CallEvent(kind, (wall - self.epoch) * self.caller.speed, wall, detail, size))

    def _start_text(self) -> str:
        return _twilio.start_message(
            stream_sid=self.rec.stream_sid,
            call_sid=self.rec.call_sid,
            account_sid=self.rec.account_sid,
            custom_parameters=self.rec.custom_parameters,
            sequence_number=self._seq(),
        )

    async def converse(self) -> None:
        """Runs the connected call to its end; transport ends are recorded, not raised."""
        ws, rec, caller = self.ws, self.rec, self.caller
        try:
            await ws.send_message(_twilio.connected_message())
            for i in range(caller.media_before_start):
                await ws.send_message(
                    _twilio.media_event_message(
                        stream_sid=rec.stream_sid,
                        payload=_SILENT_FRAME,
                        chunk=i + 1,
                        timestamp_ms=0,
                        sequence_number=self._seq(),
                    )
                )
            await ws.send_message(self._start_text())
            self.epoch = rec.start_wall_s = trio.current_time()
            self._event("start_sent")
            if caller.double_start:
                await ws.send_message(self._start_text())
        except trio_websocket.ConnectionClosed as exc:
            self._record_close(exc.reason, by="bridge")
            return
        log.info("emulated call started call_sid=%s stream_sid=%s", rec.call_sid, rec.stream_sid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, nursery.cancel_scope)
            nursery.start_soon(self._tick_loop, nursery.cancel_scope)

    def _record_close(self, reason: trio_websocket.CloseReason | None, *, by: str) -> None:
        if self.rec.closed_by is not None:
            return
        self.rec.closed_by = by
        self.rec.close_code = reason.code if reason is not None else None
        self.rec.close_reason = reason.reason if reason is not None else None
        if by == "bridge":
            self.rec.outcome = "bridge_closed"
        self._event("closed", detail=f"{self.rec.close_code} {self.rec.close_reason or ''}".rstrip())

    # ---------------------------------------------------------------------------------------------- receiving

    async def _receive_loop(self, done: trio.CancelScope) -> None:
        """Receives until the socket closes (bounded by the call's end), then ends the call."""
        try:
            while True:
                data = await self.ws.get_message()
                echoes = self._on_message(data)
                if echoes:
                    await self._echo(echoes)
        except trio_websocket.ConnectionClosed as exc:
            if not self._closing:
                self._record_close(exc.reason, by="bridge")
        finally:
            if not self._closing:  # when the caller is closing, the ticker ends the call once it is done
                done.cancel()

    def _bad(self, kind: str, detail: str, wall: float) -> None:
        self.rec.counters.protocol_errors += 1
        self.rec.protocol_error_kinds[kind] = self.rec.protocol_error_kinds.get(kind, 0) + 1
        self._event("bad_message", detail=kind, wall_s=wall)
        log.debug("bad message from bridge call_sid=%s kind=%s: %s", self.rec.call_sid, kind, detail)

    def _on_message(self, data: str | bytes) -> list[str]:
        """Applies one message from the bridge to the phone; returns the marks to echo now."""
        wall = trio.current_time()
        counters = self.rec.counters
        try:
            msg = _twilio.parse_outbound(data)
        except TwilioProtocolError as exc:
            self._bad(exc.kind, exc.detail, wall)
            return []
        if msg.stream_sid != self.rec.stream_sid:
            self._bad("wrong_stream_sid", f"streamSid {msg.stream_sid!r}", wall)
            return []
        if isinstance(msg, _twilio.PlayMedia):
            counters.media_received += 1
            counters.bytes_received += len(msg.payload)
            self.phone.enqueue_media(msg.payload)
            self._event("media_received", size=len(msg.payload), wall_s=wall)
            return []
        if isinstance(msg, _twilio.PlayMark):
            counters.marks_received += 1
            self._event("mark_received", detail=msg.name, wall_s=wall)
            return self.phone.enqueue_mark(msg.name)
        counters.clears_received += 1
        dropped = self.phone.queued_samples
        self._event("clear_received", size=dropped, wall_s=wall)
        return self.phone.clear()

    async def _echo(self, names: list[str]) -> None:
        for name in names:
            await self.ws.send_message(
                _twilio.mark_event_message(
                    stream_sid=self.rec.stream_sid, name=name, sequence_number=self._seq()
                )
            )
            self.rec.counters.marks_echoed += 1
            self._event("mark_echoed", detail=name)

    # ---------------------------------------------------------------------------------------------- the clock

    async def _tick_loop(self, done: trio.CancelScope) -> None:
        """The phone clock: uplink frames, speaker spans, timed faults; ends the call when the caller does."""
        try:
            await self._run_clock()
        except trio_websocket.ConnectionClosed as exc:
            if not self._closing:
                self._record_close(exc.reason, by="bridge")
        finally:
            done.cancel()

    async def _run_clock(self) -> None:
        caller, rec, ws = self.caller, self.rec, self.ws
        audio = caller._audio_ulaw
        tick_wall = FRAME_S / caller.speed
        hangup_tick = None if caller.hangup_after_s is None else _tick_at(caller.hangup_after_s)
        drop_tick = None if caller.drop_after_s is None else _tick_at(caller.drop_after_s)
        max_tick = _tick_at(caller.max_call_s)
        injections = [(_tick_at(t), frame) for t, frame in caller.injections]
        dtmf = [(_tick_at(t), digit) for t, digit in caller.dtmf]
        gaps = [(_tick_at(start), _tick_at(end)) for start, end in caller.gaps]
        k = 0
        while True:
            deadline = self.epoch + k * tick_wall
            await trio.sleep_until(deadline)
            lateness = trio.current_time() - deadline
            rec.max_tick_lateness_s = max(rec.max_tick_lateness_s, lateness)
            if lateness > tick_wall:
                rec.counters.late_ticks += 1
            rec.duration_s = k * FRAME_S
            ending = None
            if drop_tick is not None and k >= drop_tick:
                ending = "dropped"
            elif hangup_tick is not None and k >= hangup_tick:
                ending = "hung_up"
            elif k >= max_tick:
                ending = "max_duration"
            elif caller.stop_requested.is_set():
                ending = caller.stop_outcome
            due: list[str] = []
            if ending is None:
                # The speaker first, with no await since waking: span k starts now, whatever the sends cost.
                before = self.phone.played_audio_samples
                played, due = self.phone.tick(FRAME_SAMPLES)
                rec.heard_ulaw += played
                if rec.first_audio_heard_s is None and self.phone.played_audio_samples > before:
                    rec.first_audio_heard_s = k * FRAME_S
                    rec.first_audio_heard_wall_s = trio.current_time()
                    self._event("first_audio_heard")
            if k >= 1 and not any(start <= k - 1 < end for start, end in gaps):
                await self._send_frame(k - 1, audio)
            if ending == "dropped":
                await self._drop()
                return
            if ending is not None:
                await self._hang_up(ending)
                return
            if due:
                await self._echo(due)
            while injections and injections[0][0] <= k:
                frame = injections.pop(0)[1]
                await ws.send_message(frame)
                rec.counters.injections_sent += 1
                self._event("injected", size=len(frame))
            while dtmf and dtmf[0][0] <= k:
                digit = dtmf.pop(0)[1]
                await ws.send_message(
                    _twilio.dtmf_message(stream_sid=rec.stream_sid, digit=digit, sequence_number=self._seq())
                )
                self._event("dtmf_sent", detail=digit)
            k += 1

    async def _send_frame(self, index: int, audio: bytes) -> None:
        start = index * FRAME_SAMPLES
        frame = audio[start : start + FRAME_SAMPLES]
        if len(frame) < FRAME_SAMPLES:
            frame += _SILENT_FRAME[len(frame) :]
        await self.ws.send_message(
            _twilio.media_event_message(
                stream_sid=self.rec.stream_sid,
                payload=frame,
                chunk=index + 1,
                timestamp_ms=index * 20,
                sequence_number=self._seq(),
            )
        )
        self.rec.sent_ulaw += frame
        self.rec.counters.frames_sent += 1

    async def _hang_up(self, outcome: str) -> None:
        """Twilio's end of call: ``stop``, then a normal close."""
        rec = self.rec
        await self.ws.send_message(
            _twilio.stop_message(
                stream_sid=rec.stream_sid,
                call_sid=rec.call_sid,
                account_sid=rec.account_sid,
                sequence_number=self._seq(),
            )
        )
        self._closing = True
        self._event("stop_sent")
        rec.outcome = outcome
        self._record_close(trio_websocket.CloseReason(1000, None), by="caller")
        with trio.move_on_after(self.caller.connect_timeout_s):
            await self.ws.aclose(1000)

    async def _drop(self) -> None:
        """Cuts the TCP connection without ``stop`` or a close frame.

        trio-websocket has no public abort, so this reaches its underlying stream (``_stream``, private): with
        ``SO_LINGER`` 0 the close sends a TCP RST, as a dropped mobile call or a crashed proxy would.
        """
        self._closing = True
        stream = self.ws._stream
        sock = getattr(stream, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rec.outcome = "dropped"
        self._event("dropped")
        self._record_close(trio_websocket.CloseReason(1006, "dropped by the caller"), by="drop")
        await stream.aclose()
