"""The web phone and the dashboard in a real headless Chromium (Debian's, driven by playwright).

Chromium's fake capture device plays a known WAV as the microphone; the page speaks Twilio's Media Stream
protocol to the bridge's own ``/twilio/stream``; the agent is the Speakr emulator. These tests skip locally
when no Chromium exists and fail under CI=true (``browser_helpers.need_chromium``).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio
from browser_helpers import (
    API_TOKEN,
    TWILIO_TOKEN,
    BridgeThread,
    best_envelope_correlation,
    chromium,
    envelope,
    need_chromium,
    read_wav,
    sign_in,
    write_wav,
)

from bridge._config import Secret
from bridge.emulators import AgentSession

DOCS = Path(__file__).resolve().parents[2] / "docs"
DEMO_WAV = Path(__file__).resolve().parents[2] / "bridge" / "data" / "demo_caller.wav"
AGENT_RATE = 24000
# The page plays what the agent answers at 8 kHz; a 440 Hz tone survives μ-law and both resamplers.
ANSWER_S = 1.5
LONG_ANSWER_S = 8.0


def _tone(seconds: float, rate: int, amplitude: float = 9000.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype("<i2").tobytes()


def _config(**extra: Any) -> dict[str, Any]:
    return {
        "bridge_api_token": Secret(API_TOKEN),
        "twilio_auth_token": Secret(TWILIO_TOKEN),
        **extra,
    }


def _caller_wav(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Half a second of silence, then 4 s of the bundled caller speech (8 kHz), then silence."""
    speech, rate = read_wav(DEMO_WAV)
    speech = speech[int(rate * 4.5) : int(rate * 8.5)]  # the file's first words (it opens with silence)
    gap = np.zeros(rate // 2)
    pcm = np.concatenate([gap, speech, np.zeros(rate * 4)])
    return write_wav(tmp_path / "caller.wav", pcm, rate), speech


def test_web_phone_call_through_the_twilio_stream(tmp_path: Path) -> None:
    need_chromium()
    wav, speech = _caller_wav(tmp_path)
    phase: dict[str, Any] = {}

    async def script(session: AgentSession) -> None:
        # Speech arrives (3 s of it), then the agent answers; once that has played out, a long answer
        # that the agent interrupts (barge-in: `clear`) after a second.
        await session.wait_audio_bytes(8000 * 2 * 3)
        answer = await session.send_media(_tone(ANSWER_S, AGENT_RATE))
        await session.wait_statuses(len(answer))  # every piece confirmed played by the page's marks
        phase["answered"] = len(answer)
        await session.send_media(_tone(LONG_ANSWER_S, AGENT_RATE))
        await trio.sleep(1.0)
        await session.clear()
        phase["cleared"] = True
        await session.wait_statuses(len(answer) + 1)

    with BridgeThread(script, **_config()) as bridge, chromium(wav) as browser:
        context = browser.new_context(viewport={"width": 1100, "height": 720})
        phone = context.new_page()
        sign_in(phone, bridge.base_url, "/phone")
        dashboard = context.new_page()
        dashboard.goto(bridge.base_url + "/dashboard")
        dashboard.get_by_test_id("feed-state").filter(has_text="live").wait_for(timeout=10_000)

        phone.get_by_test_id("call").click()
        phone.get_by_test_id("call-state").filter(has_text="connected").wait_for(timeout=15_000)
        call_sid = phone.evaluate("window.phoneStats.callSid")
        assert call_sid and call_sid.startswith("CA")

        # The dashboard shows the call live, pushed by the server.
        row = dashboard.locator(f'[data-testid="call-row"][data-call-sid="{call_sid}"]')
        row.wait_for(timeout=10_000)
        assert row.get_attribute("data-state") in ("connecting", "talking", "agent-speaking", "paused")

        # The agent hears the caller's speech: its loudness contour matches the WAV's.
        assert bridge.agent is not None
        agent = bridge.agent
        bridge.wait_for(
            lambda: bool(agent.sessions) and len(agent.sessions[0].received_audio) >= 8000 * 2 * 5,
            20,
            "5 s of caller audio at the agent",
        )
        received = np.frombuffer(bridge.run(lambda: agent.sessions[0].received_audio), "<i2").astype(
            np.float64
        )
        score = best_envelope_correlation(envelope(received, 8000), envelope(speech[: 8000 * 3], 8000))
        assert score > 0.8, (
            f"caller speech not recognisable at the agent (envelope correlation {score:.2f}, "
            f"rms {np.sqrt((received**2).mean()):.0f}, peak {np.abs(received).max():.0f}, n {len(received)})"
        )

        # The page plays the answer and echoes its marks: statuses reach the agent.
        bridge.wait_for(lambda: "answered" in phase, 20, "the first answer to be played and confirmed")
        _wait_stat(phone, "playedSamples", int(8000 * ANSWER_S * 0.9))
        assert phone.evaluate("window.phoneStats.marksEchoed") >= 1

        # Barge-in: the agent's clear reaches the page, which drops the rest and echoes pending marks.
        bridge.wait_for(lambda: "cleared" in phase, 20, "the agent's clear")
        _wait_stat(phone, "clears", 1)
        bridge.wait_for(
            lambda: len(agent.sessions[0].statuses) > phase["answered"], 10, "the cleared mark's status"
        )
        time.sleep(1.0)
        played_after_clear = phone.evaluate("window.phoneStats.playedSamples")
        assert played_after_clear < 8000 * (ANSWER_S + LONG_ANSWER_S) * 0.6, "playback went on after clear"

        for page in (phone, dashboard):  # what the browser holds: no secret of the server's
            html = page.content()
            assert API_TOKEN not in html and TWILIO_TOKEN not in html
        assert API_TOKEN not in str(context.cookies())

        # The README's pictures: refreshed in docs/ with UPDATE_SCREENSHOTS=1 (else kept out of the tree).
        shots = DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
        phone.screenshot(path=str(shots / "phone.png"))
        dashboard.screenshot(path=str(shots / "dashboard.png"))
        assert all((shots / name).stat().st_size > 10_000 for name in ("phone.png", "dashboard.png"))

        phone.get_by_test_id("hangup").click()
        phone.get_by_test_id("call-state").filter(has_text="ended").wait_for(timeout=10_000)
        dashboard.locator(
            f'[data-testid="call-row"][data-call-sid="{call_sid}"][data-state="ended"]'
        ).wait_for(timeout=10_000)

        # It was a Twilio stream call like any other: the stream handler's metrics counted it.
        bridge.wait_for(
            lambda: bridge.state is not None and bridge.state.active_calls == 0, 10, "the call to end"
        )
        assert bridge.metric("bridge_calls_total") == 1
        assert bridge.metric("bridge_calls_ended_total", {"reason": "twilio_stop"}) == 1
        assert bridge.metric("bridge_marks_total", {"outcome": "played"}) >= 1
        assert bridge.metric("bridge_marks_total", {"outcome": "cleared"}) >= 1
        assert bridge.metric("bridge_barge_in_events_total", {"event": "clear"}) == 1
        assert bridge.metric("bridge_frames_total", {"direction": "twilio_in"}) > 200
        context.close()


def test_mouth_to_ear_latency(tmp_path: Path) -> None:
    """Clicks in the fake microphone to the agent, and clicks from the agent to the page's playback."""
    need_chromium()
    rate = 8000
    clicks = 25
    period_s = 0.5
    pcm = np.zeros(int(rate * (1.0 + clicks * period_s + 3.0)))
    click = 20000 * np.sin(2 * np.pi * 1000 * np.arange(int(rate * 0.01)) / rate)
    for k in range(clicks):
        at = int(rate * (1.0 + k * period_s))
        pcm[at : at + len(click)] = click
    wav = write_wav(tmp_path / "clicks.wav", pcm, rate)
    sent: list[float] = []

    async def script(session: AgentSession) -> None:
        await session.wait_audio_bytes(8000 * 2 * 2)
        burst = (20000 * np.sin(2 * np.pi * 1000 * np.arange(int(AGENT_RATE * 0.01)) / AGENT_RATE)).astype(
            "<i2"
        )
        gap = np.zeros(int(AGENT_RATE * period_s) - len(burst), "<i2")
        for _ in range(clicks):
            sent.append(trio.current_time())
            await session.send_media(np.concatenate([burst, gap]).tobytes(), chunk_bytes=10**7)
            await trio.sleep(period_s)

    with BridgeThread(script, **_config()) as bridge, chromium(wav) as browser:
        page = browser.new_page()
        sign_in(page, bridge.base_url, "/phone")
        page.get_by_test_id("call").click()
        page.get_by_test_id("call-state").filter(has_text="connected").wait_for(timeout=15_000)
        assert bridge.agent is not None
        agent = bridge.agent
        bridge.wait_for(lambda: len(sent) == clicks, 30, "the agent's clicks")
        time.sleep(1.5)
        stats = page.evaluate("window.phoneStats")
        frames = bridge.run(lambda: list(agent.sessions[0].frames))
        audio = np.frombuffer(bridge.run(lambda: agent.sessions[0].received_audio), "<i2")
        page.get_by_test_id("hangup").click()

    offset = bridge.trio_minus_wall
    # Uplink: each click's onset in the agent's audio -> the wall time its frame arrived.
    frame_end = np.cumsum([f.size for f in frames]) // 2
    onsets = []
    last = -rate
    for i in np.flatnonzero(np.abs(audio.astype(np.int32)) > 6000):
        if i - last > rate * 0.2:
            onsets.append(int(i))
        last = i
    arrived = [
        (frames[int(np.searchsorted(frame_end, i, side="right"))].wall_s - offset) * 1000 for i in onsets
    ]
    captured = stats["captureOnsets"]
    up = _pair(captured, arrived)
    down = _pair([(t - offset) * 1000 for t in sent], stats["playbackOnsets"])
    assert len(up) >= clicks // 2, (
        f"uplink clicks matched: {len(up)} (captured {len(captured)}, arrived {len(arrived)})"
    )
    assert len(down) >= clicks // 2, f"downlink clicks matched: {len(down)}"
    report = (
        f"mouth-to-ear on loopback: uplink (fake-mic click -> agent) p50 {_pct(up, 50):.1f} ms "
        f"p99 {_pct(up, 99):.1f} ms (n={len(up)}); downlink (agent send -> page playback) "
        f"p50 {_pct(down, 50):.1f} ms p99 {_pct(down, 99):.1f} ms (n={len(down)}) to the worklet's render, "
        f"plus the output latency Chromium reports: {stats.get('outputLatencyMs', 0):.1f} ms; of the uplink, "
        f"capture -> socket send p50 {_pct(_pair(captured, stats['sendOnsets']) or [0.0], 50):.1f} ms"
    )
    print(report)
    (tmp_path / "latency.txt").write_text(report)
    assert statistics.median(up) < 2000 and statistics.median(down) < 2000


def _wait_stat(page: Any, key: str, minimum: float, timeout_s: float = 10.0) -> None:
    """Poll ``window.phoneStats[key]`` (the page's CSP forbids wait_for_function's string eval)."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = page.evaluate(f"window.phoneStats.{key}")
        if value >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"phoneStats.{key} = {value}, wanted >= {minimum} within {timeout_s} s")


def _pair(earlier: list[float], later: list[float], within_ms: float = 400.0) -> list[float]:
    """Match each event to the first later one within ``within_ms`` (clicks are 500 ms apart): delays, ms."""
    out = []
    j = 0
    for t in earlier:
        while j < len(later) and later[j] < t:
            j += 1
        if j < len(later) and later[j] - t < within_ms:
            out.append(later[j] - t)
            j += 1
    return out


def _pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
