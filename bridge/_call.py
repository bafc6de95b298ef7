"""The call runner: one Twilio Media Stream bridged to one agent session, whatever the agent.

Theory of operation
-------------------
:func:`run_call` owns one Trio nursery with the call's three tasks and a supervisor:

* **caller receiver** (:meth:`bridge._caller.CallerLeg.receive`) reads the Media Stream; its ``start`` picks
  the agent (the call's ``agent`` parameter, else ``AGENT``) and creates the agent leg;
* **agent sender** (:meth:`_Call.agent_sender`) waits until the agent leg can take caller audio, then drains
  the uplink channel in order into :meth:`bridge._legs.AgentLeg.send` (the leg serialises its own wire);
* **agent receiver** (:meth:`bridge._legs.AgentLeg.run`) opens the agent's session and turns what the agent
  says into calls on the caller leg (play, clear, pause, resume, ready, transcript, finish);
* **supervisor**: the agent's ready timeout, the dead-stream watch, the server's shutdown and the API's
hang-up.

The runner knows no wire and no backend: backends differ only by the capabilities their legs declare
(:class:`bridge._legs.Capabilities`).

Ending: whichever side ends first records the reason (first one wins). Twilio hanging up (``stop`` or a closed
socket) closes the uplink channel; the sender sends what is queued plus the last partial frame, padded, and
the leg closes its session cleanly. The agent ending (its end after the last audio has played, a drop, a
failure) closes the Twilio socket, so Twilio plays the TwiML after ``</Connect>``. Either way the nursery is
given
:data:`CLOSE_TIMEOUT_S` to unwind and is then cancelled, and a shielded cleanup closes whatever is still open:
no task outlives its call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from bridge import _twilio
from bridge._caller import CallerLeg
from bridge._config import Config
from bridge._ledger import PlaybackLedger
from bridge._legs import CLOSE_TIMEOUT_S, AgentClosed, AgentLeg
from bridge._logging import LogThrottle
from bridge._metrics import CallCounters, Metrics
from bridge.agents import AGENTS, make_leg

if TYPE_CHECKING:
    from bridge._records import CallObserver

__all__ = ["CLOSE_TIMEOUT_S", "TwilioSocket", "CallResult", "CallSettings", "run_call"]

logger = logging.getLogger("bridge.call")

#: Bound on the REST request that completes a call after the agent's end.
HANGUP_TIMEOUT_S = 5.0
#: Bad input is always counted; per call and kind, the first few are logged, then every 100th.
LOGGED_ERRORS_PER_KIND = 5
#: Normal but peer-driven events (barge-in, ``info``, DTMF): a real call has a handful, so the first
#: 50 of each kind per call are logged, then every 100th; a flood stays a few lines.
LOGGED_EVENTS_PER_KIND = 50
LOG_EVERY_NTH = 100


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
    """What a call needs from the app: configuration, metrics, the agents' addresses, hooks."""

    config: Config
    metrics: Metrics
    #: The Speakr agent's URL (``SPEAKR_WS_URL`` with its key, or the built-in local agent's): for calls that
    #: Speakr answers. Carries the API key in its query.
    agent_url: str = field(repr=False, default="")
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
    #: Makes the agent leg that answers a call (default: :func:`bridge.agents.make_leg`).
    make_leg: Callable[[str, Any, CallSettings], AgentLeg] | None = None
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
    agent: str | None = None
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
    """One call's lifecycle: the nursery, the tasks, ending (see the module docstring)."""

    hangup_timeout_s = HANGUP_TIMEOUT_S

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
        self.started = trio.Event()  # Twilio start accepted (and authorized), the agent leg made
        self.ended = trio.Event()  # a reason to end was recorded
        self.nursery: trio.Nursery | None = None
        self.caller = CallerLeg(self)

    @property
    def agent(self) -> AgentLeg | None:
        return self.caller.agent

    def choose_agent(self, caller: CallerLeg) -> AgentLeg:
        """The leg for the backend this call asks for (its ``agent`` parameter), else the configured one."""
        name = self.config.agent
        asked = caller.parameters.get("agent")
        if asked is not None and asked.strip():
            if asked.strip().lower() in AGENTS:
                name = asked.strip().lower()
            else:
                detail = f"agent parameter {asked[:40]!r} is not a backend"
                self.count_error("twilio", "unknown_agent", detail)
        self.result.agent = name
        make = self.settings.make_leg or make_leg
        return make(name, caller, self.settings)

    # --- ending -----------------------------------------------------------------

    def end(self, reason: str) -> None:
        """Record why the call ends (first reason wins) and give it a second to unwind."""
        if self.result.reason == "unknown":
            self.result.reason = reason
            self.log.info("call ending: %s", reason)
        self.ended.set()
        if self.nursery is not None:
            agent = self.agent
            if agent is None or not agent.connected:
                self.nursery.cancel_scope.cancel()  # no agent session yet: nothing to flush
            deadline = trio.current_time() + CLOSE_TIMEOUT_S
            scope = self.nursery.cancel_scope
            scope.deadline = min(scope.deadline, deadline)

    def abort(self, reason: str) -> None:
        """End now: cancel every task (cleanup still closes both sides)."""
        self.end(reason)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)

    async def give_up(self, reason: str) -> None:
        """End the call now from our side: both sides are closed (the caller, unless already hung up through
        the REST API, hears the TwiML after ``</Connect>``: the fallback) and every task is cancelled.

        The reason is recorded first (so no other task's view of the closing sockets replaces it) and both
        closes are shielded, so the cancellation that follows cannot cut them short.
        """
        if self.result.reason == "unknown":
            self.result.reason = reason
            self.log.info("call ending: %s", reason)
        with trio.CancelScope(shield=True):
            # Each side has its own budget: a Twilio side that hangs must not keep the (paid) agent session
            # open.
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self.caller.close_twilio()
            if self.agent is not None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self.agent.close()
        self.abort(reason)

    def count_error(self, peer: str, kind: str, detail: str) -> None:
        """Count bad input; log the first few of each kind, then every hundredth (a flood of garbage must not
        become a flood of log lines)."""
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

    async def until_ended(self, *waits: Callable[[], Any]) -> bool:
        """Await each of ``waits`` in turn; False if the call ends first (or a wait answers False)."""
        async with trio.open_nursery() as race:
            async def watch() -> None:
                await self.ended.wait()
                race.cancel_scope.cancel()
            race.start_soon(watch)
            for wait in waits:
                if await wait() is False:
                    race.cancel_scope.cancel()
                    return False
            race.cancel_scope.cancel()
            return True
        return False

    # --- the agent's two tasks ----------------------------------------------------------------

    async def agent_receiver(self) -> None:
        """Once the call has started: the agent leg's own session. It opens even while the call is held for
        its answering-machine result (the sender waits for that), so the agent is ready when a person
        answers."""
        if not await self.until_ended(self.started.wait):
            return
        assert self.agent is not None
        await self.agent.run()

    async def agent_sender(self) -> None:
        """Wait until the agent takes caller audio, then drain the uplink channel into it, in order."""
        if not await self.until_ended(self.started.wait, self.agent_allowed):
            return
        agent = self.agent
        assert agent is not None
        if not await self.until_ended(agent.wait_sendable):
            return
        caller = self.caller
        caller.sender_started()
        counters = self.counters
        hop = caller.hop_uplink
        recv = caller.uplink_recv
        send = agent.send
        item: Any = None
        try:
            while True:
                try:
                    item, t_received = recv.receive_nowait()
                except trio.WouldBlock:
                    # Parked on an empty channel: until a put wakes us (and clears the flag), the caller
                    # receiver may send frames itself (CallerLeg.send_now).
                    caller.sender_idle = True
                    try:
                        item, t_received = await recv.receive()
                    except trio.EndOfChannel:
                        break
                except trio.EndOfChannel:
                    break
                await send(item)
                if type(item) is bytes:
                    counters.agent_frames_out += 1
                    counters.agent_bytes_out += len(item)
                    self.result.uplink_frames += 1
                    hop.observe(trio.current_time() - t_received)
            caller.sender_idle = False
            # Twilio is gone and everything queued was sent: end the agent's session cleanly.
            await agent.finish_uplink()
        except AgentClosed:
            self.end("agent_disconnect")
            if type(item) is bytes:  # the frame in flight (the agent was closed first, as at shutdown)
                self.metrics.dropped.labels("unsent_at_end").inc()
                self.result.uplink_dropped_bytes += len(item)

    # --- the supervisor -----------------------------------------------------------------------

    async def supervisor(self) -> None:
        """Enforce the agent's ready timeout and the server's shutdown order.

        An agent that is not ready in time ends the call, so the caller hears the fallback TwiML instead of
        silence.
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
                await self.until_ended(self.caller.ready_event.wait)
            if ready_scope.cancelled_caught:
                name = self.agent.capabilities.name if self.agent is not None else "agent"
                self.log.error("%s not ready %.1f s after start", name, self.config.agent_ready_timeout_s)
                self.metrics.calls_rejected.labels("agent_not_ready").inc()
                await self.give_up("agent_not_ready")
            await self.ended.wait()
            nursery.cancel_scope.cancel()

    async def idle_watch(self) -> None:
        """End a started stream that has gone silent: Twilio sends media every 20 ms for the whole call, so a
        stream with none for ``stream_idle_timeout_s`` is half-open (the caller's side vanished without a
        close), and it must not hold a call slot and a paid agent session.

        The receiver only stamps ``last_media``; this task wakes about once per timeout.
        """
        idle_s = self.config.stream_idle_timeout_s
        caller = self.caller
        while True:
            await trio.sleep_until(caller.last_media + idle_s)
            silent_s = trio.current_time() - caller.last_media
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
                nursery.start_soon(self.caller.receive)
                nursery.start_soon(self.agent_receiver)
                nursery.start_soon(self.agent_sender)
                nursery.start_soon(self.supervisor)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S) as cleanup:
                cleanup.shield = True
                await self.cleanup()
            self.count_unsent()
            self.counters.flush(self.metrics)
            if self.result.reason == "unknown":
                self.result.reason = "cancelled"
            ledger = self.caller.ledger
            stats = self.result.ledger_stats = ledger.stats
            marks = self.metrics.marks
            marks.labels("played").inc(stats.marks_played)
            marks.labels("cleared").inc(stats.marks_cleared)
            marks.labels("unknown").inc(stats.unknown_marks)
            if stats.overflow_bytes:
                self.metrics.dropped.labels("paused_overflow").inc()
            if self.settings.observer is not None:
                self.settings.observer.ended(self.result)
            self.nursery = None
            # The legs point at each other and at the runner: cut those cycles, so an ended call is freed at
            # once, without waiting for a full garbage collection.
            self.caller.detach()
        return self.result

    def count_unsent(self) -> None:
        """Count the caller audio still queued when the call is over (the agent was closed first, as at
        shutdown, where the caller's last partial frame is queued after the agent is gone): lost audio is
        always counted, here as ``unsent_at_end``."""
        while True:
            try:
                item, _ = self.caller.uplink_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if type(item) is bytes:
                self.metrics.dropped.labels("unsent_at_end").inc()
                self.result.uplink_dropped_bytes += len(item)

    async def cleanup(self) -> None:
        agent = self.agent
        if agent is not None and agent.connected:
            # Cancelled before the sender could finish: send what is queued, then close.
            if self.caller.ready_event.is_set():
                while True:
                    try:
                        item, _ = self.caller.uplink_recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    try:
                        await agent.send(item)
                    except AgentClosed:
                        break
            await agent.close()
        await self.caller.close_twilio()


async def run_call(twilio: TwilioSocket, settings: CallSettings) -> CallResult:
    """Bridge one accepted Twilio Media Stream to a new agent session until either ends.

    Never raises for anything the peers do: protocol errors are counted and
    dropped, transport failures end the call with a reason. Returns how it went.
    """
    call = _Call(twilio, settings)
    if settings.observe is not None:
        settings.observe(call.result, call.caller.ledger)
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

