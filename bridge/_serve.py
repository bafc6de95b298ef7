"""``speakr-bridge serve``: the production server, with a graceful drain.

Theory of operation: on the first SIGTERM or SIGINT the app starts draining
(``/readyz`` answers 503, the voice webhook answers busy TwiML, new streams are
refused), live calls may finish for up to ``BRIDGE_DRAIN_TIMEOUT_S``, then the
ones still running are ended cleanly (Speakr closed with 1000, the Twilio
stream closed so the caller hears the fallback) and Hypercorn shuts down. A
second signal skips the wait. With ``--workers N`` Hypercorn runs N processes,
each with its own app, metrics and drain.
"""

from __future__ import annotations

import logging
import signal

import trio
from hypercorn.trio import serve

from bridge._config import load_config
from bridge._server import hypercorn_config
from bridge.app import BridgeState, create_app

__all__ = ["serve_command", "drain_on_signal"]

logger = logging.getLogger("bridge.serve")


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


async def drain_on_signal(state: BridgeState, shutdown: trio.Event) -> None:
    """Wait for SIGTERM/SIGINT, drain, then let the server shut down."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        skip = trio.Event()
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                if not state.draining:
                    logger.warning("received %s", signal.Signals(signum).name)

                    async def drain_then_stop() -> None:
                        await drain(state, state.config.drain_timeout_s, skip)
                        shutdown.set()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(drain_then_stop)
                else:
                    logger.warning("second signal: ending live calls now")
                    skip.set()


async def _serve_single(host: str, port: int) -> None:
    config = load_config()
    app = create_app(config)
    state: BridgeState = app.extensions["bridge"]
    hconfig = hypercorn_config(host, port)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_on_signal, state, shutdown)
        await serve(app, hconfig, shutdown_trigger=shutdown.wait)
        nursery.cancel_scope.cancel()


def serve_command(host: str, port: int, workers: int) -> int:
    load_config()  # fail fast, with exit code 2, on a bad configuration
    if workers == 1:
        trio.run(_serve_single, host, port)
        return 0
    from hypercorn.run import run

    hconfig = hypercorn_config(host, port, workers)
    hconfig.application_path = "bridge.app:create_app()"
    return run(hconfig)
