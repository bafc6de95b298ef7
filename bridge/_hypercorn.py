"""Hypercorn's trio worker, owned by the bridge: the same server without a cancel scope per socket read.

Theory of operation
-------------------
Hypercorn 0.18's trio ``TCPServer._read_data`` wraps every ``receive_some`` in
``trio.fail_after(config.read_timeout or inf)``. With no read timeout (Hypercorn's default, and the
bridge's) that scope can never fire, yet on every read it costs a generator context manager, a cancel
scope entered and left and a deadline added to and removed from the run loop: about a tenth of the
instructions an uplink message costs the server (``benchmarks/results/instructions.md``). No setting
removes it.

:class:`BridgeTCPServer` subclasses Hypercorn's ``TCPServer`` and overrides that one method: with a read
timeout configured it runs Hypercorn's own loop unchanged; without one it reads with no scope, which
behaves the same (a scope whose deadline is infinite never cancels, and a cancellation from outside
still reaches the read).

Hypercorn's ``worker_serve`` builds its connections from the ``TCPServer`` name in its own module, so the
class can only be substituted by patching that module (which breaks silently on upgrade) or by owning
the loop. The bridge owns it: :func:`worker_serve` is Hypercorn's, built from the same parts (its
``Lifespan``, ``WorkerContext``, ``raise_shutdown``, ``trio.serve_listeners``), with
:class:`BridgeTCPServer` and only plain TCP sockets: TLS terminates in front of the bridge (a tunnel or
a proxy) and it never speaks QUIC, so a configuration asking for either is refused rather than served
by code no test runs.

What this relies on in Hypercorn is pinned (``hypercorn>=0.18,<0.19``) and checked by
``tests/bridge/test_hypercorn.py``, which fails with a message saying what to re-read when the version,
the signatures or the source of the pieces mirrored here change.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from random import randint
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

__all__ = ["BridgeTCPServer", "read_timeout_s", "serve", "worker_serve"]


def read_timeout_s(config: Config) -> float | None:
    """The read timeout Hypercorn applies, or None when reads are unbounded (``read_timeout or inf``)."""
    timeout = config.read_timeout
    if not timeout or math.isinf(timeout):
        return None
    return float(timeout)


class BridgeTCPServer(TCPServer):
    """Hypercorn's trio connection server whose reads enter no cancel scope when no read timeout is set.

    A TLS stream or a configured read timeout takes Hypercorn's own read loop, unchanged.
    """

    async def _read_data(self) -> None:
        stream: Any = self.stream  # typed by Hypercorn as its TLS stream; plain when served here
        if read_timeout_s(self.config) is not None or not isinstance(stream, trio.SocketStream):
            await super()._read_data()
            return
        # Hypercorn's loop (hypercorn/trio/tcp_server.py, 0.18) without ``fail_after(inf)`` (the
        # TooSlowError it also catches cannot happen here). It reads the plain stream's socket
        # directly: that is what ``SocketStream.receive_some`` does, inside a generator context
        # manager turning an ``OSError`` into ``ClosedResourceError`` or ``BrokenResourceError``, which
        # end the loop alike. ``socket.recv`` returns ``bytes``, so no copy is needed either.
        recv = stream.socket.recv
        while True:
            try:
                data = await recv(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                break
            await self.protocol.handle(RawData(data))
            if data == b"":
                break
        await self.protocol.handle(Closed())


def _refuse_tls_and_quic(config: Config, sockets: Sockets | None) -> None:
    if (
        config.ssl_enabled
        or config.quic_bind
        or (sockets is not None and (sockets.secure_sockets or sockets.quic_sockets))
    ):
        raise ValueError(
            "the bridge serves plain TCP only: terminate TLS in front of it (Hypercorn's certfile/keyfile "
            "and quic_bind are not supported)"
        )


def _plain_listeners(sockets: Sockets) -> tuple[list[trio.SocketListener], list[str]]:
    listeners = []
    binds = []
    for sock in sockets.insecure_sockets:
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds


async def worker_serve(
    app: AppWrapper,
    config: Config,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[..., Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (already wrapped) on ``sockets`` (bound and listening) or on ``config``'s binds.

    Hypercorn's ``hypercorn.trio.run.worker_serve`` with :class:`BridgeTCPServer`, plain TCP only
    (``ValueError`` for TLS or QUIC settings): the ASGI lifespan runs around the server;
    ``shutdown_trigger`` returning (or ``max_requests`` reached) stops accepting and gives live
    connections ``config.graceful_timeout`` to finish. Reports the ``http://`` base URLs.
    """
    _refuse_tls_and_quic(config, sockets)
    config.set_statsd_logger_class(StatsdLogger)

    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            if sockets is None:
                sockets = config.create_sockets()
                for sock in sockets.insecure_sockets:
                    sock.listen(config.backlog)
            listeners, binds = _plain_listeners(sockets)
            for bind in binds:
                await config.log.info(f"Running on {bind} (CTRL + C to quit)")

            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(
                                BridgeTCPServer,
                                app,
                                config,
                                context,
                                ConnectionState(lifespan_state.copy()),
                            ),
                            listeners,
                            handler_nursery=server_nursery,
                        ),
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def serve(
    app: Any,
    config: Config,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[..., Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI (or WSGI) ``app``: ``hypercorn.trio.serve`` on the bridge's :func:`worker_serve`."""
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, None),
        config,
        sockets=sockets,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
