"""``speakr-bridge serve``: the production server, its worker processes and their graceful drain.

Theory of operation
-------------------
The parent binds the listening socket(s) itself, so a port in use is one clear line and exit status 2,
and prints where it listens. With one worker it serves in its own process. With ``--workers N`` it owns N
worker processes (``multiprocessing`` spawn; each inherits the listening socket and runs one Trio
Hypercorn server on it, through the bridge's own worker loop, ``bridge._hypercorn``; the kernel
spreads connections among them). Hypercorn's own multi-worker supervisor (``hypercorn.run``) gives
its workers no drain, so the bridge does not use it.

Shared state: the parent makes a fresh runtime directory for the workers (``SPEAKR_BRIDGE_RUNTIME_DIR``):
the SQLite store that holds admission leases, used tokens and call records for all of them (unless
``REDIS_URL`` names a store shared by a fleet), and ``PROMETHEUS_MULTIPROC_DIR`` so that one scrape of
``/metrics`` from any worker counts the whole server. It is removed when the server exits.

Drain, in every worker: on the first SIGTERM or SIGINT the parent forwards SIGTERM to each worker (workers
ignore SIGINT, so a terminal's Ctrl-C, sent to the whole process group, reaches them once, through the
parent; they stay in the parent's group, so an orchestrator that kills the group kills them too). A
worker that drains answers ``/readyz`` 503, the voice webhook's busy TwiML and refuses new streams (but
admits one whose webhook reserved a slot before the drain began: its caller was told "connect"); live
calls may finish for up to ``BRIDGE_DRAIN_TIMEOUT_S``, then the ones still running are ended cleanly
(Speakr closed with 1000, the Twilio stream closed so the caller hears the fallback) and Hypercorn shuts
down. A second signal skips the wait. A worker whose parent is gone drains too. A worker that dies
outside a drain is replaced. The parent exits once every worker has.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from types import FrameType
from typing import Any

import trio
from hypercorn.config import Sockets

from bridge._config import Config, load_config
from bridge._hypercorn import serve
from bridge._logging import configure_logging
from bridge._server import hypercorn_config
from bridge.app import RUNTIME_DIR_ENV, BridgeState, create_app

__all__ = ["serve_command", "drain_on_signal", "drain"]

logger = logging.getLogger("bridge.serve")

#: Exit status for a usage problem (a port in use, like a bad configuration).
EXIT_USAGE = 2
#: How often a worker checks that its parent is alive (a parent killed with SIGKILL sends no signal).
PARENT_CHECK_S = 1.0
#: A worker that dies this soon after it started is not restarted (it would only die again).
MIN_WORKER_LIFE_S = 5.0
#: The most restarts of crashed workers over the server's life before the parent gives up.
MAX_RESTARTS = 20


async def drain(state: BridgeState, timeout_s: float, skip: trio.Event | None = None) -> None:
    """Stop taking calls, wait for live ones up to ``timeout_s``, then end the rest."""
    state.draining = True
    logger.warning("draining: %d live call(s), waiting up to %.0f s", state.active_calls, timeout_s)
    if state.active_calls:
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as race:

                async def on_skip() -> None:
                    if skip is not None:
                        await skip.wait()
                        race.cancel_scope.cancel()

                race.start_soon(on_skip)
                await state.calls_drained.wait()
                race.cancel_scope.cancel()
    if state.active_calls:
        logger.warning("drain timeout: ending %d live call(s)", state.active_calls)
        state.end_all_calls.set()
        with trio.move_on_after(5.0):
            await state.calls_drained.wait()
    logger.warning("drained")


async def drain_on_signal(
    state: BridgeState, shutdown: trio.Event, *, watch_parent: int | None = None
) -> None:
    """Wait for SIGTERM/SIGINT (a worker: SIGTERM, or its parent's death), drain, then let the server stop."""
    signums = (signal.SIGTERM,) if watch_parent is not None else (signal.SIGTERM, signal.SIGINT)
    with trio.open_signal_receiver(*signums) as signals:
        skip = trio.Event()
        async with trio.open_nursery() as nursery:

            async def drain_then_stop() -> None:
                await drain(state, state.config.drain_timeout_s, skip)
                shutdown.set()
                nursery.cancel_scope.cancel()

            if watch_parent is not None:

                async def parent_watch() -> None:
                    # No event tells a process its parent died: poll (cheap, once a second).
                    while os.getppid() == watch_parent:  # noqa: ASYNC110
                        await trio.sleep(PARENT_CHECK_S)
                    if not state.draining:
                        logger.warning("the server's parent process is gone: draining")
                        nursery.start_soon(drain_then_stop)

                nursery.start_soon(parent_watch)
            async for signum in signals:
                if not state.draining:
                    logger.warning("received %s", signal.Signals(signum).name)
                    nursery.start_soon(drain_then_stop)
                else:
                    logger.warning("second signal: ending live calls now")
                    skip.set()


async def _serve(config: Config, sockets: Sockets, watch_parent: int | None) -> None:
    app = create_app(config)
    state: BridgeState = app.extensions["bridge"]
    hconfig = hypercorn_config()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: drain_on_signal(state, shutdown, watch_parent=watch_parent))
        await serve(app, hconfig, sockets=sockets, shutdown_trigger=shutdown.wait)
        nursery.cancel_scope.cancel()


def _worker_main(sockets: Sockets, parent: int) -> None:
    """A worker process: one server; its signals come from the parent (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = load_config()
    trio.run(_serve, config, sockets, parent)


def _bind(host: str, port: int) -> Sockets:
    hconfig = hypercorn_config(host, port)
    sockets = hconfig.create_sockets()
    for sock in sockets.insecure_sockets:
        sock.listen(hconfig.backlog)
    return sockets


def _where(sockets: Sockets) -> str:
    addr = sockets.insecure_sockets[0].getsockname()
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"http://{host}:{addr[1]}"


class _Supervisor:
    """The parent of ``serve --workers N``: starts, signals, replaces and reaps the workers."""

    def __init__(self, sockets: Sockets, workers: int) -> None:
        self.sockets = sockets
        self.count = workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.started_at: dict[int, float] = {}
        self.stopping = False
        self.signals = 0
        self.restarts = 0

    def start_one(self) -> None:
        proc = self.ctx.Process(target=_worker_main, args=(self.sockets, os.getpid()), daemon=False)
        proc.start()
        logger.info("[worker %s] started", proc.pid)
        self.procs.append(proc)
        self.started_at[proc.pid or 0] = time.monotonic()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping = True
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        from prometheus_client import multiprocess

        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        for _ in range(self.count):
            self.start_one()
        code = 0
        while self.procs:
            multiprocessing.connection.wait([p.sentinel for p in self.procs], timeout=0.5)
            for proc in [p for p in self.procs if not p.is_alive()]:
                proc.join()
                self.procs.remove(proc)
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                if self.stopping:
                    continue
                lived = time.monotonic() - self.started_at.pop(proc.pid or 0, 0.0)
                logger.error("worker %s exited (status %s) after %.0f s", proc.pid, proc.exitcode, lived)
                if lived < MIN_WORKER_LIFE_S or self.restarts >= MAX_RESTARTS:
                    logger.error("a worker keeps dying: stopping the server")
                    code = 1
                    self.on_signal(signal.SIGTERM, None)
                else:
                    self.restarts += 1
                    self.start_one()
        return code


def serve_command(host: str, port: int, workers: int) -> int:
    config = load_config()  # fail fast, with exit code 2, on a bad configuration
    try:
        sockets = _bind(host, port)
    except OSError as exc:
        print(f"speakr-bridge: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log_format)  # the operator's lines below follow LOG_FORMAT (json: one object)
    store = "redis" if config.redis_url else ("sqlite (shared by the workers)" if workers > 1 else "memory")
    logger.info(
        "listening on %s with %d worker%s (store: %s); SIGTERM or Ctrl-C drains",
        _where(sockets), workers, "s" if workers > 1 else "", store,
    )
    if workers == 1:
        trio.run(_serve, config, sockets, None)
        return 0
    runtime_dir = tempfile.mkdtemp(prefix="speakr-bridge-")
    metrics_dir = os.path.join(runtime_dir, "metrics")
    os.mkdir(metrics_dir)
    os.environ[RUNTIME_DIR_ENV] = runtime_dir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _Supervisor(sockets, workers).run()
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
