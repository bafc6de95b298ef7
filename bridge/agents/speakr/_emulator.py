"""A Speakr voice agent on loopback: the server side of the Speakr protocol, scriptable, recording everything.

Theory of operation
-------------------
:class:`SpeakrAgentServer` is a :class:`~bridge._loopback.LoopbackWebSocketServer`: every
connection runs inside a containment boundary, so whatever one connection does (garbage HTTP, a TCP reset, a
failing script) is recorded on its :class:`AgentSession` and the server goes on.

Each connection is one :class:`AgentSession` with two tasks in one nursery. The receiver records every message
from the bridge (``start`` params, audio frames, statuses, protocol errors) and, when the socket closes,
records the close and cancels the session (unless the agent itself is closing). The lifecycle task does what
Speakr does: ``initial``, wait for ``start``, ``ready`` (each can be switched off or delayed: faults), then
runs the script; when the script returns it waits for the peer to close. Waiters
(:meth:`AgentSession.wait_start`, ...) wake on a "something changed" event replaced after each record, and
raise :class:`SessionClosed` once the socket is closed and the condition can no longer come true, so every
wait is bounded by the connection's life.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import cycle
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio
import trio_websocket

from bridge._errors import SpeakrProtocolError
from bridge._loopback import CLOSE_TIMEOUT_S, SessionClosed, SessionServer, WatchedSession
from bridge.agents.speakr import _wire as _speakr

__all__ = [
    "AgentEvent",
    "AgentSession",
    "ReceivedFrame",
    "ReceivedStatus",
    "SentMedia",
    "SessionClosed",
    "SpeakrAgentServer",
]

log = logging.getLogger("bridge.emulators.agent")

#: trio-websocket refuses messages over 1 MiB by default (closes 1009); the bridge never sends that much,
#: but a fault test may, and the emulator must report it rather than hang up.
WS_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
DEFAULT_CHUNK_BYTES: Final = 4800  # 100 ms of PCM16 24 kHz

Script = Callable[["AgentSession"], Awaitable[None]]



@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    """One binary audio frame from the bridge."""

    wall_s: float
    size: int


@dataclass(frozen=True, slots=True)
class ReceivedStatus:
    """One playback ``status`` from the bridge: ids exactly as received."""

    session_id: Any
    sequence_id: Any
    wall_s: float


@dataclass(frozen=True, slots=True)
class SentMedia:
    """One ``media`` message the agent sent (``wall_s``: just before it was handed to the socket)."""

    session_id: Any
    sequence_id: Any
    size: int
    wall_s: float


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """A control message sent or received, or a lifecycle step.

    ``kind``: sent ``initial``, ``ready``, ``pause``, ``continue``, ``clear``, ``info``, ``end``, ``raw``;
    received ``start``, ``second_start``, ``bad_message`` (``detail`` = error kind); ``closed``, ``dropped``,
    ``script_error``.
    """

    kind: str
    wall_s: float
    detail: str = ""


class AgentSession(WatchedSession[AgentEvent]):
    """One connection to the agent, as the bridge drove it, plus the helpers a script uses to drive it back.

    Attributes:
        index: 0-based order of the connection on its server.
        path: the request path, without its query string.
        query: the query parameters (``api_key`` among them; never shown by ``repr``).
        start_params: the ``start`` message's parameters, once received.
        frames, statuses, sent_media, events: what happened, in order, with ``trio.current_time()`` stamps.
        protocol_errors: count of malformed messages by error kind.
        frames_before_ready: audio frames received before ``ready`` was sent (the bridge must not send them).
        close_code, close_reason, closed_by: how it ended (``closed_by``: ``"peer"``, ``"agent"``,
            ``"drop"``).
        errors: exceptions of the script, as ``repr`` text.
        closed: set once the socket is closed.
    """

    closer = "agent"

    def __init__(self, index: int, request_path: str) -> None:
        parts = urlsplit(request_path)
        self.index = index
        self.path = parts.path
        self.query: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.start_params: dict[str, Any] | None = None
        self.frames: list[ReceivedFrame] = []
        self.statuses: list[ReceivedStatus] = []
        self.sent_media: list[SentMedia] = []
        self.events: list[AgentEvent] = []
        self.protocol_errors: dict[str, int] = {}
        self.frames_before_ready = 0
        self.connected_wall_s = trio.current_time()
        self.start_wall_s: float | None = None
        self.ready_wall_s: float | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None
        self.errors: list[str] = []
        self.closed = trio.Event()
        self._audio = bytearray()
        self._changed = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._closing = False
        self._next_sequence = 1

    def __repr__(self) -> str:
        query = {k: ("<redacted>" if k == "api_key" else v) for k, v in self.query.items()}
        return (
            f"AgentSession(index={self.index}, path={self.path!r}, query={query!r}, "
            f"frames={len(self.frames)}, statuses={len(self.statuses)}, closed_by={self.closed_by!r})"
        )

    # ------------------------------------------------------------------------------------------ recorded data

    @property
    def api_key(self) -> str | None:
        """The ``api_key`` query parameter the bridge connected with (for assertions; never logged)."""
        return self.query.get("api_key")

    @property
    def received_audio(self) -> bytes:
        """Every audio frame's bytes, concatenated: PCM16LE 8 kHz as the bridge sent it."""
        return bytes(self._audio)

    @property
    def frame_sizes(self) -> list[int]:
        """The size of each audio frame, in order (the bridge must send 512 each)."""
        return [f.size for f in self.frames]

    @property
    def protocol_error_count(self) -> int:
        """Malformed messages received, all kinds."""
        return sum(self.protocol_errors.values())

    def _event(self, kind: str, at: float, detail: str = "") -> AgentEvent:
        return AgentEvent(kind, at, detail)

    # ---------------------------------------------------------------------------------------------- waiting


    async def wait_start(self) -> dict[str, Any]:
        """Waits for the bridge's ``start``; returns its parameters."""
        await self.wait_until(lambda: self.start_params is not None, "start")
        assert self.start_params is not None
        return self.start_params

    async def wait_audio_bytes(self, n: int) -> None:
        """Waits until at least ``n`` bytes of caller audio have arrived."""
        await self.wait_until(lambda: len(self._audio) >= n, f"{n} audio bytes")

    async def wait_statuses(self, k: int) -> None:
        """Waits until at least ``k`` playback statuses have arrived."""
        await self.wait_until(lambda: len(self.statuses) >= k, f"{k} statuses")

    # ---------------------------------------------------------------------------------------------- sending

    async def _send(self, data: str | bytes, kind: str | None, detail: str = "") -> None:
        if self._ws is None or self.closed.is_set():
            raise SessionClosed(f"session {self.index} is closed")
        if kind is not None:
            self.events.append(AgentEvent(kind, trio.current_time(), detail))
        try:
            await self._ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise SessionClosed(f"session {self.index} closed while sending") from exc

    async def send_initial(self) -> None:
        """Sends ``initial`` (the server does it on connect unless ``send_initial=False``)."""
        await self._send(_speakr.initial_message(), "initial")

    async def send_ready(self) -> None:
        """Sends ``ready``: from now on the bridge may send caller audio."""
        if self.ready_wall_s is None:
            self.ready_wall_s = trio.current_time()
        await self._send(_speakr.ready_message(), "ready")

    async def send_media(
        self,
        pcm24k: bytes,
        *,
        chunk_bytes: int | Sequence[int] = DEFAULT_CHUNK_BYTES,
        sequence_start: int | None = None,
        session_id: Any = None,
        pace_s: float = 0.0,
    ) -> list[tuple[Any, Any]]:
        """Sends agent speech as ``media`` messages, one ``sequence_id`` each.

        Args:
            pcm24k: PCM16LE 24 kHz mono; any length, odd included. Empty: one message with no audio.
            chunk_bytes: message size in bytes, or a sequence of sizes used in turn (cycled); odd sizes
                allowed, so a sample may straddle two messages. The last message carries what is left.
            sequence_start: first ``sequence_id``; ``None`` continues after the last one sent (1 at first).
            session_id: metadata ``session_id``; ``None``: the ``start``'s ``sessionId``, else
                ``"agent-session-<index>"``.
            pace_s: pause between messages (0: as fast as the socket takes them).

        Returns:
            The ``(session_id, sequence_id)`` of each message sent, in order.
        """
        sizes = [chunk_bytes] if isinstance(chunk_bytes, int) else list(chunk_bytes)
        if not sizes or any(type(size) is not int or size <= 0 for size in sizes):
            raise ValueError(f"chunk_bytes must be positive ints, got {chunk_bytes!r}")
        if session_id is None:
            session_id = (self.start_params or {}).get("sessionId") or f"agent-session-{self.index}"
        sequence = self._next_sequence if sequence_start is None else sequence_start
        sent: list[tuple[Any, Any]] = []
        data = bytes(pcm24k)
        offset = 0
        size_iter = cycle(sizes)
        while True:
            piece = data[offset : offset + next(size_iter)]
            offset += len(piece)
            self.sent_media.append(SentMedia(session_id, sequence, len(piece), trio.current_time()))
            await self._send(_speakr.media_message(session_id, sequence, piece), None)
            sent.append((session_id, sequence))
            sequence += 1
            if offset >= len(data):
                break
            if pace_s > 0:
                await trio.sleep(pace_s)
        self._next_sequence = sequence
        return sent

    async def pause(self) -> None:
        """Sends ``pause``: the caller may be interrupting."""
        await self._send(_speakr.pause_message(), "pause")

    async def resume(self) -> None:
        """Sends ``continue``: not an interruption after all."""
        await self._send(_speakr.continue_message(), "continue")

    continue_ = resume

    async def clear(self) -> None:
        """Sends ``clear``: a real interruption."""
        await self._send(_speakr.clear_message(), "clear")

    async def info(self, msg: Any) -> None:
        """Sends ``info`` (errors and notices, e.g. a bad API key)."""
        await self._send(_speakr.info_message(msg), "info", str(msg)[:200])

    async def end(self) -> None:
        """Sends ``end``: the agent is done with the call."""
        await self._send(_speakr.end_message(), "end")

    async def send_raw(self, data: str | bytes) -> None:
        """Sends one frame verbatim (faults: garbage text, binary frames, unknown types)."""
        await self._send(data, "raw", f"{type(data).__name__} of {len(data)}")

    # ---------------------------------------------------------------------------------------------- running

    def _on_message(self, data: str | bytes) -> None:
        now = trio.current_time()
        try:
            msg = _speakr.parse_client_message(data)
        except SpeakrProtocolError as exc:
            self.protocol_errors[exc.kind] = self.protocol_errors.get(exc.kind, 0) + 1
            self.events.append(AgentEvent("bad_message", now, exc.kind))
            log.debug("agent session %d: bad message (%s): %s", self.index, exc.kind, exc.detail)
            return
        if isinstance(msg, _speakr.AudioFrame):
            self.frames.append(ReceivedFrame(now, len(msg.pcm)))
            self._audio += msg.pcm
            if self.ready_wall_s is None:
                self.frames_before_ready += 1
        elif isinstance(msg, _speakr.Status):
            self.statuses.append(ReceivedStatus(msg.session_id, msg.sequence_id, now))
        elif self.start_params is None:
            self.start_params = dict(msg.params)
            self.start_wall_s = now
            self.events.append(AgentEvent("start", now))
        else:
            self.events.append(AgentEvent("second_start", now))

    async def _receive_loop(self, ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope) -> None:
        """Records until the socket closes; then ends the session unless the agent is closing it itself."""
        try:
            while True:
                self._on_message(await ws.get_message())
                self._notify()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            self._record_close(reason.code if reason else None, reason.reason if reason else None, "peer")
        finally:
            self.closed.set()
            self._notify()
            if not self._closing:
                scope.cancel()

    async def _lifecycle(self, server: SpeakrAgentServer) -> None:
        try:
            if server.send_initial:
                await self.send_initial()
            if server.send_ready:
                await self.wait_start()
                if server.ready_delay_s > 0:
                    await trio.sleep(server.ready_delay_s)
                await self.send_ready()
            if server.script is not None:
                await server.script(self)
        except SessionClosed:
            return
        except Exception as exc:  # noqa: BLE001 -- a script is test code: record its failure, never kill the server
            self.errors.append(repr(exc))
            self.events.append(AgentEvent("script_error", trio.current_time(), type(exc).__name__))
            log.warning("agent session %d: script failed: %r", self.index, exc)
            await self.close(1011, "agent script failed")
            return
        await self.closed.wait()

    async def _run(self, ws: trio_websocket.WebSocketConnection, server: SpeakrAgentServer) -> None:
        self._ws = ws
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, ws, nursery.cancel_scope)
            nursery.start_soon(self._lifecycle, server)


class SpeakrAgentServer(SessionServer[AgentSession]):
    """A Speakr-protocol WebSocket server on loopback, one :class:`AgentSession` per connection.

    Args:
        script: run on each session after ``ready`` (or after ``initial`` when ``send_ready`` is false);
            ``None``: the session only records until the bridge closes.
        host, port: where to listen; port 0 picks a free one (see :attr:`url`).
        ready_delay_s: wait this long after ``start`` before ``ready``.
        send_initial: fault when false: never send ``initial``.
        send_ready: fault when false: never send ``ready`` (a script may still call ``send_ready``).
        reject_status: fault: refuse every WebSocket upgrade with this HTTP status (e.g. 401, 503).
        handshake_timeout_s: a connection that does not finish its upgrade by then is dropped.
    """

    kind = "Speakr agent emulator"

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready_delay_s: float = 0.0,
        send_initial: bool = True,
        send_ready: bool = True,
        reject_status: int | None = None,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        if ready_delay_s < 0:
            raise ValueError(f"ready_delay_s must be >= 0, got {ready_delay_s!r}")
        super().__init__(
            host=host,
            port=port,
            max_message_size=WS_MAX_MESSAGE_BYTES,
            handshake_timeout_s=handshake_timeout_s,
        )
        self.script = script
        self.ready_delay_s = ready_delay_s
        self.send_initial = send_initial
        self.send_ready = send_ready
        self.reject_status = reject_status

    @property
    def url(self) -> str:
        """The agent's WebSocket URL, e.g. ``ws://127.0.0.1:PORT/speakr``."""
        return self.url_for("/speakr")

    async def handle(self, index: int, request: trio_websocket.WebSocketRequest | None) -> None:
        if request is None:
            self.failed_handshakes += 1
            return
        session = AgentSession(len(self.sessions), request.path)
        self.add_session(session)
        try:
            await self._serve_session(request, session)
        except Exception as exc:
            session.errors.append(repr(exc))
            raise
        finally:
            session.closed.set()
            session._notify()

    async def _serve_session(self, request: trio_websocket.WebSocketRequest, session: AgentSession) -> None:
        if self.reject_status is not None:
            session._record_close(None, f"rejected with HTTP {self.reject_status}", "agent")
            await request.reject(self.reject_status)
            return
        try:
            ws = await request.accept()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            session._record_close(reason.code if reason else None, reason.reason if reason else None, "peer")
            return
        log.debug("agent session %d connected path=%s", session.index, session.path)
        await session._run(ws, self)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await ws.aclose()
