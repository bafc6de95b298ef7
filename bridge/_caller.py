"""The caller leg: Twilio's Media Stream, the playback ledger and the uplink, for any agent leg.

Theory of operation
-------------------
:class:`CallerLeg` is the call's Twilio side and the :class:`~bridge._legs.CallPort` every agent leg talks to.

* **Receiver** (:meth:`CallerLeg.receive`, one of the call's three tasks) reads the Media Stream. ``start``
  fixes the call's ids and per-call parameters (and so which agent answers). Caller audio goes into the
  uplink: μ-law decoded when the agent wants PCM, re-cut into the agent's frames
  (:class:`~bridge._uplink.UplinkFramer`, which holds the last second until the agent is ready), and queued on
  the uplink channel for the agent's sender. While the sender is parked on an empty channel and the agent's
  socket has room, the receiver sends a frame itself instead of queueing it (no task hop per frame); any put
  ends that, so nothing queued is overtaken, and a slow agent still fills the channel. Twilio's returned marks
  go to the ledger; a segment played in full goes on the uplink to agents that want to know
  (:attr:`~bridge._legs.Capabilities.reports_played`).
* **Downlink** (:meth:`CallerLeg.play` and the interruptions, called by the agent leg's receiver): the ledger
  decides what is sent, held, replayed or dropped; this leg turns its actions into Twilio messages. It is the
  only writer of the Twilio socket.

The ledger and the framer are plain objects shared by two tasks; Trio runs one task at a time and every
mutation is synchronous, so no lock is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import trio

import codec
from bridge import _twilio
from bridge._errors import CallEnded, TwilioProtocolError
from bridge._ledger import Interrupted, PlaybackLedger, SegmentPlayed, SendClear, SendMark, SendMedia
from bridge._legs import AgentClosed, AgentLeg, Capabilities, Digit, UplinkItem
from bridge._metrics import AGENT_INFO_KINDS, bounded_label
from bridge._uplink import UplinkFramer

if TYPE_CHECKING:
    from bridge._call import _Call

__all__ = ["CallerLeg"]

#: Uplink channel (caller receiver -> agent sender), in items: frames (20-32 ms each) and the occasional
#: control item. About 1 s of caller audio, never less than 32 items: enough to ride out an agent hiccup,
#: small enough that a stalled agent never makes us queue seconds of stale speech. Past it, new audio frames
#: are dropped and counted (``uplink_overflow``); control items are never dropped. One second is also what the
#: framer holds until the agent is ready, so the held preroll always fits when it is released: 32 frames of
#: 512 bytes of PCM, 50 frames of 160 bytes of μ-law (see :func:`uplink_channel_items`).
UPLINK_CHANNEL_ITEMS = 32
#: Largest Twilio message we parse (Twilio's are ~300 characters); larger ones are dropped and counted before
#: any JSON work.
TWILIO_MAX_MESSAGE_CHARS = 64 * 1024
#: Largest decoded Twilio media payload we accept: Twilio sends 160 bytes.
TWILIO_MAX_PAYLOAD_BYTES = 16_000
#: Agent audio sent to Twilio and not yet confirmed played, at most: 120 s of μ-law. An agent that runs
#: further ahead than this has its excess dropped and counted (``downlink_overflow``), so what one call holds
#: in memory stays bounded whatever the agent sends.
MAX_UNPLAYED_BYTES = 8000 * 120
#: Real-time rule for overload: caller audio arriving more than this behind Twilio's stream clock (relative to
#: the best seen) is stale, dropped and counted (``stale_uplink``) rather than forwarded seconds late. Normal
#: jitter is a few milliseconds; a backlog this deep means the server is overloaded, and forwarding it would
#: only delay every answer of the agent.
STALE_UPLINK_S = 0.5
#: Extra time allowed after the agent's end for Twilio to confirm the last audio played.
END_PLAYOUT_GRACE_S = 1.0
#: How often the per-call hot-path counters are folded into the registry.
COUNTER_FLUSH_FRAMES = 50


def uplink_channel_items(caps: Capabilities) -> int:
    """Items of the uplink channel for an agent's frames: one second of its uplink audio, at least 32."""
    bytes_per_second = 16000 if caps.uplink_pcm else 8000
    return max(UPLINK_CHANNEL_ITEMS, math.ceil(bytes_per_second / caps.uplink_frame_bytes))


class CallerLeg:
    """The Twilio side of one call, and the port its agent leg plays through (see the module docstring)."""

    def __init__(self, runner: _Call) -> None:
        self.runner = runner
        self.twilio = runner.twilio
        self.settings = runner.settings
        self.config = runner.config
        self.metrics = runner.metrics
        self.result = runner.result
        self.log = runner.log
        self.counters = runner.counters
        self.started = runner.started
        self.ended = runner.ended
        self.ledger = PlaybackLedger()
        self.framer: UplinkFramer | None = None
        self.agent: AgentLeg | None = None
        self._start: _twilio.Start | None = None
        self._parameters: Mapping[str, str] = {}
        self.uplink_send, self.uplink_recv = trio.open_memory_channel[tuple[UplinkItem, float]](
            UPLINK_CHANNEL_ITEMS
        )
        # The agent's sender waits on an empty uplink channel (see send_now); set by the runner's sender.
        self.sender_idle = False
        self.ready_event = trio.Event()
        self.sending = False  # the runner's sender has started (see sender_started)
        self.playout_done = trio.Event()  # set when the ledger goes idle after the agent's end
        self.ending_after_playout = False
        self.stalled_since: float | None = None  # first uplink overflow of the current stall
        self.min_lag = math.inf  # smallest (wall time - Twilio stream time) seen: see is_stale()
        self.dropping_stale = False
        self.twilio_closed = False
        self.t_start = 0.0
        self.last_media = 0.0  # when caller audio last arrived: see the runner's idle watch
        self.turn_ended_at: float | None = None  # the agent's VAD said the caller stopped (turn latency)
        self.hop_uplink = runner.metrics.hop_latency.labels("uplink")
        self.hop_downlink = runner.metrics.hop_latency.labels("downlink")

    def detach(self) -> None:
        """The call is over: drop the references to the runner and the agent leg (they point back here)."""
        self.runner = None  # type: ignore[assignment]
        self.agent = None

    # --- the port: what the agent leg reads -----------------------------------------------------

    @property
    def start(self) -> _twilio.Start | None:
        return self._start

    @property
    def parameters(self) -> Mapping[str, str]:
        return self._parameters

    def end(self, reason: str) -> None:
        self.runner.end(reason)

    async def give_up(self, reason: str) -> None:
        await self.runner.give_up(reason)

    def count_error(self, kind: str, detail: str) -> None:
        peer = self.agent.capabilities.name if self.agent is not None else "agent"
        self.runner.count_error(peer, kind, detail)

    def log_event(self, level: int, key: str, msg: str, *args: Any, errors: bool = False) -> None:
        self.runner.log_event(level, key, msg, *args, errors=errors)

    def agent_info(self, kind: str, message: str) -> None:
        name = self.agent.capabilities.name if self.agent is not None else "agent"
        self.metrics.agent_info.labels(bounded_label(kind, AGENT_INFO_KINDS)).inc()
        self.log_event(logging.WARNING, "info", "%s info (%s): %.200r", name, kind, message)

    def transcript(self, role: str, text: str) -> None:
        if not text:
            return
        self.log_event(logging.INFO, f"transcript:{role}", "%s: %.300s", role, text)
        observer = self.settings.observer
        if observer is not None:
            observer.transcript_text(role, text)

    def barge_in(self, kind: str) -> None:
        self.metrics.barge_in.labels(kind).inc()
        self.result.barge_in[kind] = self.result.barge_in.get(kind, 0) + 1
        if self.settings.observer is not None:
            self.settings.observer.barge_in(kind)
        name = self.agent.capabilities.name if self.agent is not None else "agent"
        self.log_event(logging.INFO, kind, "%s %s", name, kind)

    def outcome(self, achieved: bool, summary: str) -> None:
        self.log_event(logging.INFO, "outcome", "goal %s: %.200s", "achieved" if achieved else "not achieved",
                       summary)
        if self.settings.observer is not None:
            self.settings.observer.goal_outcome(achieved, summary)

    def name_session(self, session_id: str) -> None:
        self.result.session_id = session_id

    def caller_stopped(self) -> None:
        self.turn_ended_at = trio.current_time()

    # --- the port: downlink -------------------------------------------------------------------

    async def play(
        self, key: Hashable, ulaw: bytes, *, close: bool = False, received: int | None = None
    ) -> None:
        if self._start is None:
            self.count_error("media_before_start", "agent audio before Twilio start")
            return
        t0 = trio.current_time()
        counters = self.counters
        counters.agent_media_in += 1
        counters.agent_bytes_in += len(ulaw) if received is None else received
        if self.ledger.unplayed_bytes + len(ulaw) > MAX_UNPLAYED_BYTES:
            self.metrics.dropped.labels("downlink_overflow").inc()
            self.log_event(
                logging.WARNING, "downlink_overflow", "the agent is more than %d s ahead: audio dropped",
                MAX_UNPLAYED_BYTES // 8000, errors=True,
            )
            return
        await self.send_twilio(self.ledger.append(key, ulaw, t0, close=close))
        now = trio.current_time()
        self.hop_downlink.observe(now - t0)
        if self.turn_ended_at is not None and ulaw:
            agent = self.agent.capabilities.name if self.agent is not None else "agent"
            self.metrics.turn_latency.labels(agent, "bridge").observe(now - self.turn_ended_at)
            self.turn_ended_at = None

    async def close_segment(self, key: Hashable) -> None:
        if self._start is not None:
            self.apply(self.ledger.close_segment(key))

    async def play_tail(self, ulaw: bytes) -> None:
        if self._start is not None:
            await self.send_twilio(self.ledger.tail(ulaw, trio.current_time()))

    async def clear(self) -> list[Interrupted]:
        if self._start is None:
            return []
        actions = self.ledger.clear(trio.current_time())
        await self.send_twilio(actions)
        return [a for a in actions if type(a) is Interrupted]

    async def pause(self) -> list[Interrupted]:
        if self._start is None:
            return []
        actions = self.ledger.pause(trio.current_time())
        await self.send_twilio(actions)
        return [a for a in actions if type(a) is Interrupted]

    async def resume(self) -> None:
        if self._start is None:
            return
        actions = self.ledger.resume(trio.current_time())
        if not actions:
            self.log_event(logging.INFO, "continue_ignored", "continue with nothing paused: ignored")
        await self.send_twilio(actions)

    @property
    def playing(self) -> bool:
        return self.ledger.unplayed_bytes > 0

    def heard_ms(self, key: Hashable) -> int | None:
        return self.ledger.heard_ms(key, trio.current_time())

    async def send_twilio(self, actions: list[Any]) -> None:
        stream_sid = self._start.stream_sid  # type: ignore[union-attr]
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
        self.apply(actions)

    def apply(self, actions: list[Any]) -> None:
        """Ledger reports: a segment played in full goes to agents that want to know."""
        agent = self.agent
        for action in actions:
            if type(action) is SegmentPlayed and agent is not None and agent.capabilities.reports_played:
                self.metrics.statuses.inc()
                self.put_control(action)
        if self.ending_after_playout and self.ledger.idle:
            self.playout_done.set()

    async def finish(self, reason: str) -> None:
        """The agent is done: play out what was sent (bounded), then hang up the stream."""
        self.log.info("agent end (%s): playing out %d bytes", reason, self.ledger.pending_bytes)
        if self._start is not None:
            self.ending_after_playout = True
            if not self.ledger.idle:
                bound_s = self.ledger.pending_bytes / 8000 + END_PLAYOUT_GRACE_S
                with trio.move_on_after(bound_s):
                    await self.playout_done.wait()
            if self.settings.hangup is not None:
                # Before end(): that gives the call only CLOSE_TIMEOUT_S more, and a slow REST answer must
                # not let the fallback apology play after a normal goodbye.
                with trio.move_on_after(self.runner.hangup_timeout_s):
                    await self.settings.hangup(self._start.call_sid)
        await self.runner.give_up(reason)  # its audio has played (and the call is hung up): close both sides

    # --- the port: uplink -----------------------------------------------------------------------

    def ready(self) -> None:
        if self.ready_event.is_set():
            self.count_error("second_ready", "ready received twice")
            return
        self.ready_event.set()
        waited = trio.current_time() - self.t_start if self._start is not None else 0.0
        self.result.start_to_ready_s = waited
        self.metrics.agent_ready.observe(waited)
        name = self.agent.capabilities.name if self.agent is not None else "agent"
        self.log.info("%s ready after %.0f ms", name, waited * 1000)
        if self.sending:
            self._release_held()

    def sender_started(self) -> None:
        """The runner's sender is draining the uplink (the call may reach its agent: not held for AMD)."""
        self.sending = True
        if self.ready_event.is_set():
            self._release_held()

    def _release_held(self) -> None:
        """The agent is ready and the sender is running: the held preroll goes out, then live audio."""
        if self.framer is None or self.framer.ready:
            return
        now = trio.current_time()
        held = self.framer.start()
        for frame in held:
            self.put_frame(frame, now)
        self.log.info("%d held frames flushed", len(held))

    def put_frame(self, frame: bytes, t_received: float) -> None:
        try:
            self.uplink_send.send_nowait((frame, t_received))
            self.sender_idle = False  # it has an item now: what follows must queue behind it
            self.stalled_since = None
        except trio.WouldBlock:
            # The agent is not taking caller audio: drop (counted), and give up on a lasting stall.
            self.metrics.dropped.labels("uplink_overflow").inc()
            self.result.uplink_dropped_bytes += len(frame)
            name = self.agent.capabilities.name if self.agent is not None else "agent"
            if self.stalled_since is None:
                self.stalled_since = t_received
                self.log_event(
                    logging.WARNING, "uplink_overflow", "%s is not keeping up: dropping caller audio", name,
                    errors=True,
                )
            elif t_received - self.stalled_since > self.config.agent_stall_timeout_s:
                stalled_s = t_received - self.stalled_since
                self.log_event(
                    logging.ERROR, "stalled", "%s stalled for %.1f s", name, stalled_s, errors=True
                )
                self.runner.spawn(self.runner.give_up, "agent_stalled")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the call is ending; the sender is gone

    def put_control(self, item: UplinkItem) -> None:
        try:
            self.uplink_send.send_nowait((item, 0.0))
            self.sender_idle = False
        except trio.WouldBlock:
            # Never drop a control item: let it in above the audio bound (they are rare).
            self.runner.spawn(self._put_later, item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _put_later(self, item: UplinkItem) -> None:
        try:
            await self.uplink_send.send((item, 0.0))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def send_now(self, frame: bytes, t_received: float) -> None:
        """Send one caller frame from the receiver itself: no task hop.

        Only while the sender is parked on an empty uplink channel (so nothing queued can be overtaken, and
        nobody else is writing the agent's socket) and the socket takes data without waiting (so a slow agent
        still fills the channel and meets its overflow rule, as ever).
        """
        agent = self.agent
        assert agent is not None
        try:
            await agent.send(frame)
        except AgentClosed:
            return  # the agent's receiver sees the same close and ends the call (agent_disconnect)
        counters = self.counters
        counters.agent_frames_out += 1
        counters.agent_bytes_out += len(frame)
        self.result.uplink_frames += 1
        self.hop_uplink.observe(trio.current_time() - t_received)
        self.stalled_since = None

    def finish_uplink(self) -> None:
        """Twilio is done: queue the last partial frame (padded) and close the uplink."""
        framer = self.framer
        if framer is not None:
            if framer.ready:
                last = framer.finish()
                if last is not None:
                    self.put_frame(last, trio.current_time())
            self.result.uplink_dropped_bytes += framer.dropped_bytes
            if framer.dropped_bytes:
                self.metrics.dropped.labels("preroll").inc()
        self.uplink_send.close()

    # --- the receiver task ----------------------------------------------------------------------

    def parse(self, data: str | bytes) -> _twilio.TwilioEvent | None:
        """One Twilio message as an event, or None (counted and logged) when it is bad."""
        if len(data) > TWILIO_MAX_MESSAGE_CHARS:
            self.runner.count_error("twilio", "too_large", f"message of {len(data)} characters dropped")
            return None
        try:
            return _twilio.parse_event(data, max_payload_bytes=TWILIO_MAX_PAYLOAD_BYTES)
        except TwilioProtocolError as exc:
            self.runner.count_error("twilio", exc.kind, exc.detail)
            return None

    async def receive(self) -> None:
        """Read Twilio until it stops; feed the uplink and the ledger."""
        parse = self.parse
        counters = self.counters
        put = self.put_frame
        observer = self.settings.observer
        try:
            with trio.move_on_after(self.config.stream_start_timeout_s) as start_scope:
                while self._start is None:
                    await self.before_start(await self.twilio.receive())
            if start_scope.cancelled_caught:
                self.metrics.calls_rejected.labels("no_start").inc()
                self.runner.abort("twilio_no_start")
                return
            # Known once start is accepted: the recording is opened there (per frame only when recording).
            record_audio = None if observer is None or observer.recording is None else observer.caller_audio
            agent = self.agent
            assert agent is not None and self.framer is not None
            framer = self.framer
            decode = codec.ulaw_decode if agent.capabilities.uplink_pcm else None
            writable = agent.writable
            while True:
                event = parse(await self.twilio.receive())
                if type(event) is _twilio.Media:
                    # The hot path, inline: decode, re-frame, send or queue.
                    now = self.last_media = trio.current_time()
                    payload = event.payload
                    if record_audio is not None:
                        record_audio(payload)
                    if event.timestamp_ms is not None and self.is_stale(now, event.timestamp_ms):
                        continue
                    counters.twilio_frames_in += 1
                    counters.twilio_bytes_in += len(payload)
                    for frame in framer.feed(decode(payload) if decode is not None else payload):
                        if self.sender_idle and writable():
                            await self.send_now(frame, now)
                        else:
                            put(frame, now)
                    if counters.twilio_frames_in >= COUNTER_FLUSH_FRAMES:
                        counters.flush(self.metrics)
                elif event is not None and self.after_start(event):
                    return
        except CallEnded as exc:
            self.runner.end(exc.reason)
        finally:
            self.finish_uplink()

    def is_stale(self, now: float, timestamp_ms: int) -> bool:
        """True for caller audio that reaches us too late to be worth forwarding (then counted).

        ``timestamp_ms`` is Twilio's stream clock. ``now - timestamp`` is constant while we keep up (network
        jitter aside); its smallest value so far is the baseline. When the server falls behind, frames queue
        in socket buffers and arrive ever later: past STALE_UPLINK_S behind the baseline they are dropped, so
        the agent hears the caller live instead of seconds late.
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

    async def before_start(self, data: str | bytes) -> None:
        """Handle one message before ``start`` (connected, start, or out-of-order input)."""
        event = self.parse(data)
        if event is None:
            return
        if isinstance(event, _twilio.Start):
            await self.accept_start(event)
        elif isinstance(event, _twilio.Connected):
            self.log.debug("twilio connected (protocol %s %s)", event.protocol, event.version)
        elif isinstance(event, _twilio.Stop):
            raise CallEnded("twilio_stop")
        else:
            self.runner.count_error("twilio", "before_start", f"{type(event).__name__} before start")

    async def accept_start(self, event: _twilio.Start) -> None:
        if self.settings.authorize is not None:
            refusal = await self.settings.authorize(event)
            if refusal is not None:
                self.metrics.calls_rejected.labels(refusal).inc()
                self.result.call_sid, self.result.stream_sid = event.call_sid, event.stream_sid
                self.log.warning("stream refused: %s", refusal)
                raise CallEnded(f"refused_{refusal}")
        self.result.call_sid, self.result.stream_sid = event.call_sid, event.stream_sid
        self._parameters = event.custom_parameters
        agent = self.runner.choose_agent(self)
        self.agent = agent
        caps = agent.capabilities
        self.counters.name_agent(caps.name)
        items = uplink_channel_items(caps)
        if items != UPLINK_CHANNEL_ITEMS:
            # Nothing was queued yet (only the started call queues); the runner reads the channel after start.
            self.uplink_send, self.uplink_recv = trio.open_memory_channel[tuple[UplinkItem, float]](items)
        self.framer = UplinkFramer(frame_bytes=caps.uplink_frame_bytes, pcm=caps.uplink_pcm)
        self._start = event
        self.t_start = self.last_media = trio.current_time()
        if self.settings.observer is not None:
            self.settings.observer.started(event)
            self.ledger.on_played = self.settings.observer.heard
        self.log.info(
            "stream started, agent %s (%s)",
            caps.name,
            ", ".join(sorted(event.custom_parameters)) or "no parameters",
        )
        self.started.set()

    def after_start(self, event: _twilio.TwilioEvent) -> bool:
        """Handle a non-media Twilio event after ``start``; True when the call is over."""
        if isinstance(event, _twilio.Mark):
            self.apply(self.ledger.mark_returned(event.name, trio.current_time()))
        elif isinstance(event, _twilio.Stop):
            self.runner.end("twilio_stop")
            return True
        elif isinstance(event, _twilio.Dtmf):
            self.metrics.dtmf.inc()
            self.log_event(logging.INFO, "dtmf", "dtmf %s", event.digit)
            if self.settings.observer is not None:
                self.settings.observer.dtmf_digit(event.digit)
            agent = self.agent
            if agent is not None and agent.capabilities.takes_text:
                self.put_control(Digit(event.digit))
            else:
                name = agent.capabilities.name if agent is not None else "the agent"
                self.log_event(logging.INFO, "dtmf_unsent", "%s takes no text: dtmf %s not forwarded",
                               name, event.digit)
        elif isinstance(event, _twilio.Start):
            self.runner.count_error("twilio", "second_start", "a second start was ignored")
        else:  # Connected again
            self.runner.count_error("twilio", "unexpected_event", type(event).__name__)
        return False

    async def close_twilio(self) -> None:
        if not self.twilio_closed:
            self.twilio_closed = True
            await self.twilio.close(1000)
