"""The one WebSocket server scaffold every loopback peer of ours uses (emulated agents, the local agent).

Theory of operation
-------------------
:class:`LoopbackWebSocketServer` listens with ``trio.serve_listeners`` and wraps each TCP stream with
trio-websocket's ``wrap_server_stream`` itself, so every connection runs inside a containment boundary of
ours: whatever one connection does (garbage HTTP, a TCP reset, a failing script), it ends that connection
only. trio-websocket's own ``WebSocketServer`` lets a reader-task error escape into the server's nursery,
which turns one peer's TCP reset into the death of the whole server and every session on it.

A subclass implements :meth:`handle`: it is given the connection's index (in order of TCP arrival, from 0,
counted before the upgrade) and the upgrade request (``None`` when the peer did not finish
its upgrade within ``handshake_timeout_s``), decides to ``accept()`` or ``reject(status)``, and runs the
session. When :meth:`handle` returns or raises, the connection's nursery is cancelled and its TCP stream is
closed; an exception is handed to :meth:`contained` (logged at DEBUG and counted by default) and goes no
further.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

import trio
import trio_websocket

__all__ = [
    "CLOSE_TIMEOUT_S",
    "LoopbackWebSocketServer",
    "SessionClosed",
    "SessionServer",
    "WatchedSession",
    "header",
]

log = logging.getLogger("bridge.emulators.server")

#: trio-websocket refuses messages over 1 MiB by default (closes 1009); a fault test may send more, and the
#: server must report it rather than hang up.
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
DEFAULT_HANDSHAKE_TIMEOUT_S: Final = 5.0
#: How long a loopback server (an emulator, the local agent) waits for a closing handshake its peer never
#: answers.
CLOSE_TIMEOUT_S: Final = 5.0
#: How many contained errors are kept as text (all are counted).
RECENT_ERRORS: Final = 20


def header(request: trio_websocket.WebSocketRequest, name: str) -> str | None:
    """The value of the upgrade request's header ``name`` (case-insensitive), or None."""
    wanted = name.lower().encode("latin-1")
    for key, value in request.headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


class LoopbackWebSocketServer:
    """A WebSocket server on loopback with one contained task per connection (see the module docstring).

    Args:
        host, port: where to listen; port 0 picks a free one (see :attr:`port`).
        max_message_size: the largest message a connection accepts.
        handshake_timeout_s: a connection that has not finished its upgrade by then is handed to
            :meth:`handle` as ``None``, then dropped.
    """

    #: Names the server in log lines.
    kind = "loopback server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_BYTES,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        if not handshake_timeout_s > 0:
            raise ValueError(f"handshake_timeout_s must be > 0, got {handshake_timeout_s!r}")
        self.host = host
        self.max_message_size = max_message_size
        self.handshake_timeout_s = handshake_timeout_s
        self.connections = 0  # TCP connections accepted so far
        self.contained_errors = 0  # connection errors kept out of the server
        self.last_errors: deque[str] = deque(maxlen=RECENT_ERRORS)  # the latest of them, as repr text
        self._requested_port = port
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port listened on (once :meth:`serve` has started)."""
        if self._port is None:
            raise RuntimeError(f"the {self.kind} is not serving yet")
        return self._port

    def url_for(self, path: str = "/") -> str:
        """``ws://host:port<path>``, with an IPv6 host bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{path}"

    async def serve(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves until cancelled. ``await nursery.start(server.serve)`` returns the server once listening."""
        listeners = await trio.open_tcp_listeners(self._requested_port, host=self.host)
        self._port = listeners[0].socket.getsockname()[1]
        log.info("%s listening on %s", self.kind, self.url_for())
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self)

    async def handle(self, index: int, request: trio_websocket.WebSocketRequest | None) -> None:
        """Serve connection ``index``: ``request`` is None when its upgrade did not finish in time."""
        raise NotImplementedError

    def contained(self, exc: Exception) -> None:
        """One connection failed; the server goes on. Subclasses may record more."""
        self.contained_errors += 1
        self.last_errors.append(repr(exc))
        log.debug("%s: connection error contained: %r", self.kind, exc)

    async def _connection(self, stream: trio.SocketStream) -> None:
        index = self.connections
        self.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(self.handshake_timeout_s):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, stream, max_message_size=self.max_message_size
                    )
                await self.handle(index, request)
                nursery.cancel_scope.cancel()
        except Exception as exc:  # noqa: BLE001 -- the containment boundary of one connection (module doc)
            self.contained(exc)
        finally:
            await trio.aclose_forcefully(stream)


S = TypeVar("S")


class SessionServer(LoopbackWebSocketServer, Generic[S]):
    """A loopback server that keeps one session object per accepted connection, in order, for tests to read.

    :attr:`sessions` lists them; :meth:`wait_for_session` waits for the ``n``-th; :attr:`failed_handshakes`
    counts connections whose upgrade never finished. Subclasses call :meth:`add_session` when they accept.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sessions: list[S] = []
        self.failed_handshakes = 0
        self._sessions_changed = trio.Event()

    def add_session(self, session: S) -> S:
        self.sessions.append(session)
        self._sessions_changed.set()
        self._sessions_changed = trio.Event()
        return session

    async def wait_for_session(self, n: int = 1) -> S:
        """Waits until ``n`` connections have been accepted; returns the ``n``-th (1-based)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        while len(self.sessions) < n:
            await self._sessions_changed.wait()
        return self.sessions[n - 1]


class SessionClosed(Exception):
    """The connection closed before what a script was waiting for happened."""


class _Event(Protocol):
    @property
    def kind(self) -> str: ...


E = TypeVar("E", bound=_Event)


class WatchedSession(Generic[E]):
    """What an emulator's session shares: a timeline of events (each with a ``kind``) and a way for scripts
    and tests to wait for a condition on what was recorded.

    A subclass sets ``index``, ``events``, ``closed``, ``close_code``/``close_reason``/``closed_by`` (None),
    ``_ws`` (the accepted socket) and ``_closing``, calls :meth:`_notify` after every record and gives
    :meth:`_event`. Closing is the same for every emulator: :meth:`close` with a close frame, :meth:`drop`
    without one.
    """

    #: Who the emulated side is, in close records and the drop's reason (``agent``, ``service``).
    closer: ClassVar[str] = "agent"

    index: int
    events: list[E]
    closed: trio.Event
    close_code: int | None
    close_reason: str | None
    closed_by: str | None
    _changed: trio.Event
    _ws: trio_websocket.WebSocketConnection | None
    _closing: bool

    def _event(self, kind: str, at: float, detail: str = "") -> E:
        """One timeline entry of this emulator's event type."""
        raise NotImplementedError

    def _record_close(self, code: int | None, reason: str | None, by: str) -> None:
        if self.closed_by is None:
            self.close_code, self.close_reason, self.closed_by = code, reason, by
            self.events.append(self._event("closed", trio.current_time(), f"{code} {reason or ''}".rstrip()))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Closes the socket with a close frame (bounded wait for the peer's reply)."""
        if self._ws is None or self.closed.is_set():
            return
        self._closing = True
        self._record_close(code, reason, self.closer)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ws.aclose(code, reason)

    async def drop(self) -> None:
        """Cuts the TCP connection without a close frame (RST), as a crashed peer would.

        trio-websocket has no public abort: this closes its private ``_stream`` with ``SO_LINGER`` 0.
        """
        if self._ws is None or self.closed.is_set():
            return
        self._closing = True
        self._record_close(1006, f"dropped by the {self.closer}", "drop")
        self.events.append(self._event("dropped", trio.current_time()))
        stream = self._ws._stream
        sock = getattr(stream, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    def events_of(self, kind: str) -> list[E]:
        """The timeline's events of one kind, in order."""
        return [e for e in self.events if e.kind == kind]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], what: str = "condition") -> None:
        """Waits until ``predicate()`` is true; re-checked after every record.

        Raises:
            SessionClosed: the socket closed while it was still false.
        """
        while not predicate():
            if self.closed.is_set():
                raise SessionClosed(f"session {self.index} closed before {what}")
            await self._changed.wait()
