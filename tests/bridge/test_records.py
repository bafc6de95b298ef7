"""Call records, recordings, the end-of-call webhook, listing, hang-up and transfer, end to end.

Real Hypercorn bridges on 127.0.0.1, the Twilio caller emulator, the Speakr agent emulator, the stand-in of
Twilio's REST API, a real webhook receiver (a second Hypercorn server) and, for the fleet case, a real
redis-server.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import trio
from e2e_helpers import best_alignment, pcm, snr_db, speechlike, start_agent, start_bridge
from fleet_helpers import running_redis
from quart import Response, request
from quart_trio import QuartTrio

import codec
from bridge._config import Config, Secret
from bridge._recording import SILENCE, read_mulaw_wav
from bridge._records import SIGNATURE_HEADER, verify_signature
from bridge._server import serve_in_process
from bridge.app import create_app
from bridge.emulators import TwilioCaller
from bridge.emulators._twilio_rest_api import TwilioRestApi

LIMIT_S = 30
TOKEN = "api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sid(n: int) -> str:
    return "CA" + f"{n:032x}"


async def api_get(base: str, path: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        return await client.get(path, headers=AUTH, params=params)


async def api_post(base: str, path: str, body: Any = None, token: str = TOKEN) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        return await client.post(path, headers={"Authorization": f"Bearer {token}"}, json=body)


def runs(track: bytes, min_gap: int = 400) -> list[tuple[int, int]]:
    """(start, end) of the non-silent stretches of a μ-law track, split at >= ``min_gap`` samples of
    silence."""
    loud = np.frombuffer(track, np.uint8) != SILENCE
    idx = np.flatnonzero(loud)
    if not len(idx):
        return []
    out, start, last = [], int(idx[0]), int(idx[0])
    for i in idx[1:]:
        if i - last > min_gap:
            out.append((start, last + 1))
            start = int(i)
        last = int(i)
    out.append((start, last + 1))
    return out


def content(track: bytes, min_silence: int = 64) -> bytes:
    """``track`` without its silences of ``min_silence`` samples or more (the buffer ran dry: the recording
    places those from the marks, to within one 20 ms frame; see _recording.py)."""
    out = bytearray()
    i = 0
    n = len(track)
    while i < n:
        j = i
        while j < n and track[j] == SILENCE:
            j += 1
        if j - i >= min_silence:
            i = j
            continue
        out += track[i : max(j, i + 1)]
        i = max(j, i + 1)
    return bytes(out)


async def test_recording_right_channel_is_exactly_what_the_phone_played_across_clear_and_continue(
    nursery, tmp_path
):
    """The quality bar: pause -> clear, then pause -> continue. Cleared audio is absent, resumed audio present
    once, and every stretch the phone played is in the right channel sample for sample, each placed where it
    played to within one 20 ms frame (silences shorter than 60 ms, where the buffer ran dry, are closed up:
    marks cannot time them better). The only other difference is the fraction of a piece the phone had
    started when a pause cut it (Twilio never confirms it; the
    recording has that piece where it played in full, after the continue)."""
    old = speechlike(2.0, 24000, seed=41)
    new = speechlike(2.0, 24000, seed=42)

    async def script(session: Any) -> None:
        await session.send_media(old, chunk_bytes=4800)
        await session.wait_statuses(8)
        await session.pause()
        await trio.sleep(0.3)
        await session.clear()
        sent = await session.send_media(new, chunk_bytes=4800)
        await session.wait_until(lambda: len(session.statuses) >= 8 + 4, "4 pieces of the new answer")
        await session.pause()
        await trio.sleep(0.3)
        await session.resume()
        await session.wait_until(lambda: any(s.sequence_id == sent[-1][1] for s in session.statuses))
        await session.end()

    agent = await start_agent(nursery, script)
    bridge = await start_bridge(
        nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN), recordings_dir=str(tmp_path)
    )
    caller_audio = speechlike(6.0, 8000, seed=43, amplitude=3000)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, audio=caller_audio, call_sid=sid(1)).run()
        await bridge.wait_idle()
        view = (await api_get(bridge.base_url, f"/calls/{sid(1)}")).json()
        wav = await api_get(bridge.base_url, f"/calls/{sid(1)}/recording.wav")
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    assert wav.content == (tmp_path / f"{sid(1)}.wav").read_bytes()
    left, right = read_mulaw_wav(wav.content)
    # Left: the caller, byte for byte as sent (up to the moment the bridge hung up).
    sent = bytes(record.sent_ulaw)
    m = min(len(left), len(sent))
    assert m >= len(sent) - 8000 and left[:m] == sent[:m]
    # Right: the stretches the phone played.
    heard = bytes(record.heard_ulaw)
    heard_runs, right_runs = runs(heard), runs(right)
    assert len(heard_runs) == len(right_runs) == 3, (heard_runs, right_runs)
    shift = heard_runs[0][0] - right_runs[0][0]
    fragments = []
    for (hs, he), (rs, re_) in zip(heard_runs, right_runs, strict=True):
        r, h = content(right[rs:re_]), content(heard[hs:he])
        assert h[: len(r)] == r  # sample for sample
        fragments.append(len(h) - len(r))
        assert abs((rs + shift) - hs) <= 800  # placed where it played, within 0.1 s
    # Cut by the pauses: less than one 100 ms piece (plus the marks in flight) each; nothing after the end.
    assert 0 <= fragments[0] < 2400 and 0 <= fragments[1] < 2400 and fragments[2] == 0, fragments
    # The new answer is in the recording once and whole: its two stretches, joined, are the answer.
    joined = pcm(
        codec.ulaw_decode(
            right[right_runs[1][0] : right_runs[1][1]] + right[right_runs[2][0] : right_runs[2][1]]
        )
    )
    ideal = pcm(new)[::3]
    offset, peak = best_alignment(ideal, joined[:4000])
    assert offset == 0 and peak > 0.99
    n = min(len(ideal), len(joined)) - 16
    assert abs(len(joined) - len(ideal)) <= 16 and snr_db(ideal[:n], joined[:n]) >= 30.0
    # ... and the old answer's cleared rest is not.
    old_ideal = pcm(old)[::3]
    old_heard = right[right_runs[0][0] : right_runs[0][1]]
    assert len(old_heard) < len(old_ideal) - 4000
    # The record.
    assert view["direction"] == "inbound" and view["status"] == "completed" and view["live"] is False
    assert view["agent"] == "speakr" and view["end_reason"] == "agent_end"
    assert view["barge_ins"] == {"pause": 2, "clear": 1, "continue": 1}
    assert view["recording"] == f"/calls/{sid(1)}/recording.wav"
    played = sum(e - s for s, e in right_runs)
    assert abs(view["played_ms"] - played / 8) <= 2
    assert view["cleared_ms"] >= 500
    assert view["started_at"] and view["ended_at"] and view["duration_s"] > 3
    assert view["agent_ready_ms"] is not None
    print(f"fragments cut by pauses: {fragments} samples; right stretches {right_runs}")


async def receiver(nursery: trio.Nursery, fail_first: int) -> tuple[str, list[tuple[bytes, dict[str, str]]]]:
    """A webhook receiver on 127.0.0.1: answers 500 to the first ``fail_first`` POSTs, then 204."""
    app = QuartTrio("receiver")
    got: list[tuple[bytes, dict[str, str]]] = []

    @app.post("/hook")
    async def hook() -> Response:
        got.append((await request.get_data(), dict(request.headers)))
        return Response("", status=500 if len(got) <= fail_first else 204)

    base = await nursery.start(partial(serve_in_process, app))
    return base + "/hook", got


async def test_the_webhook_posts_the_record_signed_once_the_call_ended_and_retries_failures(nursery):
    url, got = await receiver(nursery, fail_first=1)
    agent = await start_agent(nursery)
    bridge = await start_bridge(
        nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN), call_webhook_url=url
    )
    with trio.fail_after(LIMIT_S):
        await TwilioCaller(
            stream_url=bridge.stream_url,
            call_sid=sid(2),
            hangup_after_s=1.0,
            speed=2.0,
            dtmf=[(0.2, "4"), (0.4, "2")],
        ).run()
        while len(got) < 2:  # noqa: ASYNC110 - the receiver has no event to wait on
            await trio.sleep(0.05)
        view = await api_get(bridge.base_url, f"/calls/{sid(2)}")
    body, headers = got[-1]
    assert got[0][0] == body  # the retry sends the same body
    assert body == view.content  # the webhook body is GET /calls/{sid}, byte for byte
    assert verify_signature(body, headers[SIGNATURE_HEADER], TOKEN)
    assert not verify_signature(body + b" ", headers[SIGNATURE_HEADER], TOKEN)
    record = orjson.loads(body)
    assert record["sid"] == sid(2) and record["end_reason"] == "twilio_stop" and record["dtmf"] == "42"
    assert [d["digit"] for d in record["dtmf_events"]] == ["4", "2"]
    assert bridge.metric("bridge_call_webhooks_total", {"outcome": "delivered"}) == 1
    assert bridge.metric("bridge_call_webhook_attempts_total", {"result": "5xx"}) == 1


async def test_a_webhook_that_never_answers_is_counted_and_holds_up_no_call(nursery):
    agent = await start_agent(nursery)
    # Nothing listens on this port: every attempt fails at once.
    bridge = await start_bridge(
        nursery,
        speakr_ws_url=agent.url,
        bridge_api_token=Secret(TOKEN),
        call_webhook_url="http://127.0.0.1:9/hook",
    )
    with trio.fail_after(LIMIT_S):
        t0 = trio.current_time()
        await TwilioCaller(stream_url=bridge.stream_url, call_sid=sid(3), hangup_after_s=0.2).run()
        await bridge.wait_idle()
        assert trio.current_time() - t0 < 3.0  # the call did not wait on the webhook's retries
        while not bridge.metric("bridge_call_webhooks_total", {"outcome": "failed"}):  # noqa: ASYNC110
            await trio.sleep(0.1)
    assert bridge.metric("bridge_call_webhook_attempts_total", {"result": "error"}) == 4


async def test_get_calls_lists_newest_first_with_filters_and_paging(nursery):
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN))
    with trio.fail_after(LIMIT_S):
        for n in range(5):
            params = {"agent": "other"} if n == 4 else {}
            await TwilioCaller(
                stream_url=bridge.stream_url,
                call_sid=sid(10 + n),
                hangup_after_s=0.1,
                speed=4.0,
                custom_parameters=params,
            ).run()
            await bridge.wait_idle()
        first = (await api_get(bridge.base_url, "/calls", limit=2)).json()
        second = (await api_get(bridge.base_url, "/calls", limit=2, cursor=first["next_cursor"])).json()
        third = (await api_get(bridge.base_url, "/calls", limit=2, cursor=second["next_cursor"])).json()
        others = (await api_get(bridge.base_url, "/calls", agent="other")).json()
        done = (await api_get(bridge.base_url, "/calls", status="completed", limit=10)).json()
        none = (await api_get(bridge.base_url, "/calls", since="2999-01-01T00:00:00Z")).json()
        bad = await api_get(bridge.base_url, "/calls", limit=0)
        async with httpx.AsyncClient(base_url=bridge.base_url) as client:
            anonymous = await client.get("/calls")
    order = [c["sid"] for page in (first, second, third) for c in page["calls"]]
    assert order == [sid(14), sid(13), sid(12), sid(11), sid(10)]
    assert [c["sid"] for c in others["calls"]] == [sid(14)]
    assert len(done["calls"]) == 5 and none == {"calls": [], "next_cursor": None}
    assert bad.status_code == 422 and anonymous.status_code == 401


async def test_records_are_bounded_in_count(nursery):
    agent = await start_agent(nursery)
    bridge = await start_bridge(
        nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN), call_records_max=2
    )
    with trio.fail_after(LIMIT_S):
        for n in range(3):
            await TwilioCaller(
                stream_url=bridge.stream_url, call_sid=sid(20 + n), hangup_after_s=0.1, speed=4.0
            ).run()
            await bridge.wait_idle()
        listed = (await api_get(bridge.base_url, "/calls")).json()
        oldest = await api_get(bridge.base_url, f"/calls/{sid(20)}")
    assert [c["sid"] for c in listed["calls"]] == [sid(22), sid(21)] and oldest.status_code == 404


async def test_with_redis_records_are_read_from_another_host_and_survive_a_restart(nursery):
    with running_redis() as redis:
        agent = await start_agent(nursery)
        common = dict(speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN), redis_url=Secret(redis.url))
        async with trio.open_nursery() as first_host:
            a = await start_bridge(first_host, **common)
            with trio.fail_after(LIMIT_S):
                await TwilioCaller(
                    stream_url=a.stream_url, call_sid=sid(30), hangup_after_s=0.3, speed=2.0
                ).run()
                await a.wait_idle()
            first_host.cancel_scope.cancel()  # that host goes away
        b = await start_bridge(nursery, **common)
        with trio.fail_after(LIMIT_S):
            view = (await api_get(b.base_url, f"/calls/{sid(30)}")).json()
            listed = (await api_get(b.base_url, "/calls")).json()
    assert view["end_reason"] == "twilio_stop" and view["status"] == "completed"
    assert [c["sid"] for c in listed["calls"]] == [sid(30)]


async def test_hang_up_through_the_api_ends_a_live_call(nursery):
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as inner:
            done: list[Any] = []

            async def call() -> None:
                done.append(
                    await TwilioCaller(stream_url=bridge.stream_url, call_sid=sid(40), max_call_s=20).run()
                )

            inner.start_soon(call)
            session = await agent.wait_for_session(1)
            await session.wait_start()
            refused = await api_post(bridge.base_url, f"/calls/{sid(40)}/hangup", token="wrong")
            answer = await api_post(bridge.base_url, f"/calls/{sid(40)}/hangup")
        await bridge.wait_idle()
        view = (await api_get(bridge.base_url, f"/calls/{sid(40)}")).json()
        again = await api_post(bridge.base_url, f"/calls/{sid(40)}/hangup")
        unknown = await api_post(bridge.base_url, f"/calls/{sid(41)}/hangup")
    assert refused.status_code == 401
    assert answer.status_code == 202 and answer.json()["outcome"] == "ended_locally"
    assert done[0].outcome == "bridge_closed"
    assert view["end_reason"] == "hung_up_by_api" and view["hangup"]["by"] == "api"
    assert again.status_code == 409 and unknown.status_code == 404


async def rest_bridge(
    nursery: trio.Nursery, agent_url: str, api: TwilioRestApi, **extra: Any
) -> tuple[str, Any]:
    """A bridge with REST credentials for the stand-in, whose PUBLIC_URL is its own address."""
    await nursery.start(api.serve)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    base = f"http://127.0.0.1:{port}"
    app = create_app(
        Config(
            speakr_ws_url=agent_url,
            bridge_api_token=Secret(TOKEN),
            public_url=base,
            twilio_account_sid=api.account_sid,
            twilio_auth_token=Secret(api.auth_token),
            twilio_from_number="+15005550006",
            twilio_api_base_url=api.base_url,
            **extra,
        )
    )
    await nursery.start(partial(serve_in_process, app, port=port))
    return base, app


async def until_idle(app: Any) -> None:
    while app.extensions["bridge"].active_calls:  # noqa: ASYNC110 - server state has no event
        await trio.sleep(0.01)


async def test_transfer_dials_through_rest_and_both_sockets_close_cleanly(nursery):
    agent = await start_agent(nursery)
    api = TwilioRestApi(hangup_after_s=None, max_call_s=20, ring_s=0.05)
    base, app = await rest_bridge(nursery, agent.url, api)
    with trio.fail_after(LIMIT_S):
        placed = await api_post(base, "/calls", {"to": "+14155550100"})
        call_sid = placed.json()["sid"]
        session = await agent.wait_for_session(1)
        await session.wait_start()
        bad = await api_post(base, f"/calls/{call_sid}/transfer", {"to": "0800"})
        answer = await api_post(base, f"/calls/{call_sid}/transfer", {"to": "+14155550199"})
        await api.calls[call_sid].ended.wait()
        await session.closed.wait()
        await until_idle(app)
        view = (await api_get(base, f"/calls/{call_sid}")).json()
    assert bad.status_code == 422 and answer.status_code == 202
    call = api.calls[call_sid]
    assert call.twiml_updates == [
        '<?xml version="1.0" encoding="UTF-8"?><Response><Dial>+14155550199</Dial></Response>'
    ]
    assert call.record is not None and call.record.outcome == "redirected" and call.record.close_code == 1000
    assert session.close_code == 1000
    assert view["end_reason"] == "transferred" and view["transfer"]["to"] == "+14155550199"
    assert view["direction"] == "outbound"


def test_recording_dir_files_are_named_by_call_sid(tmp_path: Path) -> None:
    from bridge._recording import recording_path

    assert recording_path(tmp_path, sid(1)) == tmp_path / f"{sid(1)}.wav"


# --- the store's record index, per backend ------------------------------------------------------------------


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
async def test_records_are_listed_newest_first_and_bounded_in_count_and_age(tmp_path, kind):
    async with each_store(kind, tmp_path) as store:
        store.record_max = 3
        for n in range(5):
            assert await store.record_create(sid(n), {"sid": sid(n), "created_at": 1000.0 + n})
            await store.record_event(sid(n), {"status": "completed"})
        recent = await store.record_recent(limit=10)
        assert [s for s, _ in recent] == [sid(4), sid(3), sid(2)]  # the oldest two went first
        assert [c for _, c in recent] == [1004.0, 1003.0, 1002.0]
        assert await store.record_get(sid(1)) is None and await store.record_get(sid(2)) is not None
        assert [s for s, _ in await store.record_recent(limit=1, before=1004.0)] == [sid(3)]
        store.record_ttl_s = 1.0
        assert await store.record_create(sid(9), {"sid": sid(9), "created_at": 2000.0})
        await trio.sleep(1.5)
        assert await store.record_create(sid(10), {"sid": sid(10), "created_at": 2001.0})
        # sid(9) aged out; the others were written under the longer age and are still there.
        listed = [s for s, _ in await store.record_recent(limit=10)]
        assert listed[:2] == [sid(10), sid(4)] and sid(9) not in listed and len(listed) <= 3
        assert await store.record_get(sid(9)) is None


# --- answering-machine detection ----------------------------------------------------------------------------


def speaks_at_once(answer: bytes) -> Any:
    async def script(session: Any) -> None:
        await session.send_media(answer, chunk_bytes=4800)
        await trio.sleep(5)

    return script


async def test_amd_human_starts_the_agent_within_a_frame_of_the_callback(nursery):
    agent = await start_agent(nursery, speaks_at_once(speechlike(0.5, 24000, seed=51)))
    api = TwilioRestApi(hangup_after_s=2.0, max_call_s=20, ring_s=0.05, amd_delay_s=0.6)
    base, app = await rest_bridge(nursery, agent.url, api)
    with trio.fail_after(LIMIT_S):
        placed = await api_post(base, "/calls", {"to": "+14155550100", "machine_detection": "hangup"})
        call_sid = placed.json()["sid"]
        session = await agent.wait_for_session(1)
        await session.wait_start()
        observer = app.extensions["bridge"].records.live[call_sid]
        call = api.calls[call_sid]
        await call.ended.wait()
        await until_idle(app)
        view = (await api_get(base, f"/calls/{call_sid}")).json()
    create = api.requests[0].form
    assert create["MachineDetection"] == ["Enable"] and create["AsyncAmd"] == ["true"]
    assert create["AsyncAmdStatusCallback"] == [base + "/twilio/amd"]
    assert call.amd_posted == ("human", 204) and call.amd_posted_at is not None
    assert session.start_wall_s is not None
    # From the callback reaching the bridge to the agent's start: within one 20 ms frame.
    reaction = session.start_wall_s - observer.gate_opened_at
    assert 0 < reaction < 0.02, f"the agent started {reaction * 1000:.1f} ms after the callback arrived"
    # From the stand-in posting it (HTTP and the signature check included): generous, a shared box.
    waited = session.start_wall_s - call.amd_posted_at
    assert call.amd_posted_at < observer.gate_opened_at and waited < 0.5
    assert call.record is not None and np.any(
        np.frombuffer(bytes(call.record.heard_ulaw), np.uint8) != SILENCE
    )
    assert view["answered_by"]["answered_by"] == "human" and view["answered_by"]["action"] == "agent"
    assert view["machine_detection"] == {"on_machine": "hangup", "voicemail_message": None}
    assert view["agent_held_ms"] >= 300  # held from the stream's start until the result
    print(
        f"agent start {reaction * 1000:.1f} ms after the callback arrived, "
        f"{waited * 1000:.1f} ms after it was posted"
    )


async def test_amd_machine_hangs_up_and_the_agent_never_speaks(nursery):
    agent = await start_agent(nursery, speaks_at_once(speechlike(0.5, 24000, seed=52)))
    api = TwilioRestApi(
        hangup_after_s=None,
        max_call_s=20,
        ring_s=0.05,
        amd_delay_s=0.4,
        answered_by={"+14155550100": "machine_end_beep"},
    )
    base, app = await rest_bridge(nursery, agent.url, api)
    with trio.fail_after(LIMIT_S):
        placed = await api_post(base, "/calls", {"to": "+14155550100", "machine_detection": "hangup"})
        call_sid = placed.json()["sid"]
        call = api.calls[call_sid]
        await call.ended.wait()
        await until_idle(app)
        view = (await api_get(base, f"/calls/{call_sid}")).json()
    assert call.amd_posted == ("machine_start", 204) and call.completed_by_api
    session = agent.sessions[0]
    assert session.start_params is None  # held: never started, so never spoke over the greeting
    assert call.record is not None and set(bytes(call.record.heard_ulaw)) <= {SILENCE}
    assert view["answered_by"]["answered_by"] == "machine_start"
    assert view["answered_by"]["action"] == "hangup"


async def test_amd_machine_gets_the_voicemail_after_the_beep_then_the_call_ends(nursery):
    agent = await start_agent(nursery, speaks_at_once(speechlike(0.5, 24000, seed=53)))
    api = TwilioRestApi(
        hangup_after_s=None,
        max_call_s=20,
        ring_s=0.05,
        amd_delay_s=0.4,
        answered_by={"+14155550100": "machine_end_beep"},
    )
    base, app = await rest_bridge(nursery, agent.url, api)
    body = {
        "to": "+14155550100",
        "machine_detection": "voicemail",
        "voicemail_message": "Hi, this is Ada from the clinic. Please call us back.",
    }
    with trio.fail_after(LIMIT_S):
        refused = await api_post(base, "/calls", {"to": "+14155550100", "machine_detection": "voicemail"})
        placed = await api_post(base, "/calls", body)
        call_sid = placed.json()["sid"]
        call = api.calls[call_sid]
        await call.ended.wait()
        await until_idle(app)
        view = (await api_get(base, f"/calls/{call_sid}")).json()
    assert refused.status_code == 422 and refused.json()["field"] == "voicemail_message"
    create = [r for r in api.requests if r.path.endswith("/Calls.json")][-1].form
    assert create["MachineDetection"] == ["DetectMessageEnd"]
    assert call.twiml_updates == [
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        "<Say>Hi, this is Ada from the clinic. Please call us back.</Say><Hangup /></Response>"
    ]
    assert call.record is not None and call.record.outcome == "redirected"
    assert agent.sessions[0].start_params is None
    assert view["answered_by"]["action"] == "voicemail"


async def test_the_recording_is_a_valid_wav_whichever_way_the_call_ends(nursery, tmp_path):
    """A caller's TCP reset, an agent that drops, a server shutdown: the header always matches the data."""

    async def drop_soon(session: Any) -> None:
        await session.send_media(speechlike(0.4, 24000, seed=61), chunk_bytes=4800)
        await session.wait_statuses(2)
        await session.drop()

    agent = await start_agent(nursery, drop_soon)
    bridge = await start_bridge(
        nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN), recordings_dir=str(tmp_path)
    )
    audio = speechlike(3.0, 8000, seed=62, amplitude=3000)
    with trio.fail_after(LIMIT_S):
        agent_dropped = await TwilioCaller(stream_url=bridge.stream_url, audio=audio, call_sid=sid(70)).run()
        await bridge.wait_idle()
    quiet = await start_agent(nursery)
    bridge2 = await start_bridge(
        nursery, speakr_ws_url=quiet.url, bridge_api_token=Secret(TOKEN), recordings_dir=str(tmp_path)
    )
    with trio.fail_after(LIMIT_S):
        caller_dropped = await TwilioCaller(
            stream_url=bridge2.stream_url, audio=audio, call_sid=sid(71), drop_after_s=1.0
        ).run()
        await bridge2.wait_idle()
        async with trio.open_nursery() as inner:
            inner.start_soon(
                partial(
                    TwilioCaller(
                        stream_url=bridge2.stream_url, audio=audio, call_sid=sid(72), max_call_s=20
                    ).run
                )
            )
            session = await quiet.wait_for_session(2)
            await session.wait_start()
            await trio.sleep(0.5)
            bridge2.state.end_all_calls.set()  # the server ends its live calls (drain timeout)
        await bridge2.wait_idle()
    assert agent_dropped.outcome == "bridge_closed" and caller_dropped.outcome == "dropped"
    for n in (70, 71, 72):
        data = (tmp_path / f"{sid(n)}.wav").read_bytes()
        left, right = read_mulaw_wav(data)
        assert len(data) == 58 + 2 * len(left) and len(left) == len(right) >= 800, n
        declared = int.from_bytes(data[54:58], "little")
        assert declared == len(data) - 58, n


async def test_an_outbound_calls_webhook_carries_its_final_twilio_status(nursery):
    url, got = await receiver(nursery, fail_first=0)
    agent = await start_agent(nursery)
    api = TwilioRestApi(hangup_after_s=0.5, max_call_s=20, ring_s=0.05)
    base, app = await rest_bridge(nursery, agent.url, api, call_webhook_url=url)
    with trio.fail_after(LIMIT_S):
        call_sid = (await api_post(base, "/calls", {"to": "+14155550100"})).json()["sid"]
        await api.calls[call_sid].ended.wait()
        while not got:  # noqa: ASYNC110 - the receiver has no event to wait on
            await trio.sleep(0.05)
        view = await api_get(base, f"/calls/{call_sid}")
    body, headers = got[0]
    assert body == view.content and verify_signature(body, headers[SIGNATURE_HEADER], TOKEN)
    record = orjson.loads(body)
    assert record["end_status"] == "completed" and record["direction"] == "outbound"
    assert record["end_reason"] == "twilio_stop" and record["durations"]["call_duration_s"] is not None


async def test_an_inbound_call_through_the_voice_webhook_has_its_numbers_and_they_stay_out_of_logs(
    nursery, caplog
):
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, bridge_api_token=Secret(TOKEN))
    with trio.fail_after(LIMIT_S):
        await TwilioCaller(
            webhook_url=bridge.voice_url,
            stream_url=bridge.stream_url,
            call_sid=sid(80),
            hangup_after_s=0.2,
            from_number="+14155550123",
            to_number="+14155550999",
        ).run()
        await bridge.wait_idle()
        view = (await api_get(bridge.base_url, f"/calls/{sid(80)}")).json()
    assert (view["from"], view["to"], view["direction"]) == ("+14155550123", "+14155550999", "inbound")
    assert [e["status"] for e in view["history"]] == ["in-progress", "completed"]
    assert "4155550123" not in caplog.text and "4155550999" not in caplog.text
