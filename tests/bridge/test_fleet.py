"""Many cores and many hosts keep every promise of one process (README: "Sizing and deployment").

Real parts only: ``python -m bridge serve --workers N`` processes signalled for real, two ``serve`` instances
sharing one real ``redis-server`` standing in for two hosts, the agent and Twilio caller emulators here.
"""

from __future__ import annotations

import signal
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fleet_helpers import Serve, get_status, running_redis, serve
from twilio.request_validator import RequestValidator

from bridge.emulators import CallRecord, SpeakrAgentServer, TwilioCaller

AUTH = "fleet-test-auth-token-0123456789"
API = "fleet-test-api-token"
LIMIT = 4
BURST = 10


def assert_busy(record: CallRecord) -> None:
    assert record.webhook_status == 200 and record.outcome == "no_stream", (record.outcome, record.error)
    twiml = ElementTree.fromstring(record.twiml or "")
    # The busy answer (<Say> then <Hangup>), never a <Connect> whose fallback is the apology.
    assert twiml.find("./Connect") is None and twiml.find("./Say") is not None, record.twiml
    assert twiml.find("./Hangup") is not None, record.twiml


async def start_agent(nursery: trio.Nursery) -> SpeakrAgentServer:
    agent = SpeakrAgentServer()
    await nursery.start(agent.serve)
    return agent


@asynccontextmanager
async def fleet(
    tmp_path: Path, layout: str, env: dict[str, str], *, public_url: bool = True
) -> AsyncIterator[list[Serve]]:
    """``1 worker``, ``2 workers`` (one serve) or ``2 instances`` (two serves sharing a real Redis)."""
    async with AsyncExitStack() as stack:
        if layout == "2 instances":
            redis = stack.enter_context(running_redis())
            env = {**env, "REDIS_URL": redis.url}
            servers = [
                await stack.enter_async_context(serve(tmp_path, env=env, public_url=public_url)),
                await stack.enter_async_context(serve(tmp_path, env=env, public_url=public_url)),
            ]
        else:
            workers = 2 if layout == "2 workers" else 1
            servers = [
                await stack.enter_async_context(
                    serve(tmp_path, workers=workers, env=env, public_url=public_url)
                )
            ]
        yield servers


LAYOUTS = ["1 worker", "2 workers", "2 instances"]


# --- bursts at the limit --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_burst_past_the_limit_never_exceeds_it_and_every_refusal_is_busy(nursery, tmp_path, layout):
    agent = await start_agent(nursery)
    env = {"SPEAKR_WS_URL": agent.url, "TWILIO_AUTH_TOKEN": AUTH, "MAX_CONCURRENT_CALLS": str(LIMIT)}
    async with fleet(tmp_path, layout, env) as servers:
        records: list[CallRecord] = []
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, sum(not s.closed.is_set() for s in agent.sessions))
                await trio.sleep(0.005)

        async def call(i: int) -> None:
            server = servers[i % len(servers)]
            caller = TwilioCaller(webhook_url=server.voice_url, auth_token=AUTH, hangup_after_s=6.0)
            records.append(await caller.run())

        with trio.fail_after(40):
            async with trio.open_nursery() as calls:
                calls.start_soon(watch)
                async with trio.open_nursery() as burst:
                    for i in range(BURST):
                        burst.start_soon(call, i)
                calls.cancel_scope.cancel()
    connected = [r for r in records if r.connected]
    refused = [r for r in records if not r.connected]
    assert len(connected) == LIMIT, [(r.outcome, r.error) for r in records]
    assert all(r.outcome == "hung_up" for r in connected), [(r.outcome, r.close_code) for r in connected]
    for record in refused:
        assert_busy(record)
    assert len(agent.sessions) == LIMIT and most <= LIMIT


# --- single-use tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["2 workers", "2 instances"])
async def test_a_used_token_is_refused_on_every_worker_and_instance(nursery, tmp_path, layout):
    agent = await start_agent(nursery)
    env = {"SPEAKR_WS_URL": agent.url, "TWILIO_AUTH_TOKEN": AUTH}
    async with fleet(tmp_path, layout, env) as servers:
        with trio.fail_after(60):
            first = await TwilioCaller(
                webhook_url=servers[0].voice_url, auth_token=AUTH, hangup_after_s=0.5
            ).run()
            assert first.outcome == "hung_up", (first.outcome, first.error)
            # The call has ended on the server too (its slot is free): only the used token can stop a replay.
            for server in servers:
                while await server.metric("bridge_calls_active") != 0:  # noqa: ASYNC110 -- another process
                    await trio.sleep(0.02)
            replays: list[CallRecord] = []
            for i in range(20):
                server = servers[i % len(servers)]
                if i % 2:  # the very same stream start: token and CallSid
                    caller = TwilioCaller(
                        stream_url=server.stream_url,
                        auth_token=AUTH,
                        call_sid=first.call_sid,
                        custom_parameters=first.custom_parameters,
                        hangup_after_s=1.0,
                    )
                else:  # a replayed signed webhook: a fresh token for the same CallSid
                    caller = TwilioCaller(
                        webhook_url=server.voice_url,
                        auth_token=AUTH,
                        call_sid=first.call_sid,
                        hangup_after_s=1.0,
                    )
                replays.append(await caller.run())
    accepted = [r for r in replays if r.outcome == "hung_up"]
    assert not accepted, [(r.outcome, r.close_code) for r in replays]
    assert all(r.outcome == "bridge_closed" for r in replays), [r.outcome for r in replays]
    logs = "".join(server.log() for server in servers)
    assert logs.count("stream refused: reused_token") == 20, logs
    assert len(agent.sessions) == 1  # only the first call ever opened an agent session


# --- drain in every worker --------------------------------------------------------------------------------


async def test_sigterm_drains_every_worker_under_six_live_calls_without_1006(nursery, tmp_path):
    drain_s = 3.0
    agent = await start_agent(nursery)
    env = {"SPEAKR_WS_URL": agent.url, "BRIDGE_DRAIN_TIMEOUT_S": str(drain_s)}
    records: list[CallRecord] = []
    async with serve(tmp_path, workers=2, env=env) as server:

        async def call(hangup_s: float) -> None:
            records.append(await TwilioCaller(webhook_url=server.voice_url, hangup_after_s=hangup_s).run())

        with trio.fail_after(40):
            async with trio.open_nursery() as calls:
                for i in range(6):
                    calls.start_soon(call, 2.0 if i % 2 else 60.0)  # half end during the drain
                while len(agent.sessions) < 6 or not all(s.frames for s in agent.sessions):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                t_signal = trio.current_time()
                server.signal(signal.SIGTERM)
                with trio.fail_after(2.0):
                    while await get_status(server.base_url + "/readyz") != 503:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                for _ in range(10):  # every worker answers 503, and busy TwiML
                    assert await get_status(server.base_url + "/readyz") == 503
                for _ in range(4):
                    assert_busy(await TwilioCaller(webhook_url=server.voice_url).run())
            with trio.fail_after(10.0):
                returncode = await server.process.wait()
            exited = trio.current_time() - t_signal
    assert returncode == 0, server.log()
    assert exited < drain_s + 6.0, exited
    assert sorted(r.outcome for r in records) == ["bridge_closed"] * 3 + ["hung_up"] * 3, records
    assert all(r.close_code == 1000 for r in records), [r.close_code for r in records]
    assert [s.close_code for s in agent.sessions[:6]] == [1000] * 6
    assert len(agent.sessions) == 6  # nothing was admitted during the drain


# --- call records and metrics -----------------------------------------------------------------------------


def status_form(sid: str, status: str, sequence: int) -> dict[str, str]:
    return {
        "CallSid": sid,
        "CallStatus": status,
        "SequenceNumber": str(sequence),
        "Direction": "outbound-api",
        "To": "+14155550100",
        "From": "+15005550006",
        "Timestamp": "Tue, 31 Aug 2010 20:36:28 +0000",
    }


@pytest.mark.parametrize("layout", ["2 workers", "2 instances"])
async def test_call_records_are_the_same_from_every_worker_and_instance(tmp_path, layout):
    env = {"TWILIO_AUTH_TOKEN": AUTH, "BRIDGE_API_TOKEN": API}
    sid = "CA" + "7" * 32
    async with fleet(tmp_path, layout, env) as servers, httpx.AsyncClient(timeout=5.0) as client:
        views: list[Any] = []
        with trio.fail_after(60):
            for n, status in enumerate(["initiated", "ringing", "in-progress", "completed"]):
                for attempt in range(2):  # Twilio retries: the same callback twice, on different workers
                    server = servers[(n + attempt) % len(servers)]
                    url = server.base_url + "/twilio/status"
                    form = status_form(sid, status, n)
                    signature = RequestValidator(AUTH).compute_signature(url, form)
                    answer = await client.post(url, data=form, headers={"X-Twilio-Signature": signature})
                    assert answer.status_code == 204
                seen = []
                for i in range(8):
                    got = await client.get(
                        servers[i % len(servers)].base_url + f"/calls/{sid}",
                        headers={"Authorization": f"Bearer {API}"},
                    )
                    assert got.status_code == 200, got.text
                    seen.append(got.json())
                assert all(v == seen[0] for v in seen)
                assert seen[0]["status"] == status and len(seen[0]["history"]) == n + 1
                views.append(seen[0])
    assert views[-1]["end_status"] == "completed"


async def test_one_scrape_counts_the_calls_of_every_worker(nursery, tmp_path):
    agent = await start_agent(nursery)
    async with serve(tmp_path, workers=2, env={"SPEAKR_WS_URL": agent.url}) as server:
        with trio.fail_after(40):
            async with trio.open_nursery() as calls:
                for _ in range(8):
                    calls.start_soon(TwilioCaller(webhook_url=server.voice_url, hangup_after_s=0.5).run)
            totals = {await server.metric("bridge_calls_total") for _ in range(10)}
            while await server.metric("bridge_calls_active") != 0:  # noqa: ASYNC110 -- the ends unwind
                await trio.sleep(0.05)
            ended = await server.metric("bridge_calls_ended_total", 'reason="twilio_stop"')
    assert totals == {8.0}
    assert ended == 8.0


# --- the store goes away ----------------------------------------------------------------------------------


async def test_redis_outage_live_calls_go_on_new_calls_get_busy_then_recover(nursery, tmp_path):
    agent = await start_agent(nursery)
    with running_redis() as redis:
        env = {"SPEAKR_WS_URL": agent.url, "TWILIO_AUTH_TOKEN": AUTH, "REDIS_URL": redis.url}
        async with serve(tmp_path, env=env, public_url=True) as server:
            records: list[CallRecord] = []

            async def live_call() -> None:
                caller = TwilioCaller(webhook_url=server.voice_url, auth_token=AUTH, hangup_after_s=4.0)
                records.append(await caller.run())

            with trio.fail_after(60):
                async with trio.open_nursery() as calls:
                    calls.start_soon(live_call)
                    session = await agent.wait_for_session(1)
                    await session.wait_audio_bytes(512 * 4)
                    redis.stop()
                    frames = len(session.frames)
                    outage = await TwilioCaller(webhook_url=server.voice_url, auth_token=AUTH).run()
                    await trio.sleep(1.0)
                    assert len(session.frames) > frames  # the live call goes on
                assert_busy(outage)
                assert await server.metric("bridge_store_up") == 0.0
                assert await server.metric("bridge_store_errors_total", 'op="reserve"') >= 1
                assert await get_status(server.base_url + "/readyz") == 200  # still answers webhooks
                redis.start()  # back on the same port, empty
                back = await TwilioCaller(
                    webhook_url=server.voice_url, auth_token=AUTH, hangup_after_s=0.5
                ).run()
            log = server.log()
    assert records[0].outcome == "hung_up" and records[0].close_code == 1000
    assert session.close_code == 1000
    assert back.outcome == "hung_up", (back.outcome, back.error, log)
    assert "store unreachable" in log and "store reachable again" in log


# --- operator's view --------------------------------------------------------------------------------------


async def test_serve_says_where_it_listens_and_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    import socket
    import subprocess
    import sys

    from fleet_helpers import clean_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await trio.to_thread.run_sync(
            lambda: subprocess.run(
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
                    "2",
                ],
                env=clean_env({}),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"speakr-bridge: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    async with serve(tmp_path, workers=2) as server:
        assert f"listening on {server.base_url} with 2 workers" in server.log()


# --- the store's contract, per backend ----------------------------------------------------------------------


@asynccontextmanager
async def each_store(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    from bridge._store import open_store

    if kind == "redis":
        with running_redis() as redis:
            async with open_store(redis.url, None) as store:
                yield store
    else:
        async with open_store(None, str(tmp_path) if kind == "sqlite" else None) as store:
            yield store


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_store_contract(tmp_path, kind):
    import time

    async with each_store(kind, tmp_path) as store:
        assert store.kind == kind
        later = time.time() + 60
        assert await store.reserve("CA1", limit=2) and await store.reserve("CA1", limit=2)  # idempotent
        assert await store.reserve("CA2", limit=2)
        assert not await store.reserve("CA3", limit=2)  # full
        assert await store.admit("CA1", subject="CA1", token_expiry=later, limit=2) is None  # claims its own
        assert await store.admit("CA1", subject="CA1", token_expiry=later, limit=2) == "reused_token"
        assert await store.admit("CA1", subject=None, token_expiry=0, limit=2) == "duplicate_call"
        assert await store.admit("CA9", subject=None, token_expiry=0, limit=2) == "busy"
        assert await store.live_calls() == {"CA1": "live", "CA2": "reserved"}
        await store.release("CA1")
        assert await store.admit("CA9", subject="CA9", token_expiry=later, limit=2) is None
        # A lease that is not renewed lapses (a crashed worker gives its slots back); a renewed one stays.
        assert await store.admit("CA4", subject=None, token_expiry=0, limit=9, ttl_s=0.3) is None
        assert await store.admit("CA5", subject=None, token_expiry=0, limit=9, ttl_s=0.3) is None
        await trio.sleep(0.2)
        await store.renew(["CA5"], ttl_s=5.0)
        await trio.sleep(0.3)
        live = await store.live_calls()
        assert "CA4" not in live and live.get("CA5") == "live"
        await store.renew(["CA4"])  # a live call whose lease lapsed (a long outage) is counted again
        assert (await store.live_calls()).get("CA4") == "live"
        # Records: a base set once, events appended by anyone, read back the same.
        assert await store.record_create("CA7", {"sid": "CA7", "n": 1})
        assert not await store.record_create("CA7", {"sid": "CA7", "n": 2})
        await store.record_event("CA7", {"status": "ringing"})
        await store.record_event("CA7", {"status": "completed"})
        assert await store.record_get("CA7") == (
            {"sid": "CA7", "n": 1},
            [{"status": "ringing"}, {"status": "completed"}],
        )
        assert await store.record_get("CA8") is None
        await store.ping()


async def test_idle_unauthenticated_sockets_hold_no_call_slot(nursery):
    """Issue 16 item 2: a stream is counted only once its start shows a valid token."""
    import trio_websocket
    from e2e_helpers import start_bridge

    agent = await start_agent(nursery)
    from bridge._config import Secret

    bridge = await start_bridge(
        nursery, speakr_ws_url=agent.url, twilio_auth_token=Secret(AUTH), max_concurrent_calls=2
    )
    # PUBLIC_URL is unset: the webhook's signature is checked against the request's own URL.
    async with AsyncExitStack() as idle:
        for _ in range(30):
            await idle.enter_async_context(trio_websocket.open_websocket_url(bridge.stream_url))
        with trio.fail_after(20):
            records = []
            async with trio.open_nursery() as calls:
                for _ in range(2):
                    calls.start_soon(
                        lambda: _append(
                            records,
                            TwilioCaller(webhook_url=bridge.voice_url, auth_token=AUTH, hangup_after_s=0.5),
                        )
                    )
    assert [r.outcome for r in records] == ["hung_up", "hung_up"], [(r.outcome, r.error) for r in records]
    assert len(agent.sessions) == 2


async def _append(records: list[CallRecord], caller: TwilioCaller) -> None:
    records.append(await caller.run())


def _doctor(tmp_path: Path, env: dict[str, str]) -> Any:
    import subprocess
    import sys

    from fleet_helpers import clean_env

    return subprocess.run(
        [sys.executable, "-m", "bridge", "doctor"],
        env=clean_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_doctor_reports_the_store_and_redis_reachability(tmp_path):
    from fleet_helpers import free_port

    with running_redis() as redis:
        up = _doctor(tmp_path, {"REDIS_URL": redis.url})
    down = _doctor(tmp_path, {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    embedded = _doctor(tmp_path, {})
    assert f"[ok  ] store: redis (redis://127.0.0.1:{redis.port}/0) answers" in up.stdout, up.stdout
    assert "[FAIL] store: redis" in down.stdout and "NOT READY" in down.stdout and down.returncode == 1
    assert "[ok  ] store: embedded" in embedded.stdout


def test_doctor_is_not_ready_when_public_url_cannot_be_reached(tmp_path):
    from fleet_helpers import free_port

    result = _doctor(tmp_path, {"PUBLIC_URL": f"http://127.0.0.1:{free_port()}"})
    assert "/healthz not reachable" in result.stdout and "verdict: NOT READY" in result.stdout, result.stdout
    assert result.returncode == 1


# --- the docs tell the truth --------------------------------------------------------------------------------


def test_env_example_lists_every_variable_and_the_docs_stand_alone():
    import re

    from bridge._config import VARIABLES

    root = Path(__file__).resolve().parents[2]
    example = (root / ".env.example").read_text()
    assert [v for v in VARIABLES if v not in example] == []
    readme = (root / "README.md").read_text()
    for doc in (readme, (root / "docs" / "DESIGN.md").read_text()):
        assert "../shared" not in doc
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)
    }
    anchors = set(re.findall(r"\]\(#([^)]+)\)", readme))
    assert anchors - headings == set()
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", readme):
        assert (root / target).exists(), target


async def test_a_worker_that_dies_is_replaced_and_the_server_goes_on(tmp_path):
    import os
    import re

    async with serve(tmp_path, workers=2) as server:
        await trio.sleep(5.5)  # past MIN_WORKER_LIFE_S: a worker dying this late is replaced
        pids = re.findall(r"\[worker (\d+)\] started", server.log())
        assert len(pids) == 2
        os.kill(int(pids[0]), signal.SIGKILL)
        with trio.fail_after(20):
            while len(re.findall(r"\[worker (\d+)\] started", server.log())) < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)
            while server.log().count("store: ") < 3:  # noqa: ASYNC110 -- the new worker is serving
                await trio.sleep(0.05)
        for _ in range(10):
            assert await get_status(server.base_url + "/readyz") == 200
        assert server.process.returncode is None
        server.signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await server.process.wait() == 0
    assert f"worker {pids[0]} exited" in server.log()


async def test_while_draining_a_reserved_call_still_connects_and_nothing_else_does(nursery):
    """A caller told "connect" just before the drain began is served, not given the apology."""
    from e2e_helpers import start_bridge

    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    reserved = "CA" + "1" * 32
    with trio.fail_after(20):
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = await client.post(bridge.voice_url, data={"CallSid": reserved})
        assert "<Connect>" in answer.text
        bridge.state.draining = True  # what the drain does first (bridge._serve.drain)
        kept = await TwilioCaller(stream_url=bridge.stream_url, call_sid=reserved, hangup_after_s=0.5).run()
        other = await TwilioCaller(stream_url=bridge.stream_url, hangup_after_s=0.5).run()
        busy = await TwilioCaller(webhook_url=bridge.voice_url).run()
    assert kept.outcome == "hung_up", (kept.outcome, kept.error)
    assert other.outcome == "bridge_closed" and len(agent.sessions) == 1
    assert_busy(busy)
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "draining"}) == 2
