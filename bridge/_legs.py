"""The two legs of a call and the small neutral vocabulary they speak to each other.

Theory of operation
-------------------
A call joins two legs:

* the **caller leg** (:mod:`bridge._caller`): Twilio's Media Stream. It owns the Twilio socket, the playback
  ledger (what the caller heard, confirmed by Twilio marks) and the uplink (caller audio re-cut into the
  agent's frames, held until the agent is ready, queued or sent at once);
* one **agent leg** per backend (:mod:`bridge.agents.speakr`, :mod:`bridge.agents.openai`,
  :mod:`bridge.agents.deepgram`, :mod:`bridge.agents.cascade`): it owns the agent's socket (or HTTP client)
  and is the only place that knows the agent's wire.

The runner (:mod:`bridge._call`) runs the call's three tasks in one nursery: the caller leg's receiver, the
agent leg's sender (draining the uplink channel) and the agent leg's receiver (:meth:`AgentLeg.run`), plus a
supervisor.

What crosses between the legs, and nothing else:

caller -> agent (the uplink channel, in order, drained by the agent's sender)
    ``bytes``: caller audio, already in the agent's uplink format (:attr:`Capabilities.uplink_pcm`,
    :attr:`Capabilities.uplink_frame_bytes`); :class:`~bridge._ledger.SegmentPlayed`: a segment of agent audio
    played in full (only to legs with :attr:`Capabilities.reports_played`); :class:`Digit`: a DTMF key. The
    channel closing means the caller hung up.
agent -> caller (direct calls on :class:`CallPort`, from the agent's tasks)
    agent audio for a segment (opaque key, may grow, closed when complete); interruptions, hard
    (:meth:`CallPort.clear`) and soft (:meth:`CallPort.pause` / :meth:`CallPort.resume`), each answering with
    :class:`~bridge._ledger.Interrupted` = "segment K was cut after N ms heard"; ready (release held caller
    audio); transcript text; the agent's VAD saying the caller stopped (for turn latency); end of the call
    after the audio already sent has played out.

Backends differ by the :class:`Capabilities` their leg declares, never by branches in the runner.
"""

from __future__ import annotations

import abc
import math
import select
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import trio
import trio_websocket

from bridge._errors import CallEnded, ProtocolError
from bridge._ledger import Interrupted, SegmentPlayed

if TYPE_CHECKING:
    import logging

    from bridge import _twilio
    from bridge._config import Config
    from bridge._metrics import Metrics

__all__ = [
    "AgentClosed",
    "AgentLeg",
    "Capabilities",
    "CallPort",
    "Digit",
    "Interrupted",
    "SegmentPlayed",
    "UplinkItem",
    "WebSocketAgentLeg",
]

T = TypeVar("T")

#: Caller audio per message to a μ-law passthrough agent (OpenAI, Deepgram): 256 bytes = 32 ms, the cadence
#: Speakr's 512-byte PCM frames have. Both services take chunks of any size; one message per Twilio frame
#: (20 ms) cost more in sends than passthrough saves in transcoding (measured in instructions: +4.4 % per
#: call-second over Speakr for OpenAI, +2.5 % for Deepgram; at 32 ms, -5.9 % and -7.9 %), for at most 12 ms
#: of framing wait, as Speakr has.
UPLINK_FRAME_BYTES = 256
#: Time for a socket to close once a call has ended (one value for every leg).
CLOSE_TIMEOUT_S = 1.0
#: Connection attempts to the agent before the caller is handed to the fallback; a refused or failed
#: connection is retried once, quickly (the caller hears nothing of it).
AGENT_CONNECT_ATTEMPTS = 2
AGENT_RETRY_DELAY_S = 0.2


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an agent leg takes and gives; the runner and the caller leg read only this."""

    #: The backend's name: ``speakr``, ``openai``, ``deepgram`` or ``cascade`` (metric and log label).
    name: str
    #: Caller audio is decoded to PCM16LE 8 kHz before framing (else μ-law 8 kHz passes through as is).
    uplink_pcm: bool = False
    #: Caller audio goes out in frames of exactly this many bytes (in the uplink format); the last one is
    #: padded with silence at the end of the call.
    uplink_frame_bytes: int = 160
    #: Wants :class:`SegmentPlayed` on the uplink when a segment has played in full (Speakr's ``status``).
    reports_played: bool = False
    #: Takes text from the caller's side: DTMF keys go to it as :class:`Digit` (else they are only logged and
    #: kept in the call's record).
    takes_text: bool = False


@dataclass(frozen=True, slots=True)
class Digit:
    """The caller pressed a key (Twilio ``dtmf``)."""

    digit: str


UplinkItem = bytes | SegmentPlayed | Digit


class CallPort(Protocol):
    """What an agent leg may do to its call (implemented by the caller leg,
    :class:`bridge._caller.CallerLeg`).

    Every method is safe to call from the agent's tasks; none raises for what the caller's side does, except
    :class:`~bridge._errors.CallEnded` from the awaitable ones when the Twilio socket has closed.
    """

    config: Config
    metrics: Metrics
    #: Set once Twilio's ``start`` was accepted (and authorized).
    started: trio.Event
    #: Set once the call has a reason to end.
    ended: trio.Event

    @property
    def log(self) -> logging.LoggerAdapter[Any]:
        """The call's logger: every line carries the call's ids."""

    @property
    def start(self) -> _twilio.Start | None:
        """Twilio's ``start`` (call ids, ``custom_parameters``), once accepted."""

    @property
    def parameters(self) -> Mapping[str, str]:
        """The call's custom parameters (empty before ``start``)."""

    async def play(
        self, key: Hashable, ulaw: bytes, *, close: bool = False, received: int | None = None
    ) -> None:
        """Agent audio (μ-law 8 kHz) for segment ``key``: sent to Twilio now, or held while paused.

        ``close=True``: the segment is complete after this audio. ``received``: the bytes of audio the agent
        sent for it, when the leg transcoded them (counted as the agent's; default ``len(ulaw)``). Audio for a
        segment already cleared is dropped (the rest of an interrupted answer never plays).
        """

    async def close_segment(self, key: Hashable) -> None:
        """No more audio comes for ``key``: it is reported (:class:`SegmentPlayed`) once it has all played."""

    async def play_tail(self, ulaw: bytes) -> None:
        """Audio that belongs to no segment (a resampler's tail), played and waited for like the rest."""

    async def clear(self) -> list[Interrupted]:
        """Hard barge-in: Twilio ``clear`` now, every unplayed byte dropped; how much of each segment was
        heard."""

    async def pause(self) -> list[Interrupted]:
        """Soft barge-in: Twilio ``clear`` now, unplayed audio kept aside for :meth:`resume`."""

    async def resume(self) -> None:
        """Play again what :meth:`pause` kept (from the piece that was playing), then the audio held since."""

    @property
    def playing(self) -> bool:
        """True while agent audio sent to the caller is not yet confirmed played (or is held by a pause)."""

    def heard_ms(self, key: Hashable) -> int | None:
        """How much of segment ``key`` the caller has heard so far (None: unknown key)."""

    def name_session(self, session_id: str) -> None:
        """The agent's own id for this session (shown in every log line of the call)."""

    def ready(self) -> None:
        """The agent takes caller audio now: the held preroll goes out, and audio from now on."""

    def caller_stopped(self) -> None:
        """The agent's VAD says the caller stopped speaking: the turn's latency runs from here to the next
        agent audio sent to Twilio."""

    def transcript(self, role: str, text: str) -> None:
        """A final piece of text said by ``role`` (``caller`` or ``agent``)."""

    def barge_in(self, kind: str) -> None:
        """Count and record an interruption the agent decided (``pause``, ``continue``, ``clear``)."""

    def outcome(self, achieved: bool, summary: str) -> None:
        """The agent's verdict on the call's goal (its ``end_call`` arguments), kept in the call's record."""

    def count_error(self, kind: str, detail: str) -> None:
        """Bad input from the agent: counted (``protocol_errors{peer=<backend>}``), the first few logged."""

    def agent_info(self, kind: str, message: str) -> None:
        """The agent reported a problem it survived (Speakr ``info``, OpenAI ``error``, Deepgram
        ``Warning``)."""

    def log_event(self, level: int, key: str, msg: str, *args: Any, errors: bool = False) -> None:
        """Log a line a peer can make us repeat, thinned by kind."""

    def end(self, reason: str) -> None:
        """Record why the call ends (first reason wins) and give it a second to unwind."""

    async def finish(self, reason: str) -> None:
        """The agent is done (its ``end``, or ``end_call``): play out what was sent (bounded), hang up."""

    async def give_up(self, reason: str) -> None:
        """End the call now from our side: the caller hears the fallback, the agent socket is closed."""


class AgentLeg(abc.ABC):
    """One agent session for one call. Subclasses declare :attr:`capabilities` and speak their wire."""

    capabilities: ClassVar[Capabilities]

    def __init__(self, call: CallPort) -> None:
        self.call = call

    @abc.abstractmethod
    async def run(self) -> None:
        """The agent receiver task: open the session (bounded, retried), then handle what the agent sends
        until it ends. Must end the call (``call.finish``/``call.give_up``) when the agent side ends or
        fails."""

    @abc.abstractmethod
    async def wait_sendable(self) -> bool:
        """Until the sender may write (session open, set-up sent); False if the call ends first."""

    @abc.abstractmethod
    async def send(self, item: UplinkItem) -> None:
        """Write one uplink item on the agent's wire. Raises :class:`AgentClosed` if the agent is gone."""

    def writable(self) -> bool:
        """True if :meth:`send` of one audio frame would not wait (lets the caller leg skip the task hop)."""
        return False

    @property
    def connected(self) -> bool:
        """True while the agent's session is open (there is something to flush and close)."""
        return False

    @abc.abstractmethod
    async def finish_uplink(self) -> None:
        """The caller hung up and every queued item was sent: end the session cleanly."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the agent session now (idempotent; called shielded, bounded by CLOSE_TIMEOUT_S)."""


class AgentClosed(Exception):
    """The agent's side is gone while sending to it."""


def _never() -> bool:
    return False


class WebSocketAgentLeg(AgentLeg):
    """An agent reached over one WebSocket: connection with a bound and one retry, clean close, drops.

    Subclasses give :meth:`url` and :meth:`headers`, then :meth:`session` (handshake and receive loop on the
    open socket). :attr:`ws` is the open socket, :attr:`opened` is set when it opens.
    """

    #: Largest agent message: beyond it trio-websocket closes the socket with 1009 (the call then ends).
    max_message_bytes: ClassVar[int] = 16 * 1024 * 1024
    #: Largest message :meth:`receive_event` parses (None: the leg's parser bounds what it reads itself).
    max_message_chars: ClassVar[int | None] = None
    receive_buffer_bytes: ClassVar[int] = 64 * 1024

    def __init__(self, call: CallPort) -> None:
        super().__init__(call)
        self.ws: trio_websocket.WebSocketConnection | None = None
        self._writable = _never

    @abc.abstractmethod
    def url(self) -> str:
        """The socket URL (may carry a key: never logged)."""

    def headers(self) -> list[tuple[str, str]]:
        """Extra handshake headers (may carry a key: never logged)."""
        return []

    async def receive_event(self, ws: trio_websocket.WebSocketConnection, parse: Callable[[Any], T]) -> T:
        """The agent's next message that parses. An oversized one (:attr:`max_message_chars`) is dropped
        before any parsing and a malformed one after it, each counted; neither ends the call."""
        call = self.call
        limit = self.max_message_chars
        while True:
            data = await ws.get_message()
            if limit is not None and len(data) > limit:
                call.count_error("too_large", f"message of {len(data)} characters dropped")
                call.metrics.dropped.labels("agent_too_large").inc()
                continue
            try:
                return parse(data)
            except ProtocolError as exc:
                call.count_error(exc.kind, exc.detail)

    @abc.abstractmethod
    async def session(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Handle the open session until the agent ends it. ``ConnectionClosed`` may escape."""

    @property
    def name(self) -> str:
        return self.capabilities.name

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.ws.closed is None

    async def run(self) -> None:
        call = self.call
        for attempt in range(1, AGENT_CONNECT_ATTEMPTS + 1):
            failure = await self._connect_once()
            if failure is None:
                return
            call.log.error("%s connection failed (attempt %d): %s", self.name, attempt, failure)
            if failure.startswith("rejected") or attempt == AGENT_CONNECT_ATTEMPTS:
                break
            await trio.sleep(AGENT_RETRY_DELAY_S)
        call.metrics.calls_rejected.labels("agent_connect_failed").inc()
        await call.give_up("agent_connect_failed")

    async def _connect_once(self) -> str | None:
        """One connection, for the rest of the call; returns why it failed to open, or None."""
        call = self.call
        # trio-websocket's own connect_timeout does not fire when the peer accepts TCP but never answers the
        # upgrade (its reader task keeps the handshake waiting): bound it ourselves.
        timeout_s = call.config.agent_connect_timeout_s
        gone = False
        ended: str | None = None
        try:
            with trio.CancelScope(deadline=trio.current_time() + timeout_s) as connecting:
                async with trio_websocket.open_websocket_url(
                    self.url(),
                    extra_headers=[(k.encode(), v.encode()) for k, v in self.headers()] or None,
                    connect_timeout=timeout_s,
                    disconnect_timeout=CLOSE_TIMEOUT_S,
                    max_message_size=self.max_message_bytes,
                    receive_buffer_size=self.receive_buffer_bytes,
                ) as ws:
                    connecting.deadline = math.inf
                    self.ws = ws
                    # Caught here, inside trio-websocket's block: an exception that leaves it is kept in a
                    # reference cycle (trio's nursery frames) whose traceback holds this call, so every ended
                    # call waited for a full gc to be freed; and, measured, the call then held its slot for
                    # the whole CLOSE_TIMEOUT_S after a normal hang-up.
                    try:
                        await self.session(ws)
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
                self.call.end(ended)
        except trio_websocket.ConnectionRejected as exc:
            return f"rejected with HTTP {exc.status_code}"
        except trio_websocket.HandshakeError as exc:
            return type(exc.__cause__ or exc).__name__
        except trio_websocket.ConnectionClosed:
            await self.agent_gone()
        except CallEnded as exc:
            self.call.end(exc.reason)
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        return None

    async def agent_gone(self) -> None:
        """The agent's socket closed. Expected after its end or our own close; else a drop."""
        if not self.call.ended.is_set():
            self.call.log.warning("%s disconnected without end", self.name)
            await self.call.give_up("agent_disconnect")

    def arm_writable(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Once the session is set up: let :meth:`writable` probe the socket's kernel buffer."""
        self._writable = writable_probe(ws)

    def writable(self) -> bool:
        return self._writable()

    def disarm_writable(self) -> None:
        self._writable = _never

    async def send_text(self, text: str | bytes) -> None:
        ws = self.ws
        if ws is None:
            raise AgentClosed(self.name)
        try:
            await ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            self._writable = _never
            raise AgentClosed(self.name) from exc

    async def finish_uplink(self) -> None:
        if self.ws is not None:
            await self.ws.aclose(1000)

    async def close(self) -> None:
        if self.ws is not None and self.ws.closed is None:
            await self.ws.aclose(1000)


def writable_probe(ws: trio_websocket.WebSocketConnection) -> Callable[[], bool]:
    """A zero-timeout check that a socket's kernel buffer has room, or one that says no.

    trio-websocket does not expose its stream: if a later version renames the attribute, frames all take the
    task hop again (slower, still correct); tests/bridge/test_uplink_order.py notices.
    """
    stream: Any = getattr(ws, "_stream", None)
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return _never
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLOUT)

    def writable() -> bool:
        # POLLOUT: at least a third of the send buffer is free, far more than one frame.
        return bool(poller.poll(0))

    return writable


def instructions(params: Mapping[str, str], default: str) -> str:
    """The agent's instructions for a call: its ``system_prompt`` (else ``default``), and its ``goal``."""
    text = parameter(params, "system_prompt") or default
    goal = parameter(params, "goal")
    if goal is not None:
        text = f"{text}\n\nYour goal on this call: {goal.strip()}"
    return text


def parameter(params: Mapping[str, str], name: str) -> str | None:
    """A custom parameter's value, or None when absent or blank."""
    value = params.get(name)
    return value if value is not None and value.strip() else None
