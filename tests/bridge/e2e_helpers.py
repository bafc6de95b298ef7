"""Helpers for end-to-end tests: a real Hypercorn server and a real agent emulator on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import trio

from bridge._config import Config
from bridge._server import serve_in_process
from bridge.app import BridgeState, create_app
from bridge.emulators import CallRecord, SpeakrAgentServer, TwilioCaller


@dataclass
class RunningBridge:
    base_url: str
    state: BridgeState

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/twilio/stream"

    @property
    def voice_url(self) -> str:
        return self.base_url + "/twilio/voice"

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Until every call has finished unwinding (metrics are final then)."""
        with trio.fail_after(timeout_s):
            while self.state.active_calls:  # noqa: ASYNC110 - server state has no event to wait on
                await trio.sleep(0.01)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


async def start_agent(nursery: trio.Nursery, script: Any = None, **kwargs: Any) -> SpeakrAgentServer:
    server = SpeakrAgentServer(script, **kwargs)
    await nursery.start(server.serve)
    return server


async def start_bridge(nursery: trio.Nursery, **config: Any) -> RunningBridge:
    app = create_app(Config(**config))
    base_url = await nursery.start(partial(serve_in_process, app))
    return RunningBridge(base_url, app.extensions["bridge"])


def tone(freqs_hz: list[float], seconds: float, rate: int, amplitude: float = 6000.0) -> bytes:
    """A sum of sines as PCM16LE, each at ``amplitude`` / len(freqs)."""
    t = np.arange(int(seconds * rate)) / rate
    signal = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs_hz)) / len(freqs_hz)
    return (amplitude * signal).astype("<i2").tobytes()


def speechlike(seconds: float, rate: int, seed: int, amplitude: float = 5000.0) -> bytes:
    """Band-limited (300-3000 Hz) noise with a syllable-rate envelope: unique at every offset."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < 300) | (freqs > 3000)] = 0
    noise = np.fft.irfft(spectrum, n)
    noise /= np.max(np.abs(noise))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / rate)
    return (amplitude * noise * envelope).astype("<i2").tobytes()


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def best_alignment(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Offset of ``needle`` in ``haystack`` by cross-correlation, and the normalised peak."""
    n = len(haystack) + len(needle)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size)), size)
    corr = corr[: len(haystack)]
    offset = int(np.argmax(corr))
    window = haystack[offset : offset + len(needle)]
    denom = np.linalg.norm(window) * np.linalg.norm(needle[: len(window)])
    return offset, float(corr[offset] / denom) if denom else 0.0


def snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    noise = actual - reference
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-9)))


async def start_pair(
    nursery: trio.Nursery, script: Any = None, *, agent: dict[str, Any] | None = None, **config: Any
) -> tuple[SpeakrAgentServer, RunningBridge]:
    """An agent emulator (``script``, ``agent`` options) and a bridge pointed at it (``config``)."""
    server = await start_agent(nursery, script, **(agent or {}))
    return server, await start_bridge(nursery, speakr_ws_url=server.url, **config)


async def agent_led_call(
    nursery: trio.Nursery, script: Any, *, speed: float, limit_s: float, **config: Any
) -> tuple[CallRecord, SpeakrAgentServer, RunningBridge]:
    """One silent caller through a fresh bridge to an agent running ``script``, until the bridge hangs up."""
    agent, bridge = await start_pair(nursery, script, **config)
    with trio.fail_after(limit_s):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=speed).run()
    return record, agent, bridge
