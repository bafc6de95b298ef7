"""Browser-test helpers: a real bridge and agent emulator in a Trio thread, Debian's Chromium (playwright).

The bridge and the agent emulator run in one Trio loop on a background thread (a real Hypercorn server on
127.0.0.1); the test drives Chromium with playwright's sync API on the test's thread. Reads of the bridge's
and the agent's state go through :meth:`BridgeThread.run` (executed on the Trio thread).
"""

from __future__ import annotations

import os
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import trio

from bridge._config import Config
from bridge._server import serve_in_process
from bridge.app import BridgeState, create_app
from bridge.emulators import SpeakrAgentServer

CHROMIUM = "/usr/bin/chromium"
API_TOKEN = "web-test-api-token-0123456789abcdef"
TWILIO_TOKEN = "web-test-twilio-auth-token"
T = TypeVar("T")


def need_chromium() -> None:
    """Skip (locally) or fail (CI=true) when Debian's Chromium or playwright is missing."""
    reasons = []
    if not os.access(CHROMIUM, os.X_OK):
        reasons.append(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reasons.append("the playwright package is not installed (pip install playwright)")
    if reasons:
        if os.environ.get("CI") == "true":
            pytest.fail("browser tests must run under CI: " + "; ".join(reasons))
        pytest.skip("; ".join(reasons))


class BridgeThread:
    """A bridge and an agent emulator served by a Trio loop on another thread."""

    def __init__(self, script: Any = None, **config: Any) -> None:
        self.script = script
        self.config = config
        self.base_url = ""
        self.agent: SpeakrAgentServer | None = None
        self.state: BridgeState | None = None
        self.trio_minus_wall = 0.0  # trio.current_time() - time.time(), to compare emulator stamps
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self.trio_minus_wall = trio.current_time() - time.time()
        async with trio.open_nursery() as nursery:
            self.agent = SpeakrAgentServer(self.script)
            await nursery.start(self.agent.serve)
            app = create_app(Config(speakr_ws_url=self.agent.url, **self.config))
            self.state = app.extensions["bridge"]
            self.base_url = await nursery.start(partial(serve_in_process, app))
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the Trio thread (to read live state safely)."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        def read() -> float:
            assert self.state is not None
            value = self.state.metrics.registry.get_sample_value(name, labels or {})
            return 0.0 if value is None else value

        return self.run(read)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``predicate`` on the Trio thread every 50 ms, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.run(predicate):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def __enter__(self) -> BridgeThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("bridge thread did not start")
        if self._error is not None:
            raise RuntimeError("bridge thread failed") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(20)


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(pcm, -32768, 32767).astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64), w.getframerate()


def envelope(pcm: np.ndarray, rate: int, window_ms: int = 20) -> np.ndarray:
    """RMS per window: a loudness contour that survives μ-law and resampling."""
    n = rate * window_ms // 1000
    usable = len(pcm) // n * n
    blocks = pcm[:usable].reshape(-1, n)
    return np.sqrt((blocks**2).mean(axis=1))


def best_envelope_correlation(haystack: np.ndarray, needle: np.ndarray) -> float:
    """Best normalised correlation of ``needle`` at any shift inside ``haystack`` (both envelopes)."""
    if len(haystack) < len(needle):
        return 0.0
    best = -1.0
    nz = (needle - needle.mean()) / (needle.std() + 1e-9)
    for shift in range(len(haystack) - len(needle) + 1):
        seg = haystack[shift : shift + len(needle)]
        sz = (seg - seg.mean()) / (seg.std() + 1e-9)
        best = max(best, float((nz * sz).mean()))
    return best


@contextmanager
def chromium(fake_wav: Path | None) -> Iterator[Any]:
    """A headless Debian Chromium with its microphone fed from ``fake_wav`` (playwright sync API)."""
    from playwright.sync_api import sync_playwright

    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
    ]
    if fake_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_wav}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, base_url: str, path: str, token: str = API_TOKEN) -> None:
    page.goto(base_url + path)
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("login").click()
    page.wait_for_url(base_url + path)
