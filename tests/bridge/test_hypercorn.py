"""``bridge._hypercorn``, the bridge's own Hypercorn worker loop: guards on what it mirrors; a real server.

The guards fail loudly when Hypercorn changes under the pieces the bridge overrides or rebuilds: then
re-read ``hypercorn/trio/run.py`` and ``hypercorn/trio/tcp_server.py``, bring ``bridge/_hypercorn.py`` in
line, and only then update the pin and the fingerprints below.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import math
from functools import partial
from importlib.metadata import version
from typing import Any, Final

import httpx
import pytest
import trio
import trio_websocket
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import lifespan, run, tcp_server, worker_context
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.utils import raise_shutdown
from quart import websocket
from quart_trio import QuartTrio

from bridge._hypercorn import BridgeTCPServer, read_timeout_s, serve
from bridge._server import hypercorn_config, serve_in_process

#: The Hypercorn releases ``bridge/_hypercorn.py`` was written against (pyproject.toml pins the same).
PINNED: Final = (0, 18)
#: sha256 (first 16 hex digits) of the source of what the bridge mirrors, in Hypercorn 0.18.0.
FINGERPRINTS: Final = {
    "hypercorn.trio.run.worker_serve": "8dc8347a9fc357ca",
    "hypercorn.trio.tcp_server.TCPServer._read_data": "7ca747d922c65cf1",
    "hypercorn.trio.tcp_server.TCPServer.__init__": "4c1d42457bc197b2",
}
REREAD: Final = "re-read it and bring bridge/_hypercorn.py in line before updating this guard"


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_the_installed_hypercorn_is_the_pinned_release() -> None:
    installed = version("hypercorn")
    assert tuple(int(p) for p in installed.split(".")[:2]) == PINNED, (
        f"hypercorn {installed} is installed; bridge/_hypercorn.py mirrors {PINNED[0]}.{PINNED[1]}: {REREAD}"
    )


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_the_hypercorn_code_the_bridge_mirrors_is_unchanged(name: str) -> None:
    module, _, attr = name.rpartition(".")
    owners: dict[str, Any] = {
        "hypercorn.trio.run": run,
        "hypercorn.trio.tcp_server.TCPServer": tcp_server.TCPServer,
    }
    owner = owners[module]
    got = _fingerprint(getattr(owner, attr))
    assert got == FINGERPRINTS[name], f"{name} changed in hypercorn {version('hypercorn')}: {REREAD}"


def test_the_hypercorn_interfaces_the_bridge_uses_are_there() -> None:
    init = inspect.signature(tcp_server.TCPServer.__init__)
    assert list(init.parameters) == ["self", "app", "config", "context", "state", "stream"], (
        f"TCPServer.__init__ is now {init}: {REREAD}"
    )
    assert inspect.iscoroutinefunction(tcp_server.TCPServer._read_data), f"TCPServer._read_data: {REREAD}"
    read_data = inspect.getsource(tcp_server.TCPServer._read_data)
    assert "fail_after(self.config.read_timeout or inf)" in read_data, (
        f"TCPServer._read_data no longer reads under fail_after(read_timeout or inf): {REREAD}"
    )
    assert tcp_server.MAX_RECV == 2**16, f"hypercorn.trio.tcp_server.MAX_RECV changed: {REREAD}"
    assert list(inspect.signature(lifespan.Lifespan).parameters) == ["app", "config", "state"], REREAD
    for method in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        assert inspect.iscoroutinefunction(getattr(lifespan.Lifespan, method)), f"Lifespan.{method}: {REREAD}"
    context = worker_context.WorkerContext(None)
    assert hasattr(context, "terminate") and hasattr(context, "terminated"), f"WorkerContext: {REREAD}"
    assert list(inspect.signature(raise_shutdown).parameters) == ["shutdown_event"], REREAD
    assert HypercornConfig().read_timeout is None, f"Hypercorn's default read_timeout changed: {REREAD}"


@pytest.mark.parametrize(
    ("setting", "bound"), [(None, None), (0, None), (math.inf, None), (7, 7.0), (0.5, 0.5)]
)
def test_reads_are_bounded_exactly_when_hypercorn_would_bound_them(
    setting: float | None, bound: float | None
) -> None:
    config = HypercornConfig()
    config.read_timeout = setting  # type: ignore[assignment]
    assert read_timeout_s(config) == bound


def _app() -> QuartTrio:
    app = QuartTrio("hypercorn-guard")

    @app.route("/hello")
    async def hello() -> str:
        return "hello"

    @app.websocket("/echo")
    async def echo() -> None:
        await websocket.accept()
        while True:
            await websocket.send(await websocket.receive())

    return app


def _connection_servers() -> list[type]:
    """The class of every live Hypercorn connection server in this process."""
    return [type(o) for o in gc.get_objects() if isinstance(o, tcp_server.TCPServer)]


async def test_the_bridges_server_serves_http_and_websocket_through_its_own_tcp_server() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            base: str = await nursery.start(partial(serve_in_process, _app()))
            async with httpx.AsyncClient() as client:
                response = await client.get(base + "/hello")
            assert (response.status_code, response.text) == (200, "hello")
            ws_url = base.replace("http://", "ws://", 1) + "/echo"
            async with trio_websocket.open_websocket_url(ws_url) as ws:
                for message in ("one", "two", "x" * 100_000):
                    await ws.send_message(message)
                    assert await ws.get_message() == message
                await ws.send_message(b"\x00\x01binary")
                assert await ws.get_message() == b"\x00\x01binary"
                # Two connections are open (HTTP keep-alive, this WebSocket): both are the bridge's.
                servers = _connection_servers()
                assert servers and set(servers) == {BridgeTCPServer}, servers
            nursery.cancel_scope.cancel()


#: The bridge's loop and Hypercorn's own, which the behaviour is compared with.
SERVERS: Final = {"bridge": serve, "hypercorn": hypercorn_serve}
REQUEST: Final = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def _silent_then_request(which: str, read_timeout_s: float | None) -> bytes:
    """Connect, stay silent for 1.5 s, send a GET: what came back within 3 s (b"" for nothing)."""
    config = hypercorn_config()
    config.read_timeout = read_timeout_s  # type: ignore[assignment]
    config.keep_alive_timeout = 60  # the idle connection is not closed for being idle during the test
    received = b""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(SERVERS[which], _app(), config))
            host, _, port = binds[0].removeprefix("http://").rpartition(":")
            stream = await trio.open_tcp_stream(host, int(port))
            await trio.sleep(1.5)
            await stream.send_all(REQUEST)
            with trio.move_on_after(3):
                while chunk := await stream.receive_some():
                    received += chunk
            await stream.aclose()
            nursery.cancel_scope.cancel()
    return received


@pytest.mark.parametrize("which", sorted(SERVERS))
async def test_a_configured_read_timeout_still_ends_reading_as_in_hypercorn(which: str) -> None:
    # Hypercorn's read timeout ends the connection's read loop (the socket itself is closed later,
    # by the keep-alive timeout): a request sent after it is never answered.
    assert await _silent_then_request(which, 1) == b""


@pytest.mark.parametrize("which", sorted(SERVERS))
async def test_without_a_read_timeout_a_silent_connection_still_serves_as_in_hypercorn(which: str) -> None:
    received = await _silent_then_request(which, None)
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"hello"), received


async def test_a_tls_or_quic_configuration_is_refused_with_a_clear_error() -> None:
    config = hypercorn_config()
    config.certfile, config.keyfile = "cert.pem", "key.pem"
    with pytest.raises(ValueError, match="plain TCP only"):
        await serve(_app(), config)
    config = hypercorn_config()
    config.quic_bind = ["127.0.0.1:0"]
    with pytest.raises(ValueError, match="plain TCP only"):
        await serve(_app(), config)
