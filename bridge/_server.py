"""Running the app under the bridge's own Hypercorn trio worker (``_hypercorn``), in process or served."""

from __future__ import annotations

import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from bridge._hypercorn import serve

__all__ = ["hypercorn_config", "serve_in_process", "raise_fd_limit"]

logger = logging.getLogger("bridge.server")

#: Hypercorn refuses (closes with 1009) WebSocket messages larger than this.
#: Twilio's are ~300 bytes; the call runner drops and counts anything over its
#: own, much smaller cap, so this only guards the process's memory.
WEBSOCKET_MAX_MESSAGE_BYTES = 1024 * 1024


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the new soft limit.

    Every call holds two sockets and every HTTP client one, and many systems still start services
    with a soft limit of 1,024 while allowing far more: at that limit ~500 calls, or a thousand slow
    clients, stop the server from accepting anything, ``/healthz`` included. Raising the soft limit
    to the hard one is what the hard limit is for; an operator who wants a lower ceiling sets the
    hard limit (``LimitNOFILE=``, ``ulimit -Hn``, the container's ``nofile``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS refuses more than OPEN_MAX
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft
        logger.info("open-file limit raised from %d to %d", soft, hard)
        return hard
    return soft


def hypercorn_config(host: str = "127.0.0.1", port: int = 0, workers: int = 1) -> HypercornConfig:
    """The Hypercorn settings the bridge is meant to run with."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.worker_class = "trio"
    config.workers = workers
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    # No WebSocket pings (websocket_ping_interval): Hypercorn's ping task sleeps a whole interval
    # before it sees that a stream has closed, keeping the connection and its file descriptor for up
    # to that long after every call and delaying shutdown by as much; and it never acts on a missing
    # pong. A dead Twilio stream is ended by the call runner's idle bound (stream_idle_timeout_s).
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Graceful shutdown is the bridge's own drain (see bridge.cli); Hypercorn's
    # own timeout must then not cut live calls short.
    config.graceful_timeout = 5.0
    return config


async def serve_in_process(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` in this Trio run; reports the base URL once bound.

    Use with ``await nursery.start(serve_in_process, app)``; port 0 picks a free port.
    """
    config = hypercorn_config(host, port)
    kwargs: dict[str, Any] = {}
    if shutdown_trigger is not None:
        kwargs["shutdown_trigger"] = shutdown_trigger

    async def _serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status, **kwargs)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve)
        url = binds[0]
        logger.debug("serving on %s", url)
        task_status.started(url)
