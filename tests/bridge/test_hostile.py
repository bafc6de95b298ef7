"""End to end: what a hostile or broken peer can still do to a running bridge, and the bound on each.

Each test reproduces one attack found against a running server (issue 16) with real parts: a Hypercorn
bridge on loopback (in process, or ``python -m bridge serve`` where the process itself is the subject),
the agent and caller emulators, raw sockets for the misbehaving clients. Each asserts the bound that the
fix guarantees, and fails without it.
"""

from __future__ import annotations

import gc
import logging
import sys
from urllib.parse import parse_qsl, urlsplit

import pytest
import trio
import trio_websocket
from e2e_helpers import RunningBridge, start_bridge, start_pair

from bridge import _speakr
from bridge._call import LOG_EVERY_NTH, LOGGED_ERRORS_PER_KIND, LOGGED_EVENTS_PER_KIND
from bridge.emulators import TwilioCaller

SPEED = 5.0
LIMIT_S = 30


def series(bridge: RunningBridge, name: str) -> int:
    """How many samples (one per label set) the registry holds for ``name``."""
    return sum(
        1 for family in bridge.state.metrics.registry.collect() for s in family.samples if s.name == name
    )


# --- 5. metric labels from a fixed vocabulary ----------------------------------------------------------


async def test_agent_info_codes_cannot_grow_the_metrics_without_bound(nursery):
    codes = 5_000

    async def script(session):
        for i in range(codes):
            await session.info({"code": f"made_up_code_{i}", "message": "x"})
        await session.info({"code": "invalid_api_key", "message": "Invalid API key"})
        await session.end()

    agent, bridge = await start_pair(nursery, script)
    with trio.fail_after(LIMIT_S):
        await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, max_call_s=60).run()
        await bridge.wait_idle()
    assert series(bridge, "bridge_agent_info_total") <= 2
    assert bridge.metric("bridge_agent_info_total", {"kind": "other"}) == codes
    assert bridge.metric("bridge_agent_info_total", {"kind": "invalid_api_key"}) == 1


async def test_status_callback_statuses_cannot_grow_the_metrics_without_bound(nursery):
    import httpx

    bridge = await start_bridge(nursery)  # no auth token: anyone may post
    with trio.fail_after(LIMIT_S):
        async with httpx.AsyncClient(timeout=5.0) as client:
            for i in range(300):
                response = await client.post(
                    bridge.base_url + "/twilio/status", data={"CallSid": "CA1", "CallStatus": f"weird{i}"}
                )
                assert response.status_code == 204
            completed = {"CallSid": "CA1", "CallStatus": "completed"}
            await client.post(bridge.base_url + "/twilio/status", data=completed)
    assert series(bridge, "bridge_status_callbacks_total") == 2
    assert bridge.metric("bridge_status_callbacks_total", {"status": "other"}) == 300


# --- 6. every per-message log path throttled -------------------------------------------------------------


def call_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bridge.call"]


async def test_agent_floods_of_info_continue_and_overflowing_audio_stay_a_few_log_lines(nursery, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    flood = 5_000

    async def script(session):
        for _ in range(flood):
            await session.info({"code": "error", "message": "flood"})
            await session.resume()  # continue with nothing paused
        # Far more than MAX_UNPLAYED_BYTES ahead (130 s of 24 kHz audio): the excess is dropped, per message.
        await session.send_media(b"\x00\x10" * 24_000 * 150, chunk_bytes=2_400)

    agent, bridge = await start_pair(nursery, script)
    with trio.fail_after(LIMIT_S * 2):
        await TwilioCaller(stream_url=bridge.stream_url, speed=1.0, hangup_after_s=4.0).run()
        await bridge.wait_idle()
    overflow = bridge.metric("bridge_dropped_total", {"reason": "downlink_overflow"})
    assert overflow > 100  # the audio flood did overflow, message after message
    lines = call_lines(caplog)
    by_text: dict[str, int] = {}
    for record in lines:
        key = record.getMessage().split("] ", 1)[-1][:20]
        by_text[key] = by_text.get(key, 0) + 1
    # Each kind: the first few, then one line per LOG_EVERY_NTH.
    assert by_text.get("speakr info (error):", 0) <= LOGGED_EVENTS_PER_KIND + flood // LOG_EVERY_NTH
    assert by_text.get("continue with nothin", 0) <= LOGGED_EVENTS_PER_KIND + flood // LOG_EVERY_NTH
    assert by_text.get("speakr continue", 0) <= LOGGED_EVENTS_PER_KIND + flood // LOG_EVERY_NTH
    assert by_text.get("speakr is more than ", 0) <= LOGGED_ERRORS_PER_KIND + overflow // LOG_EVERY_NTH
    assert len(lines) < 400, by_text  # was > 15,000


# --- 7. doctor's output scrubbed like the logs ------------------------------------------------------------


async def test_doctor_never_shows_the_key_an_agent_echoes_back(nursery, tmp_path):
    from test_observability import SPEAKR_API_KEY, assert_no_secret, clean_env

    async def echo_key(request: trio_websocket.WebSocketRequest) -> None:
        # What a real agent did with a bad key: answer with an info that names the key it was given.
        key = dict(parse_qsl(urlsplit(request.path).query)).get("api_key", "")
        ws = await request.accept()
        said = {"code": "invalid_api_key", "message": f"invalid api key {key}"}
        await ws.send_message(_speakr.info_message(said))
        with trio.move_on_after(LIMIT_S):
            try:
                await ws.get_message()
            except trio_websocket.ConnectionClosed:
                pass

    server = await nursery.start(trio_websocket.serve_websocket, echo_key, "127.0.0.1", 0, None)
    agent_url = f"ws://127.0.0.1:{server.port}/speakr"
    with trio.fail_after(LIMIT_S):
        result = await trio.run_process(
            [sys.executable, "-m", "bridge", "doctor"],
            env=clean_env({"SPEAKR_WS_URL": agent_url, "SPEAKR_API_KEY": SPEAKR_API_KEY}), cwd=tmp_path,
            capture_stdout=True, capture_stderr=True, check=False,
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 1, output
    assert "invalid api key" in output  # the agent's answer is shown ...
    assert_no_secret(output, "doctor's output")  # ... without the key


# --- 9. a close that ends as soon as both sides are closed; no reference cycle per call ---------------


async def agent_ends(session):
    await session.send_media(b"\x00\x10" * 2400)
    await session.end()


@pytest.mark.parametrize("script", [None, agent_ends], ids=["caller_hangs_up", "agent_ends"])
async def test_an_ended_call_is_freed_without_a_garbage_collection(nursery, script):
    from bridge._call import _Call

    def calls_in_memory() -> int:
        # gc.get_objects() lists unreachable cycles too until a collection frees them.
        return sum(1 for o in gc.get_objects() if type(o) is _Call)

    agent, bridge = await start_pair(nursery, script)
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(LIMIT_S):
            for _ in range(10):
                await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=1.0).run()
            await bridge.wait_idle()
            await trio.sleep(0.1)
        assert calls_in_memory() == 0, "ended calls still in memory without a gc pass (a reference cycle)"
    finally:
        gc.enable()
