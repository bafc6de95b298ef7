"""The dashboard feed, no browser: a Twilio call shows live, then ended with its figures; drains end it."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import trio
from e2e_helpers import start_pair
from test_fleet import each_store

from bridge._config import Secret
from bridge._web import SESSION_COOKIE
from bridge.emulators import AgentSession, TwilioCaller

API_TOKEN = "web-dashboard-api-token-0123456789"


async def _answer(session: AgentSession) -> None:
    await session.wait_audio_bytes(8000)
    t = np.arange(12000) / 24000  # half a second at 24 kHz
    sent = await session.send_media((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
    await session.wait_statuses(len(sent))
    await session.end()


async def _events(
    client: httpx.AsyncClient, rows: dict[str, dict[str, Any]], changed: list[trio.Event]
) -> None:
    async with client.stream("GET", "/dashboard/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                update = orjson.loads(line[6:])
                for row in update["rows"]:
                    rows[row["sid"]] = row
                changed[0].set()
                changed[0] = trio.Event()


async def _wait_row(rows: dict[str, dict[str, Any]], changed: list[trio.Event], sid: str, state: str) -> None:
    while rows.get(sid, {}).get("state") != state:
        await changed[0].wait()


async def test_a_call_shows_live_then_ended_with_its_figures() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, bridge = await start_pair(nursery, _answer, bridge_api_token=Secret(API_TOKEN))
            async with httpx.AsyncClient(base_url=bridge.base_url, timeout=None) as client:
                login = await client.post("/web/login", data={"token": API_TOKEN})
                client.cookies.set(SESSION_COOKIE, login.cookies[SESSION_COOKIE])
                rows: dict[str, dict[str, Any]] = {}
                changed = [trio.Event()]
                async with trio.open_nursery() as viewer:  # ends before the client closes
                    viewer.start_soon(_events, client, rows, changed)
                    t = np.arange(8000 * 4) / 8000
                    speech = (6000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()
                    caller = TwilioCaller(
                        stream_url=bridge.stream_url,
                        audio=speech,
                        hangup_after_s=10.0,
                        custom_parameters={"agent": "sales"},
                    )
                    viewer.start_soon(caller.run)
                    await _wait_row(rows, changed, caller.call_sid, "talking")
                    live = rows[caller.call_sid]
                    assert live["agent"] == "sales" and live["direction"] == "inbound"
                    await _wait_row(rows, changed, caller.call_sid, "ended")
                    ended = rows[caller.call_sid]
                    assert ended["reason"] == "agent_end"
                    assert 400 <= ended["played_ms"] <= 600  # the half second the agent said
                    assert ended["marks_played"] >= 1 and ended["barge_ins"] == 0
                    assert ended["ready_ms"] is not None
                    # the same rows come from the JSON view, and every call appears once
                    table = (await client.get("/dashboard/calls")).json()["rows"]
                    assert [r["sid"] for r in table] == [caller.call_sid]
                    viewer.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def test_dashboard_streams_end_when_the_server_drains() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, bridge = await start_pair(nursery, bridge_api_token=Secret(API_TOKEN))
            async with httpx.AsyncClient(base_url=bridge.base_url, timeout=None) as client:
                login = await client.post("/web/login", data={"token": API_TOKEN})
                client.cookies.set(SESSION_COOKIE, login.cookies[SESSION_COOKIE])
                async with client.stream("GET", "/dashboard/events") as response:
                    lines = response.aiter_lines()
                    assert (await lines.__anext__()).startswith("data: ")
                    bridge.state.draining = True
                    with trio.fail_after(5):
                        async for _ in lines:
                            pass  # ends when the server lets the viewer go
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_record_put_overwrites_and_expires(tmp_path: Any, kind: str) -> None:
    """The live view's store operation, on every backend."""
    async with each_store(kind, tmp_path) as store:
        await store.record_put("dash-live:CA1", {"state": "talking"}, ttl_s=1.0)
        await store.record_put("dash-live:CA1", {"state": "paused", "barge_ins": 1}, ttl_s=1.0)
        assert await store.record_get("dash-live:CA1") == ({"state": "paused", "barge_ins": 1}, [])
        await trio.sleep(1.3)
        assert await store.record_get("dash-live:CA1") is None


async def test_live_view_shows_agent_speech_and_barge_in_during_the_call() -> None:
    async def talk_then_clear(session: AgentSession) -> None:
        await session.wait_audio_bytes(8000)
        t = np.arange(24000 * 4) / 24000
        await session.send_media((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
        await trio.sleep(2.5)
        await session.clear()
        await trio.sleep(30)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, bridge = await start_pair(nursery, talk_then_clear, bridge_api_token=Secret(API_TOKEN))
            async with httpx.AsyncClient(base_url=bridge.base_url, timeout=None) as client:
                login = await client.post("/web/login", data={"token": API_TOKEN})
                client.cookies.set(SESSION_COOKIE, login.cookies[SESSION_COOKIE])
                rows: dict[str, dict[str, Any]] = {}
                changed = [trio.Event()]
                async with trio.open_nursery() as viewer:
                    viewer.start_soon(_events, client, rows, changed)
                    caller = TwilioCaller(stream_url=bridge.stream_url, audio=b"\0\0" * 8000 * 20)
                    viewer.start_soon(caller.run)
                    await _wait_row(rows, changed, caller.call_sid, "agent-speaking")
                    # the clear is counted and empties playback (one or two updates later)
                    while (rows[caller.call_sid].get("barge_ins"), rows[caller.call_sid]["state"]) != (
                        1,
                        "talking",
                    ):
                        await changed[0].wait()
                    row = rows[caller.call_sid]
                    assert 1000 <= row["played_ms"] <= 3500 and row["cleared_ms"] > 0
                    viewer.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
