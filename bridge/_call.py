"""The call runner: one Twilio Media Stream bridged to one Speakr session.

Theory of operation
-------------------
:func:`run_call` owns one Trio nursery with three tasks:

* **Twilio receiver** reads the Media Stream. ``start`` fixes the call's ids and
  per-call parameters; caller audio is μ-law decoded and re-framed into exact
  512-byte Speakr frames (:class:`~bridge._uplink.UplinkFramer`, which holds the
  last second until Speakr is ``ready``); Twilio's returned marks go to the
  playback ledger, whose ``status`` actions are queued for Speakr.
* **Speakr sender** writes the Speakr socket. It sends ``start`` once both
  Speakr's ``initial`` and Twilio's ``start`` have arrived, then drains the
  uplink channel (audio frames and statuses) in order. While it is parked on an
  empty channel and the socket has room, the Twilio receiver sends a new frame
  itself instead of queueing it (no task hop per frame); any put ends that, so
  nothing queued is overtaken, and a slow agent still fills the channel.
* **Speakr receiver** opens the Speakr socket as soon as the stream is accepted
  (in parallel with waiting for Twilio's ``start``) and is the only writer of the
  Twilio socket: agent audio is resampled and μ-law encoded
  (:class:`codec.DownlinkEncoder`) and handed to the ledger, which decides what is
  sent, held, replayed or dropped on ``pause``/``continue``/``clear``.

The ledger and the framer are plain objects shared by two tasks; Trio runs one
task at a time and every mutation is synchronous, so no lock is needed.

Ending: whichever side ends first records the reason (first one wins).
Twilio hanging up (``stop`` or a closed socket) closes the uplink channel; the
sender flushes what is queued plus the last partial frame, padded, and closes
Speakr with 1000. Speakr ending (``end`` after the last audio has played, a
drop, a failure) closes the Twilio socket, so Twilio plays the TwiML after
``</Connect>``. Either way the nursery is given :data:`CLOSE_TIMEOUT_S` to
unwind and is then cancelled, and a shielded cleanup closes whatever socket is
still open: no task outlives its call.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio
import trio_websocket

import codec
from bridge import _speakr, _twilio
from bridge._config import Config
from bridge._errors import CallEnded, SpeakrProtocolError, TwilioProtocolError
from bridge._ledger import PlaybackLedger, SegmentPlayed, SendClear, SendMark, SendMedia
from bridge._logging import LogThrottle
from bridge._metrics import AGENT_INFO_KINDS, CallCounters, Metrics, bounded_label
from bridge._uplink import UplinkFramer

if TYPE_CHECKING:
    from bridge._records import CallObserver

__all__ = ["TwilioSocket", "CallResult", "CallSettings", "run_call"]

logger = logging.getLogger("bridge.call")

#: Uplink channel (Twilio receiver -> Speakr sender), in items: 512-byte frames
#: (32 ms each) and the occasional status. 32 frames is ~1 s of caller audio:
#: enough to ride out a Speakr hiccup, small enough that a stalled agent never
#: makes us queue seconds of stale speech. Past it, new audio frames are dropped
#: and counted (``uplink_overflow``); statuses are never dropped.
UPLINK_CHANNEL_ITEMS = 32
#: Time for both sockets to close once a call has ended (PROTOCOLS.md: 1 s).
CLOSE_TIMEOUT_S = 1.0
#: Bound on the REST request that completes a call after ``end``.
HANGUP_TIMEOUT_S = 5.0
#: Extra time allowed after ``end`` for Twilio to confirm the last audio played.
END_PLAYOUT_GRACE_S = 1.0
#: Largest Speakr message the bridge plays: 4 MiB of base64 is ~65 s of 24 kHz speech in one
#: message. Larger ones are dropped and counted; the call goes on.
SPEAKR_MAX_MESSAGE_CHARS = 4 * 1024 * 1024
#: Beyond this trio-websocket closes the agent socket with 1009 (the call then ends): a guard on
#: the process's memory, far above anything a real agent sends.
SPEAKR_SOCKET_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Largest Twilio message we parse (Twilio's are ~300 characters); larger ones are dropped and
#: counted before any JSON work.
TWILIO_MAX_MESSAGE_CHARS = 64 * 1024
#: Largest decoded Twilio media payload we accept: Twilio sends 160 bytes.
TWILIO_MAX_PAYLOAD_BYTES = 16_000
#: Agent audio sent to Twilio and not yet confirmed played, at most: 120 s of μ-law. An agent that
#: runs further ahead than this has its excess dropped and counted (``downlink_overflow``), so what
#: one call holds in memory stays bounded whatever the agent sends.
MAX_UNPLAYED_BYTES = 8000 * 120
#: Connection attempts to the agent before the caller is handed to the fallback; a refused or
#: failed connection is retried once, quickly (the caller hears nothing of it).
AGENT_CONNECT_ATTEMPTS = 2
AGENT_RETRY_DELAY_S = 0.2
#: Speakr socket read size: a 100 ms agent message is ~6.5 kB of base64.
SPEAKR_RECEIVE_BUFFER_BYTES = 64 * 1024
#: Real-time rule for overload: caller audio arriving more than this behind Twilio's stream
#: clock (relative to the best seen) is stale, dropped and counted (``stale_uplink``) rather than
#: forwarded seconds late. Normal jitter is a few milliseconds; a backlog this deep means the
#: server is overloaded, and forwarding it would only delay every answer of the agent.
STALE_UPLINK_S = 0.5
#: Bad input is always counted; per call and kind, the first few are logged, then every 100th.
LOGGED_ERRORS_PER_KIND = 5
#: Normal but peer-driven events (barge-in, ``info``, DTMF): a real call has a handful, so the first
#: 50 of each kind per call are logged, then every 100th; a flood stays a few lines.
LOGGED_EVENTS_PER_KIND = 50
LOG_EVERY_NTH = 100
#: How often the per-call hot-path counters are folded into the registry.
COUNTER_FLUSH_FRAMES = 50


def _never() -> bool:
    return False


def _writable_probe(ws: trio_websocket.WebSocketConnection) -> Callable[[], bool]:
    """A zero-timeout check that the agent socket's kernel buffer has room, or one that says no.

    trio-websocket does not expose its stream: if a later version renames the attribute, frames all
    take the task hop again (slower, still correct); tests/bridge/test_uplink_order.py notices.
    """
    stream: Any = getattr(ws, "_stream", None)
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return _never
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLOUT)

    def writable() -> bool:
        # POLLOUT: at least a third of the send buffer is free, far more than one 516-byte frame.
        return bool(poller.poll(0))

    return writable


class TwilioSocket(Protocol):
    """The server side of Twilio's Media Stream WebSocket, as the runner needs it."""

    async def receive(self) -> str | bytes:
        """The next message; raises :class:`CallEnded` once the socket is closed."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises :class:`CallEnded` if the socket is closed."""

    async def close(self, code: int = 1000) -> None:
        """Close the socket (idempotent)."""


@dataclass(frozen=True, slots=True)
class CallSettings:
    """What a call needs from the app: configuration, metrics, the agent URL."""

    config: Config
    metrics: Metrics
    agent_url: str = field(repr=False)  # carries the API key in its query
    #: Validates ``start`` before any agent session is opened; returns a reason
    #: to refuse the stream, or None. (The app's per-call token check and admission:
    #: it may await the shared store.)
    authorize: Callable[[_twilio.Start], Awaitable[str | None]] | None = None
    #: Set by the server when live calls must end now (drain timeout).
    shutdown: trio.Event | None = None
    #: Completes a call through Twilio's REST API (given its CallSid) after the agent's ``end``
    #: has played out; without it the stream is just closed (Twilio then plays the TwiML after
    #: ``</Connect>``). Must not raise for REST errors.
    hangup: Callable[[str], Awaitable[Any]] | None = None
    #: Told what happens in the call (start, barge-ins, DTMF, transcript, the end) at control rate, and fed
    #: the caller's audio and the confirmed-played agent audio for the recording (``_records.py``). Its
    #: ``stop`` event ends the call from outside (hang-up through the API).
    observer: CallObserver | None = None
    #: Given the call's live ``(CallResult, PlaybackLedger)`` when the call begins, for observers that
    #: read them at control rate (the dashboard); must not block or raise.
    observe: Callable[[CallResult, PlaybackLedger], None] | None = None


@dataclass(slots=True)
class CallResult:
    """How a call went, for logs, tests and the demo summary."""

    reason: str = "unknown"
    call_sid: str | None = None
    stream_sid: str | None = None
    session_id: str | None = None
    start_to_ready_s: float | None = None
    uplink_frames: int = 0
    uplink_dropped_bytes: int = 0
    protocol_errors: dict[str, int] = field(default_factory=dict)
    barge_in: dict[str, int] = field(default_factory=dict)
    ledger_stats: Any = None


class _CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the call's ids, as far as they are known.

    It holds the call's result (where the ids are), never the call: a call -> log -> call cycle
    would keep every ended call in memory until a full garbage collection.
    """

    def __init__(self, result: CallResult) -> None:
        super().__init__(logger, {})
        self._result = result

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        r = self._result
        ids = {
            "call_sid": r.call_sid or "-",
            "stream_sid": r.stream_sid or "-",
            "session_id": r.session_id or "-",
        }
        kwargs.setdefault("extra", {}).update(ids)
        return f"[{ids['call_sid']} {ids['stream_sid']} {ids['session_id']}] {msg}", kwargs


class _Call:
    def __init__(self, twilio: TwilioSocket, settings: CallSettings) -> None:
        self.twilio = twilio
        self.settings = settings
        self.config = settings.config
        self.metrics = settings.metrics
        self.result = CallResult()
        self.log = _CallLog(self.result)
        self.error_lines = LogThrottle(LOGGED_ERRORS_PER_KIND, LOG_EVERY_NTH)
        self.event_lines = LogThrottle(LOGGED_EVENTS_PER_KIND, LOG_EVERY_NTH)
        self.counters = CallCounters()
        self.framer = UplinkFramer()
        self.ledger = PlaybackLedger()
        self.downlink = codec.DownlinkEncoder()
        self.start: _twilio.Start | None = None
        self.params: _speakr.StartParams | None = None
        self.speakr: trio_websocket.WebSocketConnection | None = None
        self.uplink_send, self.uplink_recv = trio.open_memory_channel[tuple[str | bytes, float]](
            UPLINK_CHANNEL_ITEMS
        )
        # The Speakr sender waits on an empty uplink channel (see send_frame_now); and whether the
        # agent socket takes a frame without waiting (set once the socket is open).
        self.sender_idle = False
        self.speakr_writable: Callable[[], bool] = _never
        self.hop_uplink = settings.metrics.hop_latency.labels("uplink")
        self.started = trio.Event()  # Twilio start accepted (and authorized)
        self.ended = trio.Event()  # a reason to end was recorded
        self.speakr_open = trio.Event()
        self.initial = trio.Event()
        self.ready = trio.Event()
        self.playout_done = trio.Event()  # set when the ledger goes idle after `end`
        self.ending_after_playout = False
        self.stalled_since: float | None = None  # first uplink overflow of the current stall
        self.min_lag = math.inf  # smallest (wall time - Twilio stream time) seen: see is_stale()
        self.dropping_stale = False
        self.twilio_closed = False
        self.t_start = 0.0
        self.last_media = 0.0  # when caller audio last arrived: see idle_watch()
        self.nursery: trio.Nursery | None = None

    # --- ending -----------------------------------------------------------------

    def end(self, reason: str) -> None:
        """Record why the call ends (first reason wins) and give it a second to unwind."""
        if self.result.reason == "unknown":
            self.result.reason = reason
            self.log.info("call ending: %s", reason)
        self.ended.set()
        if self.speakr is None and self.nursery is not None:
            self.nursery.cancel_scope.cancel()  # no agent socket yet: nothing to flush
        if self.nursery is not None:
            deadline = trio.current_time() + CLOSE_TIMEOUT_S
            scope = self.nursery.cancel_scope
            scope.deadline = min(scope.deadline, deadline)

    def abort(self, reason: str) -> None:
        """End now: cancel every task (cleanup still closes both sockets)."""
        self.end(reason)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def close_twilio(self) -> None:
        if not self.twilio_closed:
            self.twilio_closed = True
            await self.twilio.close(1000)

    def count_error(self, peer: str, kind: str, detail: str) -> None:
        """Count bad input; log the first few of each kind, then every hundredth (a flood of
        garbage must not become a flood of log lines)."""
        self.metrics.protocol_errors.labels(peer, kind).inc()
        key = f"{peer}:{kind}"
        seen = self.result.protocol_errors[key] = self.result.protocol_errors.get(key, 0) + 1
        if self.error_lines.seen(key) is not None:
            self.log.warning("bad %s input (%s, %d so far this call): %s", peer, kind, seen, detail)

    def log_event(self, level: int, key: str, msg: str, *args: Any, errors: bool = False) -> None:
        """Log a line that a peer can make us repeat, thinned by kind (see :class:`LogThrottle`)."""
        throttle = self.error_lines if errors else self.event_lines
        seen = throttle.seen(key)
        if seen is None:
            return
        if seen > throttle.first:
            msg += " (%d so far this call, logging every %dth)"
            args = (*args, seen, throttle.every)
        self.log.log(level, msg, *args)

    def parse_twilio(self, data: str | bytes) -> _twilio.TwilioEvent | None:
        """One Twilio message as an event, or None (counted and logged) when it is bad."""
        if len(data) > TWILIO_MAX_MESSAGE_CHARS:
            self.count_error("twilio", "too_large", f"message of {len(data)} characters dropped")
            return None
        try:
            return _twilio.parse_event(data, max_payload_bytes=TWILIO_MAX_PAYLOAD_BYTES)
        except TwilioProtocolError as exc:
            self.count_error("twilio", exc.kind, exc.detail)
            return None

    # --- the three tasks ------------------------------------------------------------

    async def twilio_receiver(self) -> None:
        """Read Twilio until it stops; feed the uplink and the ledger."""
        decode = codec.ulaw_decode
        parse = self.parse_twilio
        framer = self.framer
        counters = self.counters
        put = self.put_frame
        observer = self.settings.observer
        try:
            with trio.move_on_after(self.config.stream_start_timeout_s) as start_scope:
                while self.start is None:
                    await self.handle_twilio_event(await self.twilio.receive())
            if start_scope.cancelled_caught:
                self.metrics.calls_rejected.labels("no_start").inc()
                self.abort("twilio_no_start")
                return
            # Known once start is accepted: the recording is opened there (per frame only when recording).
            record_audio = None if observer is None or observer.recording is None else observer.caller_audio
            while True:
                event = parse(await self.twilio.receive())
                if type(event) is _twilio.Media:
                    # The hot path, inline: decode, re-frame, queue.
                    now = self.last_media = trio.current_time()
                    if record_audio is not None:
                        record_audio(event.payload)
                    if event.timestamp_ms is not None and self.is_stale(now, event.timestamp_ms):
                        continue
                    pcm = decode(event.payload)
                    counters.twilio_frames_in += 1
                    counters.twilio_bytes_in += len(event.payload)
                    for frame in framer.feed(pcm):
                        if self.sender_idle and self.speakr_writable():
                            await self.send_frame_now(frame, now)
                        else:
                            put(frame, now)
                    if counters.twilio_frames_in >= COUNTER_FLUSH_FRAMES:
                        counters.flush(self.metrics)
                elif event is not None and self.dispatch_twilio(event):
                    return
        except CallEnded as exc:
            self.end(exc.reason)
        finally:
            self.finish_uplink()

    def is_stale(self, now: float, timestamp_ms: int) -> bool:
        """True for caller audio that reaches us too late to be worth forwarding (then counted).

        ``timestamp_ms`` is Twilio's stream clock. ``now - timestamp`` is constant while we keep up
        (network jitter aside); its smallest value so far is the baseline. When the server falls
        behind, frames queue in socket buffers and arrive ever later: past STALE_UPLINK_S behind
        the baseline they are dropped, so the agent hears the caller live instead of seconds late.
        """
        lag = now - timestamp_ms * 0.001
        if lag < self.min_lag:
            self.min_lag = lag
        elif lag - self.min_lag > STALE_UPLINK_S:
            self.metrics.dropped.labels("stale_uplink").inc()
            if not self.dropping_stale:
                self.dropping_stale = True
                late_ms = (lag - self.min_lag) * 1000
                self.log_event(logging.WARNING, "stale", "caller audio arriving %.0f ms late: dropping it",
                               late_ms, errors=True)
            return True
        self.dropping_stale = False
        return False

    async def handle_twilio_event(self, data: str | bytes) -> None:
        """Handle one message before ``start`` (connected, start, or out-of-order input)."""
        event = self.parse_twilio(data)
        if event is None:
            return
        if isinstance(event, _twilio.Start):
            await self.accept_start(event)
        elif isinstance(event, _twilio.Connected):
            self.log.debug("twilio connected (protocol %s %s)", event.protocol, event.version)
        elif isinstance(event, _twilio.Stop):
            raise CallEnded("twilio_stop")
        else:
            self.count_error("twilio", "before_start", f"{type(event).__name__} before start")

    async def accept_start(self, event: _twilio.Start) -> None:
        if self.settings.authorize is not None:
            refusal = await self.settings.authorize(event)
            if refusal is not None:
                self.metrics.calls_rejected.labels(refusal).inc()
                self.result.call_sid, self.result.stream_sid = event.call_sid, event.stream_sid
                self.log.warning("stream refused: %s", refusal)
                raise CallEnded(f"refused_{refusal}")
        self.start = event
        self.result.call_sid, self.result.stream_sid = event.call_sid, event.stream_sid
        defaults = _speakr.StartParams(
            temperature=self.config.temperature,
            prefix_padding=self.config.prefix_padding,
            voice_id=self.config.voice_id,
            silence_duration_ms=self.config.silence_duration_ms,
            threshold=self.config.threshold,
            system_prompt=self.config.system_prompt,
        )
        self.params, warnings = defaults.with_overrides(event.custom_parameters)
        self.result.session_id = self.params.session_id
        for warning in warnings:
            self.log.warning("custom parameter ignored: %s", warning)
        self.t_start = self.last_media = trio.current_time()
        if self.settings.observer is not None:
            self.settings.observer.started(event)
            self.ledger.on_played = self.settings.observer.heard
        self.log.info("stream started (%s)", ", ".join(sorted(event.custom_parameters)) or "no parameters")
        self.started.set()

    def dispatch_twilio(self, event: _twilio.TwilioEvent) -> bool:
        """Handle a non-media Twilio event after ``start``; True when the call is over."""
        if isinstance(event, _twilio.Mark):
            self.apply_status(self.ledger.mark_returned(event.name, trio.current_time()))
        elif isinstance(event, _twilio.Stop):
            self.end("twilio_stop")
            return True
        elif isinstance(event, _twilio.Dtmf):
            self.metrics.dtmf.inc()
            self.log_event(logging.INFO, "dtmf", "dtmf %s", event.digit)
            if self.settings.observer is not None:
                self.settings.observer.dtmf_digit(event.digit)
        elif isinstance(event, _twilio.Start):
            self.count_error("twilio", "second_start", "a second start was ignored")
        else:  # Connected again
            self.count_error("twilio", "unexpected_event", type(event).__name__)
        return False

    def apply_status(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, SegmentPlayed):
                key = action.key
                assert isinstance(key, tuple)  # ours: (session_id, sequence_id), see speakr_receiver()
                self.metrics.statuses.inc()
                self.put_control(_speakr.status_message(key[0], key[1]))
        if self.ending_after_playout and self.ledger.idle:
            self.playout_done.set()

    async def send_frame_now(self, frame: bytes, t_received: float) -> None:
        """Send one caller frame to Speakr from the Twilio receiver itself: no task hop.

        Only while the sender is parked on an empty uplink channel (so nothing queued can be
        overtaken, and nobody else is writing the socket) and the socket takes data without
        waiting (so a slow agent still fills the channel and meets its overflow rule, as ever).
        """
        ws = self.speakr
        assert ws is not None
        try:
            await ws.send_message(frame)
        except trio_websocket.ConnectionClosed:
            # The Speakr receiver sees the same close and ends the call (agent_gone).
            self.speakr_writable = _never
            return
        counters = self.counters
        counters.speakr_frames_out += 1
        counters.speakr_bytes_out += len(frame)
        self.result.uplink_frames += 1
        self.hop_uplink.observe(trio.current_time() - t_received)
        self.stalled_since = None

    def put_frame(self, frame: bytes, t_received: float) -> None:
        try:
            self.uplink_send.send_nowait((frame, t_received))
            self.sender_idle = False  # it has an item now: what follows must queue behind it
            self.stalled_since = None
        except trio.WouldBlock:
            # The agent is not taking caller audio: drop (counted), and give up on a lasting stall.
            self.metrics.dropped.labels("uplink_overflow").inc()
            self.result.uplink_dropped_bytes += len(frame)
            if self.stalled_since is None:
                self.stalled_since = t_received
                self.log_event(
                    logging.WARNING, "uplink_overflow", "speakr is not keeping up: dropping caller audio",
                    errors=True,
                )
            elif t_received - self.stalled_since > self.config.agent_stall_timeout_s:
                stalled_s = t_received - self.stalled_since
                self.log_event(logging.ERROR, "stalled", "speakr stalled for %.1f s", stalled_s, errors=True)
                self.nursery.start_soon(self.give_up, "agent_stalled")  # type: ignore[union-attr]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the call is ending; the sender is gone

    async def give_up(self, reason: str) -> None:
        """End the call now from our side: the caller hears the fallback TwiML, Speakr gets 1000.

        The reason is recorded first (so no other task's view of the closing sockets replaces it)
        and both closes are shielded, so the cancellation that follows cannot cut them short.
        """
        if self.result.reason == "unknown":
            self.result.reason = reason
            self.log.info("call ending: %s", reason)
        with trio.CancelScope(shield=True):
            # Each side has its own budget: a Twilio side that hangs must not keep the (paid)
            # agent session open.
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self.close_twilio()
            if self.speakr is not None and self.speakr.closed is None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self.speakr.aclose(1000)
        self.abort(reason)

    def put_control(self, message: str) -> None:
        try:
            self.uplink_send.send_nowait((message, 0.0))
            self.sender_idle = False
        except trio.WouldBlock:
            # Never drop a status: let it in above the audio bound (statuses are rare).
            self.nursery.start_soon(self._put_later, message)  # type: ignore[union-attr]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _put_later(self, message: str) -> None:
        try:
            await self.uplink_send.send((message, 0.0))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def finish_uplink(self) -> None:
        """Twilio is done: queue the last partial frame (padded) and close the uplink."""
        if self.framer.ready:
            last = self.framer.finish()
            if last is not None:
                self.put_frame(last, trio.current_time())
        self.result.uplink_dropped_bytes += self.framer.dropped_bytes
        if self.framer.dropped_bytes:
            self.metrics.dropped.labels("preroll").inc()
        self.uplink_send.close()

    async def speakr_sender(self) -> None:
        """Send ``start`` when both sides are there, then drain the uplink in order."""
        if not await self.until_ended(self.started.wait, self.initial.wait, self.agent_allowed):
            if self.speakr is not None:
                await self.speakr.aclose(1000)
            return
        ws = self.speakr
        assert ws is not None and self.params is not None
        item: str | bytes = ""
        try:
            await ws.send_message(_speakr.start_message(self.params))
            self.log.info("speakr start sent")
            self.speakr_writable = _writable_probe(ws)
            counters = self.counters
            hop = self.hop_uplink
            recv = self.uplink_recv
            while True:
                try:
                    item, t_received = recv.receive_nowait()
                except trio.WouldBlock:
                    # Parked on an empty channel: until a put wakes us (and clears the flag), the
                    # Twilio receiver may send frames itself (send_frame_now).
                    self.sender_idle = True
                    try:
                        item, t_received = await recv.receive()
                    except trio.EndOfChannel:
                        break
                except trio.EndOfChannel:
                    break
                await ws.send_message(item)
                if type(item) is bytes:
                    counters.speakr_frames_out += 1
                    counters.speakr_bytes_out += len(item)
                    self.result.uplink_frames += 1
                    hop.observe(trio.current_time() - t_received)
            self.sender_idle = False
            # Twilio is gone and everything queued was sent: close Speakr cleanly.
            await ws.aclose(1000)
        except trio_websocket.ConnectionClosed:
            self.end("agent_disconnect")
            if type(item) is bytes:  # the frame in flight (the agent was closed first, as at shutdown)
                self.metrics.dropped.labels("unsent_at_end").inc()
                self.result.uplink_dropped_bytes += len(item)

    async def until_ended(self, *waits: Callable[[], Any]) -> bool:
        """Await each of ``waits`` in turn; False if the call ends first."""
        async with trio.open_nursery() as race:
            async def watch() -> None:
                await self.ended.wait()
                race.cancel_scope.cancel()
            race.start_soon(watch)
            for wait in waits:
                await wait()
            race.cancel_scope.cancel()
            return True
        return False

    async def speakr_receiver(self) -> None:
        """Open the Speakr socket (retrying a failed attempt once), then handle what the agent sends."""
        if self.settings.authorize is not None:
            # With authentication on, no agent socket is opened for a stream
            # until its start has shown a valid per-call token.
            await self.started.wait()
        for attempt in range(1, AGENT_CONNECT_ATTEMPTS + 1):
            failure = await self.speakr_session()
            if failure is None:
                return
            self.log.error("speakr connection failed (attempt %d): %s", attempt, failure)
            if failure.startswith("rejected") or attempt == AGENT_CONNECT_ATTEMPTS:
                break
            await trio.sleep(AGENT_RETRY_DELAY_S)
        self.metrics.calls_rejected.labels("agent_connect_failed").inc()
        await self.give_up("agent_connect_failed")

    async def speakr_session(self) -> str | None:
        """One connection to Speakr, for the rest of the call; returns why it failed to open, or None."""
        # trio-websocket's own connect_timeout does not fire when the peer accepts TCP but never
        # answers the upgrade (its reader task keeps the handshake waiting): bound it ourselves.
        timeout_s = self.config.agent_connect_timeout_s
        gone = False
        ended: str | None = None
        try:
            with trio.CancelScope(deadline=trio.current_time() + timeout_s) as connecting:
                async with trio_websocket.open_websocket_url(
                    self.settings.agent_url,
                    connect_timeout=timeout_s,
                    disconnect_timeout=CLOSE_TIMEOUT_S,
                    max_message_size=SPEAKR_SOCKET_MAX_MESSAGE_BYTES,
                    receive_buffer_size=SPEAKR_RECEIVE_BUFFER_BYTES,
                ) as ws:
                    connecting.deadline = math.inf
                    self.speakr = ws
                    self.speakr_open.set()
                    # Caught here, inside trio-websocket's block: an exception that leaves it is kept
                    # in a reference cycle (trio's nursery frames) whose traceback holds this call,
                    # so every ended call waited for a full gc to be freed; and, measured, the call
                    # then held its slot for the whole CLOSE_TIMEOUT_S after a normal hang-up.
                    try:
                        await self.receive_agent(ws)
                    except trio_websocket.ConnectionClosed:
                        gone = True
                    except CallEnded as exc:
                        ended = exc.reason
            if connecting.cancelled_caught:
                return f"no handshake within {timeout_s:g} s"
            if gone:
                await self.agent_gone()
            if ended is not None:
                # Twilio's socket closed under us while we were sending agent audio to it.
                self.end(ended)
        except trio_websocket.ConnectionRejected as exc:
            return f"rejected with HTTP {exc.status_code}"
        except trio_websocket.HandshakeError as exc:
            return type(exc.__cause__ or exc).__name__
        except trio_websocket.ConnectionClosed:
            await self.agent_gone()
        except CallEnded as exc:
            # Twilio's socket closed under us while we were sending agent audio to it.
            self.end(exc.reason)
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        return None

    async def agent_gone(self) -> None:
        """Speakr's socket closed. Expected after ``end`` or our own close; else a drop."""
        if self.result.reason == "unknown":
            self.log.warning("speakr disconnected without end")
            await self.give_up("agent_disconnect")

    async def receive_agent(self, ws: trio_websocket.WebSocketConnection) -> None:
        parse = _speakr.parse_event
        counters = self.counters
        hop = self.metrics.hop_latency.labels("downlink")
        while True:
            # The resampler keeps its state (and any odd byte) from one message to the next for
            # the whole call: Speakr's messages are one continuous stream, cut anywhere, and a gap
            # between two messages says nothing about where an answer ends. Its held-back tail
            # (the 1.42 ms group delay) is flushed only at `end`, and dropped at `clear`.
            data = await ws.get_message()
            t0 = trio.current_time()
            if len(data) > SPEAKR_MAX_MESSAGE_CHARS:
                self.count_error("speakr", "too_large", f"message of {len(data)} characters dropped")
                self.metrics.dropped.labels("agent_too_large").inc()
                continue
            try:
                event = parse(data)
            except SpeakrProtocolError as exc:
                self.count_error("speakr", exc.kind, exc.detail)
                continue
            if type(event) is _speakr.AgentMedia:
                if not event.audio:
                    continue  # nothing to play: no mark, no status (PROTOCOLS.md)
                if self.start is None:
                    self.count_error("speakr", "media_before_start", "agent audio before Twilio start")
                    continue
                counters.speakr_media_in += 1
                counters.speakr_bytes_in += len(event.audio)
                ulaw = self.downlink.process(event.audio)
                if self.ledger.unplayed_bytes + len(ulaw) > MAX_UNPLAYED_BYTES:
                    self.metrics.dropped.labels("downlink_overflow").inc()
                    ahead_s = MAX_UNPLAYED_BYTES // 8000
                    self.log_event(
                        logging.WARNING, "downlink_overflow", "speakr is more than %d s ahead: audio dropped",
                        ahead_s, errors=True,
                    )
                    continue
                key = (event.session_id, event.sequence_id)
                await self.send_twilio(self.ledger.append(key, ulaw, t0, close=True))
                hop.observe(trio.current_time() - t0)
            elif isinstance(event, _speakr.Initial):
                self.log_event(logging.INFO, "initial", "speakr initial")
                self.initial.set()
            elif isinstance(event, _speakr.Ready):
                self.on_ready()
            elif isinstance(event, (_speakr.Pause, _speakr.Continue, _speakr.Clear)):
                await self.barge_in(event)
            elif isinstance(event, _speakr.Info):
                self.metrics.agent_info.labels(bounded_label(event.kind, AGENT_INFO_KINDS)).inc()
                self.log_event(logging.WARNING, "info", "speakr info (%s): %.200r", event.kind, event.message)
            elif isinstance(event, _speakr.End):
                await self.agent_end(ws)
                return

    def on_ready(self) -> None:
        if self.ready.is_set():
            self.count_error("speakr", "second_ready", "ready received twice")
            return
        self.ready.set()
        waited = trio.current_time() - self.t_start if self.start is not None else 0.0
        self.result.start_to_ready_s = waited
        self.metrics.agent_ready.observe(waited)
        now = trio.current_time()
        held = self.framer.start()
        for frame in held:
            self.put_frame(frame, now)
        self.log.info("speakr ready after %.0f ms; %d held frames flushed", waited * 1000, len(held))

    async def barge_in(self, event: _speakr.SpeakrEvent) -> None:
        name = {_speakr.Pause: "pause", _speakr.Continue: "continue", _speakr.Clear: "clear"}[type(event)]
        self.metrics.barge_in.labels(name).inc()
        self.result.barge_in[name] = self.result.barge_in.get(name, 0) + 1
        if self.settings.observer is not None:
            self.settings.observer.barge_in(name)
        if self.start is None:
            return
        now = trio.current_time()
        if name == "pause":
            actions = self.ledger.pause(now)
        elif name == "continue":
            actions = self.ledger.resume(now)
            if not actions:
                self.log_event(logging.INFO, "continue_ignored", "continue with nothing paused: ignored")
        else:
            actions = self.ledger.clear(now)
            self.downlink.reset()  # the old answer's filter tail must not leak into the new one
        self.log_event(logging.INFO, name, "speakr %s", name)
        await self.send_twilio(actions)

    async def send_twilio(self, actions: list[Any]) -> None:
        stream_sid = self.start.stream_sid  # type: ignore[union-attr]
        counters = self.counters
        for action in actions:
            if type(action) is SendMedia:
                counters.twilio_media_out += 1
                counters.twilio_bytes_out += len(action.payload)
                await self.twilio.send(_twilio.media_message(stream_sid, action.payload))
            elif type(action) is SendMark:
                await self.twilio.send(_twilio.mark_message(stream_sid, action.name))
            elif type(action) is SendClear:
                await self.twilio.send(_twilio.clear_message(stream_sid))
            # SegmentPlayed comes from mark_returned() only (see apply_status()); Interrupted: no wire.

    async def flush_downlink(self) -> None:
        """Play the resampler's held-back tail now, as if silence followed (at ``end``).

        Through the ledger, so that it is marked and waited for like the rest of the answer.
        """
        if self.start is not None:
            await self.send_twilio(self.ledger.tail(self.downlink.flush(), trio.current_time()))

    async def agent_end(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Speakr is done: play out what was sent (bounded), then hang up the stream."""
        self.log.info("speakr end: playing out %d bytes", self.ledger.pending_bytes)
        if self.start is not None:
            await self.flush_downlink()
            self.ending_after_playout = True
            if not self.ledger.idle:
                bound_s = self.ledger.pending_bytes / 8000 + END_PLAYOUT_GRACE_S
                with trio.move_on_after(bound_s):
                    await self.playout_done.wait()
        if self.settings.hangup is not None and self.start is not None:
            # Before end(): that gives the call only CLOSE_TIMEOUT_S more, and a slow REST
            # answer must not let the fallback apology play after a normal goodbye.
            with trio.move_on_after(HANGUP_TIMEOUT_S):
                await self.settings.hangup(self.start.call_sid)
        self.end("agent_end")
        await self.close_twilio()
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await ws.aclose(1000)
        self.abort("agent_end")

    async def supervisor(self) -> None:
        """Enforce the agent's ready timeout and the server's shutdown order.

        An agent that is not ready in time ends the call, so the caller hears the
        fallback TwiML instead of silence.
        """
        async with trio.open_nursery() as nursery:
            if self.settings.shutdown is not None:
                nursery.start_soon(self.shutdown_watch, self.settings.shutdown)
            if self.settings.observer is not None:
                nursery.start_soon(self.stop_watch, self.settings.observer.stop)
            if not await self.until_ended(self.started.wait, self.agent_allowed):
                nursery.cancel_scope.cancel()
                return
            nursery.start_soon(self.idle_watch)
            with trio.move_on_after(self.config.agent_ready_timeout_s) as ready_scope:
                await self.until_ended(self.ready.wait)
            if ready_scope.cancelled_caught:
                self.log.error("speakr not ready %.1f s after start", self.config.agent_ready_timeout_s)
                self.metrics.calls_rejected.labels("agent_not_ready").inc()
                await self.give_up("agent_not_ready")
            await self.ended.wait()
            nursery.cancel_scope.cancel()

    async def idle_watch(self) -> None:
        """End a started stream that has gone silent: Twilio sends media every 20 ms for the whole
        call, so a stream with none for ``stream_idle_timeout_s`` is half-open (the caller's side
        vanished without a close), and it must not hold a call slot and a paid agent session.

        The receiver only stamps ``last_media``; this task wakes about once per timeout.
        """
        idle_s = self.config.stream_idle_timeout_s
        while True:
            await trio.sleep_until(self.last_media + idle_s)
            silent_s = trio.current_time() - self.last_media
            if silent_s >= idle_s:
                self.log.warning("no audio from twilio for %.1f s: the stream is dead", silent_s)
                await self.give_up("twilio_idle")
                return

    async def shutdown_watch(self, shutdown: trio.Event) -> None:
        await shutdown.wait()
        self.log.warning("server shutting down: ending the call")
        await self.give_up("server_shutdown")

    async def agent_allowed(self) -> None:
        """Until the agent may start (a call held for its answering-machine result waits here)."""
        if self.settings.observer is not None:
            await self.settings.observer.agent_gate.wait()

    async def stop_watch(self, stop: trio.Event) -> None:
        await stop.wait()
        self.log.info("hang-up requested through the API")
        await self.give_up("hung_up_by_api")

    # --- the runner -------------------------------------------------------------------

    async def run(self) -> CallResult:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.twilio_receiver)
                nursery.start_soon(self.speakr_receiver)
                nursery.start_soon(self.speakr_sender)
                nursery.start_soon(self.supervisor)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S) as cleanup:
                cleanup.shield = True
                await self.cleanup()
            self.count_unsent()
            self.counters.flush(self.metrics)
            if self.result.reason == "unknown":
                self.result.reason = "cancelled"
            stats = self.result.ledger_stats = self.ledger.stats
            marks = self.metrics.marks
            marks.labels("played").inc(stats.marks_played)
            marks.labels("cleared").inc(stats.marks_cleared)
            marks.labels("unknown").inc(stats.unknown_marks)
            if stats.overflow_bytes:
                self.metrics.dropped.labels("paused_overflow").inc()
            if self.settings.observer is not None:
                self.settings.observer.ended(self.result)
        return self.result

    def count_unsent(self) -> None:
        """Count the caller audio still queued when the call is over (the agent was closed first, as
        at shutdown, where the caller's last partial frame is queued after the agent is gone): lost
        audio is always counted, here as ``unsent_at_end``."""
        while True:
            try:
                item, _ = self.uplink_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if type(item) is bytes:
                self.metrics.dropped.labels("unsent_at_end").inc()
                self.result.uplink_dropped_bytes += len(item)

    async def cleanup(self) -> None:
        if self.speakr is not None and self.speakr.closed is None:
            # Cancelled before the sender could finish: send what is queued, then close.
            if self.ready.is_set():
                while True:
                    try:
                        item, _ = self.uplink_recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    try:
                        await self.speakr.send_message(item)
                    except trio_websocket.ConnectionClosed:
                        break
            await self.speakr.aclose(1000)
        await self.close_twilio()


async def run_call(twilio: TwilioSocket, settings: CallSettings) -> CallResult:
    """Bridge one accepted Twilio Media Stream to a new Speakr session until either ends.

    Never raises for anything the peers do: protocol errors are counted and
    dropped, transport failures end the call with a reason. Returns how it went.
    """
    call = _Call(twilio, settings)
    if settings.observe is not None:
        settings.observe(call.result, call.ledger)
    settings.metrics.calls_total.inc()
    settings.metrics.calls_active.inc()
    try:
        result = await call.run()
    finally:
        settings.metrics.calls_active.dec()
        settings.metrics.calls_ended.labels(call.result.reason).inc()
    call.log.info(
        "call ended: %s (uplink %d frames, %d bytes dropped; ready after %s ms)",
        result.reason, result.uplink_frames, result.uplink_dropped_bytes,
        "-" if result.start_to_ready_s is None else f"{result.start_to_ready_s * 1000:.0f}",
    )
    return result

