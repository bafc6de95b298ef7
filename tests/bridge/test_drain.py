"""End to end: a real ``python -m bridge serve`` process drains on SIGTERM.

The server runs as a subprocess (as an orchestrator runs it), the agent emulator and the Twilio caller
emulator run here. On SIGTERM the bridge must stop taking calls (``/readyz`` 503, busy TwiML) yet let
live calls go on until ``BRIDGE_DRAIN_TIMEOUT_S``, then end them cleanly (Speakr closed with 1000, the
Twilio stream closed by us so the caller hears the fallback) and exit 0. A call that ends on its own
during the drain lets the process exit at once.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio
from e2e_helpers import speechlike, start_agent

from bridge.emulators import CallRecord, TwilioCaller

REPO = Path(__file__).resolve().parents[2]
STARTUP_LIMIT_S = 15.0
#: Once nothing is left to wait for, the process must be gone within this long.
EXIT_BOUND_S = 3.0
_OUR_VARIABLES = ("SPEAKR_", "TWILIO_", "BRIDGE_", "PUBLIC_URL", "MAX_CONCURRENT_CALLS", "LOG_FORMAT")


@dataclass
class ServeProcess:
    process: trio.Process
    base_url: str
    log_path: Path

    @property
    def voice_url(self) -> str:
        return self.base_url + "/twilio/voice"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any bridge setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUR_VARIABLES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def open_log(path: Path) -> int:
    """A file descriptor for a child's stdout and stderr (a local file: opening it is instant)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


async def get_status(url: str) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url)).status_code
    except httpx.HTTPError:
        return None


@asynccontextmanager
async def serve_process(env: dict[str, str], tmp_path: Path) -> AsyncIterator[ServeProcess]:
    """``python -m bridge serve`` on a free port, healthy; always killed on the way out."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    log_fd = open_log(log_path)
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=clean_env(env), cwd=tmp_path, stdout=log_fd, stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    server = ServeProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        with trio.fail_after(STARTUP_LIMIT_S):
            # Polling another process: there is no event to wait on.
            while await get_status(server.base_url + "/healthz") != 200:  # noqa: ASYNC110
                assert process.returncode is None, f"serve exited {process.returncode}:\n{server.log()}"
                await trio.sleep(0.05)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


async def wait_for_status(url: str, expected: int, limit_s: float) -> None:
    with trio.fail_after(limit_s):
        while await get_status(url) != expected:  # noqa: ASYNC110 -- another process: poll
            await trio.sleep(0.02)


def assert_busy(record: CallRecord) -> None:
    assert record.webhook_status == 200 and record.outcome == "no_stream", (record.outcome, record.error)
    twiml = ElementTree.fromstring(record.twiml or "")
    assert twiml.find("./Connect") is None and twiml.find("./Say") is not None


async def test_sigterm_drains_then_ends_the_live_call_cleanly_and_exits_0(nursery, tmp_path):
    drain_s = 2.0
    agent = await start_agent(nursery)
    env = {"SPEAKR_WS_URL": agent.url, "BRIDGE_DRAIN_TIMEOUT_S": str(drain_s)}
    records: list[CallRecord] = []
    async with serve_process(env, tmp_path) as server:
        audio = speechlike(30.0, 8000, seed=80)

        async def long_call() -> None:
            caller = TwilioCaller(webhook_url=server.voice_url, audio=audio, speed=1.0, hangup_after_s=30.0)
            records.append(await caller.run())

        with trio.fail_after(20):
            async with trio.open_nursery() as calls:
                calls.start_soon(long_call)
                session = await agent.wait_for_session(1)
                await session.wait_audio_bytes(512 * 8)
                t_signal = trio.current_time()
                server.process.send_signal(signal.SIGTERM)
                await wait_for_status(server.base_url + "/readyz", 503, 1.0)
                assert_busy(await TwilioCaller(webhook_url=server.voice_url).run())
                # The live call goes on while draining: still connected, caller audio still flowing.
                await trio.sleep_until(t_signal + drain_s * 0.6)
                frames = len(session.frames)
                await trio.sleep(drain_s * 0.2)
                assert not records and len(session.frames) > frames
            await session.closed.wait()
        with trio.fail_after(EXIT_BOUND_S + 5.0):  # Hypercorn's own graceful stop follows the drain
            returncode = await server.process.wait()
        exited = trio.current_time()
    record = records[0]
    assert record.outcome == "bridge_closed", (record.outcome, record.error, server.log())
    ended = record.events_of("closed")[-1].wall_s - t_signal
    assert drain_s - 0.2 <= ended <= drain_s + 2.0, ended
    assert session.close_code == 1000 and session.closed_by == "peer"
    assert returncode == 0, server.log()
    assert exited - t_signal < drain_s + EXIT_BOUND_S, exited - t_signal
    # Everything the caller said up to the end reached the agent, in order.
    assert session.received_audio[: len(record.sent_pcm) - 512] == record.sent_pcm[: -512]


async def test_a_call_that_ends_during_the_drain_lets_the_process_exit_promptly(nursery, tmp_path):
    agent = await start_agent(nursery)
    env = {"SPEAKR_WS_URL": agent.url, "BRIDGE_DRAIN_TIMEOUT_S": "30"}
    records: list[CallRecord] = []
    async with serve_process(env, tmp_path) as server:
        audio = speechlike(1.5, 8000, seed=81)

        async def short_call() -> None:
            caller = TwilioCaller(webhook_url=server.voice_url, audio=audio, speed=1.0, hangup_after_s=1.5)
            records.append(await caller.run())

        with trio.fail_after(20):
            async with trio.open_nursery() as calls:
                calls.start_soon(short_call)
                session = await agent.wait_for_session(1)
                await session.wait_audio_bytes(512 * 4)
                server.process.send_signal(signal.SIGTERM)
                await wait_for_status(server.base_url + "/readyz", 503, 1.0)
            hung_up = trio.current_time()
            with trio.fail_after(EXIT_BOUND_S):
                returncode = await server.process.wait()
            await session.closed.wait()
        exited = trio.current_time()
    record = records[0]
    assert record.outcome == "hung_up", (record.outcome, record.error)
    assert session.close_code == 1000
    assert session.received_audio[: len(record.sent_pcm)] == record.sent_pcm
    assert returncode == 0, server.log()
    assert exited - hung_up < EXIT_BOUND_S
