"""Shared plumbing of the latency and capacity benchmarks: server processes, /proc meters, HTTP, tables.

Theory of operation
-------------------
A server under test runs in its own process group (:class:`ServerProcess`), started with a clean
environment and an empty working directory (so no ``.env`` of the developer's changes what is measured).
Its CPU time and memory are read from ``/proc`` for the whole process tree (``--workers 2`` forks
workers): :func:`tree_cpu_s` sums ``utime + stime``, :func:`tree_rss_bytes` sums ``VmRSS``. Stopping kills
the group (SIGTERM, then SIGKILL after a bound), so nothing outlives a benchmark, not even on a failure.

The load driver's transport lives here too: :class:`Endpoint` (a non-blocking socket whose writes never
wait: what the kernel does not take at once is flushed by a task) and :class:`Poller` (one epoll set for
every socket of a run, waited on by one Trio task, whose handlers drain their sockets), with WebSocket
framing and handshakes written out (no wsproto: the driver must cost much less than the server it loads).

Everything here is measuring equipment: it must be cheap, bounded in time, and never guess. Percentiles
are linear-interpolated (numpy's default); tables are GitHub Markdown, printed and written to
``benchmarks/results/*.md``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import math
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RESULTS_DIR",
    "Endpoint",
    "Poller",
    "client_handshake",
    "connect",
    "server_handshake",
    "take_frames",
    "ws_frame",
    "HttpClient",
    "ServerProcess",
    "bridge_argv",
    "bridge_env",
    "cpu_name",
    "free_port",
    "http_get",
    "machine_cpu_s",
    "machine_line",
    "md_table",
    "parse_prometheus",
    "percentile",
    "raise_fd_limit",
    "self_cpu_s",
    "tree_cpu_by_pid",
    "tree_cpu_s",
    "tree_pids",
    "tree_rss_bytes",
    "write_result",
]

RESULTS_DIR = Path(__file__).parent / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: Environment variables of a developer's shell that would change what the server does under test.
_SCRUBBED_ENV = (
    "SPEAKR_WS_URL",
    "SPEAKR_API_KEY",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_ACCOUNT_SID",
    "PUBLIC_URL",
    "BRIDGE_API_TOKEN",
    "MAX_CONCURRENT_CALLS",
    "LOG_FORMAT",
    "SPEAKR_BRIDGE_PURE_PYTHON",
    "AGENT",
    "OPENAI_API_KEY",
    "OPENAI_REALTIME_URL",
    "OPENAI_VOICE",
    "DEEPGRAM_API_KEY",
    "DEEPGRAM_AGENT_URL",
)


# --------------------------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def md_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub Markdown table; numbers right-aligned unless ``right`` says otherwise."""
    rows = [list(r) for r in rows]
    if right is None:
        right = [i > 0 for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if r else "---" for r in right) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, title: str, body: str) -> Path:
    """Write ``benchmarks/results/<name>`` with a title and the line saying what wrote it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(f"# {title}\n\nWritten by `pytest benchmarks`.\n\n{body}\n", encoding="utf-8")
    return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """Python, CPU count and model, load average: what the figures were taken on."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs ({cpu_name()}), "
        f"load average {load:.2f} at start"
    )


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format to ``{'name{labels}': value}`` (comments skipped; enough for our counters)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants (by scanning /proc for parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its live descendants."""
    total = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _CLK_TCK


def tree_cpu_by_pid(root: int) -> dict[int, float]:
    """CPU seconds so far of ``root`` and each live descendant, by process id."""
    out: dict[int, float] = {}
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return out


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and its live descendants."""
    total = 0
    for pid in tree_pids(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_cpu_s() -> tuple[float, float]:
    """Whole-machine CPU seconds from /proc/stat: (busy, total), all cores (steal counts as busy)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return math.nan, math.nan
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields)
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def self_cpu_s() -> float:
    """CPU seconds this process (the load driver) has used, all threads."""
    t = os.times()
    return t.user + t.system


def raise_fd_limit(want: int = 16384) -> int:
    """Raise the soft open-files limit (inherited by servers started later); returns the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- servers


class ServerProcess:
    """One server under test in its own process group, with its log in a file.

    Args:
        argv: the command (``sys.executable`` first).
        port: the port it will listen on (127.0.0.1).
        env: variables set over a scrubbed copy of this process's environment.
        workdir: its working directory (empty: no ``.env`` is read) and where its log goes.
        name: used for the log file name.
    """

    def __init__(
        self, argv: Sequence[str], *, port: int, env: Mapping[str, str], workdir: Path, name: str
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.name = name
        self.log_path = workdir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        full_env.update(env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        # The repo first on the path: the server must run this tree's code, installed or not.
        repo = str(Path(__file__).resolve().parent.parent)
        full_env["PYTHONPATH"] = repo + (
            os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else ""
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=workdir,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, timeout_s: float = 20.0, path: str = "/healthz") -> None:
        """Poll ``path`` until it answers 200 (bounded); raise with the log tail if it never does."""
        deadline = trio.current_time() + timeout_s
        while trio.current_time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = await http_get("127.0.0.1", self.port, path, timeout_s=1.0)
                if status == 200:
                    return
            except (OSError, trio.TooSlowError):  # refused, or queued while the workers start
                pass
            await trio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.log_tail()}")

    def terminate_main(self, timeout_s: float) -> int | None:
        """SIGTERM to the main process only (its own graceful shutdown), waiting up to ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def stop(self, grace_s: float = 3.0) -> None:
        """Kill the whole process group: SIGTERM, then SIGKILL after ``grace_s``. Idempotent."""
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        finally:
            self._log.close()


def bridge_argv(port: int, workers: int = 1, profile_to: Path | None = None) -> list[str]:
    """``python -m bridge serve`` (optionally under cProfile)."""
    prefix = [sys.executable]
    if profile_to is not None:
        prefix += ["-m", "cProfile", "-o", str(profile_to)]
    return prefix + [
        "-m",
        "bridge",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def bridge_env(agent_url: str) -> dict[str, str]:
    """The bridge's configuration under test: our agent, no admission cap in the way, quick drain."""
    return {
        "SPEAKR_WS_URL": agent_url,
        "MAX_CONCURRENT_CALLS": "100000",
        "BRIDGE_DRAIN_TIMEOUT_S": "0.5",
        "LOG_FORMAT": "console",
    }


# --------------------------------------------------------------------------------------------- HTTP


async def http_get(host: str, port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; returns (status, body)."""
    with trio.fail_after(timeout_s):
        client = HttpClient(host, port)
        try:
            status, body, _ = await client.request("GET", path)
        finally:
            await client.aclose()
    return status, body


@dataclass(slots=True)
class _Response:
    status: int
    body: bytes


class HttpClient:
    """A minimal HTTP/1.1 keep-alive client: measures a server, not an HTTP library.

    One request at a time; responses must carry Content-Length (Hypercorn's do).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, float]:
        """Send one request; returns (status, body, seconds from the first byte sent to the last received)."""
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._buf.clear()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        t0 = time.perf_counter()
        await self._stream.send_all(data)
        response = await self._read_response()
        return response.status, response.body, time.perf_counter() - t0

    async def _read_response(self) -> _Response:
        assert self._stream is not None
        for _ in range(10_000):
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise OSError("connection closed before the response headers")
            self._buf += chunk
        else:
            raise OSError("response headers too long")
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        del self._buf[: end + 4]
        while len(self._buf) < length:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise OSError("connection closed in the response body")
            self._buf += chunk
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return _Response(status, body)


# --------------------------------------------------------------------------------------------- WebSocket
# The load driver's transport: WebSocket spoken directly on non-blocking stdlib sockets (see _load.py for
# why). Caller frames are masked with the all-zero key (legal; the payload is then sent as is); binary
# frames received are counted, never copied or unmasked.

RECV_BYTES: Final = 256 * 1024
MAX_HANDSHAKE_BYTES: Final = 16 * 1024
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


def ws_frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One unfragmented frame; a client's is masked with the zero key (the payload is unchanged)."""
    n = len(payload)
    first = 0x80 | opcode
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload if masked else head + payload


def unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n or key == b"\0\0\0\0":
        return payload
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def take_frames(buf: bytearray) -> list[tuple[int, bytes | None, int]]:
    """Complete frames at the head of ``buf`` (removed from it): ``(opcode, payload, length)``.

    Binary payloads are not copied (``None``): the driver only counts them. Others are unmasked.
    """
    frames: list[tuple[int, bytes | None, int]] = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        hdr = 2
        if length == 126:
            if n - pos < 4:
                break
            length, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                break
            length, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        key = b""
        if b1 & 0x80:
            if n - pos < hdr + 4:
                break
            key = bytes(buf[pos + hdr : pos + hdr + 4])
            hdr += 4
        end = pos + hdr + length
        if end > n:
            break
        opcode = b0 & 0x0F
        if opcode == OP_BINARY:
            frames.append((opcode, None, length))
        else:
            payload = bytes(buf[pos + hdr : end])
            frames.append((opcode, unmask(payload, key) if key else payload, length))
        pos = end
    if pos:
        del buf[:pos]
    return frames


class Endpoint:
    """A non-blocking socket: writes never wait (the rest is flushed by a task).

    Reads wait in Trio during the HTTP handshake (:meth:`receive`); after it the socket is handed to the
    shared :class:`Poller`, whose handler drains it with :meth:`drain`.
    """

    __slots__ = ("sock", "buf", "out", "closed", "_nursery", "_flushing", "poller")

    def __init__(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = bytearray()
        self.out = bytearray()
        self.closed = False
        self._nursery = nursery
        self._flushing = False
        self.poller: Poller | None = None

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.out += data[sent:]
            if not self._flushing:
                self._flushing = True
                self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        try:
            while self.out and not self.closed:
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except trio.ClosedResourceError:
                    return
                try:
                    sent = self.sock.send(self.out)
                except BlockingIOError:
                    continue
                except OSError:
                    self.close()
                    return
                del self.out[:sent]
        finally:
            self._flushing = False

    async def receive(self) -> bool:
        """Append what arrives to ``buf``; False once the peer has closed (or the socket failed)."""
        if self.closed:
            return False
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except trio.ClosedResourceError:
            return False
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            self.close()
            return False
        if not data:
            return False
        self.buf += data
        return True

    def drain(self) -> bool:
        """Read everything available into ``buf`` without waiting; False once the peer has closed."""
        if self.closed:
            return False
        for _ in range(16):
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self.buf += data
            if len(data) < RECV_BYTES:
                return True
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.poller is not None:
                self.poller.unregister(self)
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


class Poller:
    """One epoll set for every connected socket of the run, waited on by one Trio task.

    With a Trio wait per socket, each message costs an epoll re-arm and a task switch; here one wake-up
    serves every socket that became readable meanwhile, so the driver's cost per message falls as the
    load rises (the server's does not: that is what is measured).
    """

    MAX_EVENTS: Final = 4096

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[float], None]] = {}

    def register(self, ep: Endpoint, handler: Callable[[float], None]) -> None:
        fd = ep.sock.fileno()
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        ep.poller = self

    def unregister(self, ep: Endpoint) -> None:
        fd = ep.sock.fileno()
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):  # ValueError: the run is over and the epoll set already closed
                pass
        ep.poller = None

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                events = self._epoll.poll(0, self.MAX_EVENTS)
                now = time.perf_counter()
                handlers = self._handlers
                for fd, _ in events:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(now)
        finally:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()


async def _read_head(ep: Endpoint) -> bytes:
    while b"\r\n\r\n" not in ep.buf:
        if len(ep.buf) > MAX_HANDSHAKE_BYTES or not await ep.receive():
            raise ConnectionError("no HTTP head")
    end = ep.buf.index(b"\r\n\r\n") + 4
    head = bytes(ep.buf[:end])
    del ep.buf[:end]
    return head


async def connect(host: str, port: int, nursery: trio.Nursery) -> Endpoint:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise ConnectionError(os.strerror(err))
    await trio.lowlevel.wait_writable(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise ConnectionError(os.strerror(err))
    return Endpoint(sock, nursery)


async def client_handshake(ep: Endpoint, host: str, port: int, path: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    ep.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await _read_head(ep)
    if not head.startswith(b"HTTP/1.1 101"):
        status = head.split(b"\r\n", 1)[0]
        raise ConnectionError(f"upgrade refused: {status!r}")


async def server_handshake(ep: Endpoint) -> str:
    """Accept a WebSocket upgrade (no extensions); returns the request path."""
    head = await _read_head(ep)
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    key = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    ep.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    return path
