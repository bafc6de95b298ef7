"""Real parts for fleet tests: ``serve`` processes (any ``--workers``) and a real ``redis-server``.

``redis-server`` is Debian's (``apt-get install redis-server``; ``.ci/run`` installs it). Without it the
tests that need it skip, with the reason, except under CI (``CI=true``), where its absence fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
STARTUP_LIMIT_S = 20.0
_OUR_VARIABLES = (
    "SPEAKR_",
    "TWILIO_",
    "BRIDGE_",
    "PUBLIC_URL",
    "MAX_CONCURRENT_CALLS",
    "LOG_FORMAT",
    "REDIS_URL",
    "PROMETHEUS_MULTIPROC_DIR",
)
_LISTENING = re.compile(r"listening on (http://\S+) with")


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


async def get_status(url: str) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url)).status_code
    except httpx.HTTPError:
        return None


@dataclass
class Serve:
    """One running ``python -m bridge serve``."""

    process: trio.Process
    base_url: str
    log_path: Path

    @property
    def voice_url(self) -> str:
        return self.base_url + "/twilio/voice"

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/twilio/stream"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def metric(self, name: str, labels: str = "") -> float:
        """One sample from one scrape of ``/metrics`` (0 when absent)."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            text = (await client.get(self.base_url + "/metrics")).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return 0.0


@asynccontextmanager
async def serve(
    tmp_path: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    port: int | None = None,
    public_url: bool = False,
) -> AsyncIterator[Serve]:
    """``python -m bridge serve --workers N`` on a free port, healthy; killed (group) on the way out.

    With ``public_url``, ``PUBLIC_URL`` is set to the server's own address (signature checks need it).
    """
    port = free_port() if port is None else port
    base = f"http://127.0.0.1:{port}"
    extra = dict(env or {})
    if public_url:
        extra["PUBLIC_URL"] = base
    log_path = tmp_path / f"serve-{port}.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "bridge",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=clean_env(extra),
            cwd=tmp_path,
            stdout=fd,
            stderr=fd,
        )
    finally:
        os.close(fd)
    server = Serve(process, base, log_path)
    try:
        with trio.fail_after(STARTUP_LIMIT_S):
            while True:
                match = _LISTENING.search(server.log())
                if match and await get_status(server.base_url + "/healthz") == 200:
                    assert match.group(1) == base
                    break
                assert process.returncode is None, f"serve exited {process.returncode}:\n{server.log()}"
                await trio.sleep(0.05)
            # Every worker must be up: each one's lifespan logs its store (or serve logs once).
            while workers > 1 and server.log().count("store: ") < workers:  # noqa: ASYNC110 -- a log
                await trio.sleep(0.05)
        yield server
    finally:
        # SIGTERM first: the parent forwards it to its workers (a SIGKILLed parent's workers would only
        # notice within a second and then drain); SIGKILL if it does not go.
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(8):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(5):
                    await process.wait()


# --- redis-server ----------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """Path of ``redis-server``; skips (fails under CI) when there is none."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        reason = "redis-server is not installed (apt-get install redis-server): fleet tests need a real one"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI: " + reason)
        pytest.skip(reason)
    return found


@dataclass
class RedisServer:
    binary: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) with no persistence; returns once it answers."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert self.process.poll() is None, "redis-server exited at start"
            import time

            time.sleep(0.025)
        raise AssertionError("redis-server did not answer within 5 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary(), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
