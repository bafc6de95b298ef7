"""End to end: what a hostile or broken peer can still do to a running bridge, and the bound on each.

Each test reproduces one attack found against a running server (issue 16) with real parts: a Hypercorn
bridge on loopback (in process, or ``python -m bridge serve`` where the process itself is the subject),
the agent and caller emulators, raw sockets for the misbehaving clients. Each asserts the bound that the
fix guarantees, and fails without it.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import trio
import trio_websocket
from e2e_helpers import RunningBridge, start_agent, start_bridge, start_pair

from bridge._call import LOG_EVERY_NTH, LOGGED_ERRORS_PER_KIND, LOGGED_EVENTS_PER_KIND
from bridge.agents.speakr import _wire as _speakr
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
        # Far more than MAX_UNPLAYED_BYTES (120 s) ahead: 200 s of 24 kHz audio in 0.5 s messages, so the
        # flood is over well within the call whatever the machine's speed; the excess is dropped, per message.
        await session.send_media(b"\x00\x10" * 24_000 * 200, chunk_bytes=24_000)

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


# --- 1. bounded bodies, enforced before any parsing -------------------------------------------------


TOKEN = "hostile-test-auth-token"


async def post_raw_body(port: int, path: str, total: int, *, chunked: bool) -> int | None:
    """POST ``total`` bytes of ``a=&a=&…`` (the form that is dearest to parse), unsigned; the HTTP status
    the server answered, or None if it cut the connection without one."""
    piece = b"a=&" * 21_845  # 65,535 bytes
    status: int | None = None
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        async with trio.open_nursery() as race:

            async def read_status() -> None:
                nonlocal status
                data = b""
                try:
                    while b"\r\n" not in data and len(data) < 4096:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
                except trio.BrokenResourceError:
                    pass
                if data.startswith(b"HTTP/1.1 "):
                    status = int(data[9:12])
                race.cancel_scope.cancel()

            race.start_soon(read_status)
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n"
            )
            try:
                await stream.send_all(head.encode())
                sent = 0
                while sent < total:
                    part = piece[: total - sent]
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                    sent += len(part)
                if chunked:
                    await stream.send_all(b"0\r\n\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server hung up on us: what it should do
    return status


async def test_a_flood_of_huge_unsigned_webhook_bodies_never_blocks_the_loop_nor_costs_live_audio(nursery):
    from e2e_helpers import speechlike

    from bridge._config import Secret

    agent, bridge = await start_pair(nursery, twilio_auth_token=Secret(TOKEN))
    port = int(bridge.base_url.rsplit(":", 1)[1])
    worst_lag = 0.0
    tick_s = 0.005

    async def watch_loop(task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal worst_lag
        with trio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                t = trio.current_time()
                await trio.sleep(tick_s)
                worst_lag = max(worst_lag, trio.current_time() - t - tick_s)

    audio = speechlike(4.0, 8000, seed=16)
    records = []
    statuses: list[int | None] = []

    async def live_call() -> None:
        caller = TwilioCaller(
            webhook_url=bridge.voice_url, auth_token=TOKEN, audio=audio, speed=1.0, hangup_after_s=4.0
        )
        records.append(await caller.run())

    async def attacker(path: str, chunked: bool) -> None:
        statuses.append(await post_raw_body(port, path, 15_900_000, chunked=chunked))

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as calls:
            calls.start_soon(live_call)
            session = await agent.wait_for_session(1)
            await session.wait_audio_bytes(512 * 8)
            watcher = await nursery.start(watch_loop)
            async with trio.open_nursery() as flood:
                for i in range(8):
                    flood.start_soon(attacker, ("/twilio/voice", "/twilio/status")[i % 2], i >= 6)
        watcher.cancel()
        await bridge.wait_idle()
    assert worst_lag < 0.2, f"event loop blocked for {worst_lag * 1000:.0f} ms"
    assert all(status in (413, None) for status in statuses), statuses
    assert statuses.count(413) >= 4, statuses
    record = records[0]
    assert record.outcome == "hung_up", (record.outcome, record.error)
    assert bridge.metric("bridge_dropped_total", {"reason": "stale_uplink"}) == 0
    assert session.received_audio[: len(record.sent_pcm)] == record.sent_pcm


# --- 8. slow bodies must not exhaust file descriptors ---------------------------------------------------


SLOW_CLIENTS = 1_100
FD_LIMIT = 1_024


@asynccontextmanager
async def serve_with_fd_limit(soft: int, hard: int | None, tmp_path: Path) -> AsyncIterator[str]:
    """``python -m bridge serve`` started with RLIMIT_NOFILE (soft, hard); yields its base URL."""
    from test_drain import clean_env, free_port, get_status, open_log

    def limit() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                                                    if hard is None else hard))

    port = free_port()
    log_fd = open_log(tmp_path / "serve.log")
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=clean_env({}), cwd=tmp_path, stdout=log_fd, stderr=log_fd, preexec_fn=limit,
        )
    finally:
        os.close(log_fd)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with trio.fail_after(15):
            while await get_status(base_url + "/healthz") != 200:  # noqa: ASYNC110 -- another process
                await trio.sleep(0.05)
        yield base_url
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


async def trickle_body(port: int, cut_off: list[float], started: trio.Semaphore) -> None:
    """A webhook POST whose body comes one byte a second; appends when the server hung up."""
    try:
        with trio.move_on_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        started.release()
        return
    if stream is None:  # type: ignore[comparison-overlap]
        started.release()
        return
    t0 = trio.current_time()
    async with stream:
        try:
            head = b"POST /twilio/status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n" \
                   b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
            await stream.send_all(head)
            started.release()
            async with trio.open_nursery() as both:

                async def watch_close() -> None:
                    while await stream.receive_some(4096):
                        pass
                    cut_off.append(trio.current_time() - t0)
                    both.cancel_scope.cancel()

                both.start_soon(watch_close)
                for _ in range(120):
                    await trio.sleep(1.0)
                    await stream.send_all(b"a")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            cut_off.append(trio.current_time() - t0)


async def test_healthz_answers_under_1100_slow_bodies_at_a_1024_fd_limit(nursery, tmp_path):
    hard = None  # the system's hard limit (above 1,024 here): serve raises its soft limit to it
    async with serve_with_fd_limit(FD_LIMIT, hard, tmp_path) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        cut_off: list[float] = []
        started = trio.Semaphore(0)
        async with trio.open_nursery() as slow:
            for _ in range(SLOW_CLIENTS):
                slow.start_soon(trickle_body, port, cut_off, started)
            with trio.fail_after(LIMIT_S):
                for _ in range(SLOW_CLIENTS):
                    await started.acquire()
            t0 = trio.current_time()
            # With the soft limit raised to the hard one, every slow client fits and /healthz answers at
            # once (at a soft limit of 1,024 it waited for Quart's 60 s body timeout).
            bound_s = 3.0
            async with httpx.AsyncClient(timeout=bound_s) as client:
                response = await client.get(base_url + "/healthz")
            answered_s = trio.current_time() - t0
            slow.cancel_scope.cancel()
    assert response.status_code == 200
    assert answered_s < bound_s, answered_s


# --- 4. a silent, half-open stream is noticed ---------------------------------------------------------------


async def test_a_stream_that_goes_silent_ends_within_10_s_and_its_agent_session_is_closed(nursery):
    from bridge import _twilio

    agent, bridge = await start_pair(nursery)
    stream_sid, call_sid = "MZ" + "0" * 32, "CA" + "0" * 32
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(bridge.stream_url) as ws:
            await ws.send_message(_twilio.connected_message())
            await ws.send_message(_twilio.start_message(
                stream_sid=stream_sid, call_sid=call_sid, account_sid="AC" + "0" * 32, custom_parameters={}
            ))
            for i in range(25):
                await ws.send_message(_twilio.media_event_message(
                    stream_sid=stream_sid, payload=b"\xff" * 160, chunk=i + 1, timestamp_ms=20 * i,
                    sequence_number=i + 2,
                ))
            session = await agent.wait_for_session(1)
            await session.wait_start()
            silent_from = trio.current_time()
            # Now silent, but alive at the TCP level: it still reads (and answers pings).
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed:
                ended_after = trio.current_time() - silent_from
        await session.closed.wait()
        await bridge.wait_idle()
    assert ended_after < 10.0, ended_after
    assert ended_after >= bridge.state.config.stream_idle_timeout_s - 0.5, ended_after
    assert session.close_code == 1000
    assert bridge.metric("bridge_calls_ended_total", {"reason": "twilio_idle"}) == 1


# --- 3. a caller that stops reading ---------------------------------------------------------------------


async def stuck_caller(
    port: int, connected: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A Twilio stream that keeps sending audio (so it is not idle) but never reads what it is sent:
    a tiny receive buffer, and trio-websocket's one-message queue left full."""
    from bridge import _twilio

    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    async with trio.open_nursery() as inner:
        ws = await trio_websocket.wrap_client_stream(inner, stream, "127.0.0.1", "/twilio/stream")
        stream_sid, call_sid = "MZ" + "1" * 32, "CA" + "1" * 32
        await ws.send_message(_twilio.connected_message())
        await ws.send_message(_twilio.start_message(
            stream_sid=stream_sid, call_sid=call_sid, account_sid="AC" + "1" * 32, custom_parameters={}
        ))
        connected.set()
        task_status.started()
        try:
            for i in range(100_000):
                await ws.send_message(_twilio.media_event_message(
                    stream_sid=stream_sid, payload=b"\xff" * 160, chunk=i + 1, timestamp_ms=20 * i,
                    sequence_number=i + 2,
                ))
                await trio.sleep(0.02)
        except trio_websocket.ConnectionClosed:
            pass
        inner.cancel_scope.cancel()


async def flood_the_caller(session) -> None:  # type: ignore[no-untyped-def]
    """Agent audio far beyond any socket buffer: 100 s, cleared, again (each clear makes room)."""
    second = b"\x00\x10" * 24_000
    for _ in range(12):
        await session.send_media(second * 100, chunk_bytes=len(second))
        await session.clear()
    await trio.sleep_forever()


async def test_a_caller_that_stops_reading_ends_the_call_and_its_agent_session(nursery):
    agent, bridge = await start_pair(nursery, flood_the_caller)
    port = int(bridge.base_url.rsplit(":", 1)[1])
    connected = trio.Event()
    with trio.fail_after(LIMIT_S):
        await nursery.start(stuck_caller, port, connected)
        session = await agent.wait_for_session(1)
        await session.wait_start()
        await session.closed.wait()  # the agent session is closed although the caller never reads
        await bridge.wait_idle(10.0)  # and the call's slot is free
    # Closed by the bridge: cleanly, or (when the flooding agent is itself blocked sending and cannot
    # answer the close within the bridge's 1 s budget) by cutting the connection.
    assert session.closed_by == "peer" and session.close_code in (1000, 1006), session.close_code
    assert bridge.metric("bridge_calls_active") == 0


async def test_serve_exits_on_sigterm_within_drain_plus_10_s_with_a_caller_not_reading(nursery, tmp_path):
    from test_drain import serve_process

    drain_s = 1.0
    agent = await start_agent(nursery, flood_the_caller)
    env = {"SPEAKR_WS_URL": agent.url, "BRIDGE_DRAIN_TIMEOUT_S": str(drain_s)}
    async with serve_process(env, tmp_path) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        with trio.fail_after(LIMIT_S):
            await nursery.start(stuck_caller, port, trio.Event())
            session = await agent.wait_for_session(1)
            await session.wait_start()
            await trio.sleep(1.0)  # the flood is under way and the caller's socket full
            t_signal = trio.current_time()
            server.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(drain_s + 10.0):
                returncode = await server.process.wait()
            exited_s = trio.current_time() - t_signal
            await session.closed.wait()
    assert server.process.returncode is not None, f"still running {exited_s:.1f} s after SIGTERM"
    assert returncode == 0, server.log()
    assert exited_s < drain_s + 10.0
    assert session.closed_by == "peer" and session.close_code in (1000, 1006), session.close_code


async def test_a_normal_hang_up_frees_its_slot_in_well_under_the_close_timeout(nursery):
    agent, bridge = await start_pair(nursery)
    delays = []
    with trio.fail_after(LIMIT_S):
        for _ in range(7):
            record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=1.0).run()
            assert record.outcome == "hung_up", (record.outcome, record.error)
            while bridge.state.active_calls:  # noqa: ASYNC110 -- server state has no event to wait on
                await trio.sleep(0.002)
            delays.append(trio.current_time() - record.events_of("stop_sent")[0].wall_s)
    delays.sort()
    assert delays[len(delays) // 2] < 0.3, delays  # was 1.0 s: the whole CLOSE_TIMEOUT_S, every call


async def test_caller_audio_lost_to_a_shutdown_is_counted(nursery):
    from e2e_helpers import speechlike

    agent, bridge = await start_pair(nursery)
    audio = speechlike(10.0, 8000, seed=9)
    records = []

    async def call() -> None:
        records.append(await TwilioCaller(stream_url=bridge.stream_url, audio=audio, speed=1.0).run())

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as calls:
            calls.start_soon(call)
            session = await agent.wait_for_session(1)
            await session.wait_audio_bytes(512 * 10 + 100)
            await trio.sleep(0.03)  # mid-frame: 20 ms Twilio frames never line up with 32 ms Speakr ones
            bridge.state.end_all_calls.set()  # what the drain does at its timeout
        await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "server_shutdown"}) == 1
    received = len(session.received_audio)
    # Every byte of caller audio the bridge took in either reached the agent or was counted as lost.
    lost = bridge.metric("bridge_dropped_total", {"reason": "unsent_at_end"})
    assert received % 512 == 0
    taken_in = bridge.metric("bridge_audio_bytes_total", {"direction": "twilio_in"}) * 2  # μ-law -> PCM16
    if taken_in > received:
        assert lost >= 1, (taken_in, received)

