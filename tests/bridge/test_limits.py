"""End to end: the bridge's limits and its answer to agent failures.

A real Hypercorn bridge on loopback between the Twilio caller emulator and the Speakr agent emulator (or,
for the stalled agent, a bare trio-websocket server that stops reading). Each test proves one protection:
without it the call would end, the process would hold unbounded memory, or the caller would sit in
silence instead of hearing the fallback.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import trio
import trio_websocket
from e2e_helpers import RunningBridge, speechlike, start_agent, start_bridge

from bridge import _twilio
from bridge._caller import MAX_UNPLAYED_BYTES
from bridge._config import Secret
from bridge.agents.speakr import _wire as _speakr
from bridge.emulators import TwilioCaller

SPEED = 5.0
LIMIT_S = 30
#: The caller must be handed to the fallback within this long of the agent failing (PROTOCOLS.md: a
#: dropped agent within a second; failures before the call is bridged within their timeouts).
FALLBACK_BOUND_S = 3.0


def metric_sum(bridge: RunningBridge, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in bridge.state.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def too_large_count(bridge: RunningBridge, peer: str) -> float:
    """Oversized input from ``peer``, counted either as a protocol error or as a drop."""
    errors = metric_sum(bridge, "bridge_protocol_errors_total", peer=peer, kind="too_large")
    drops = sum(
        s.value
        for f in bridge.state.metrics.registry.collect()
        for s in f.samples
        if s.name == "bridge_dropped_total" and "large" in s.labels.get("reason", "")
    )
    return errors + drops


# --- admission -------------------------------------------------------------------------------------


async def test_past_max_concurrent_calls_new_calls_get_busy_and_are_taken_again_once_one_ends(nursery):
    release = trio.Event()

    async def script(session):
        if session.index < 2:  # the two calls that fill the bridge end when the test says so
            await release.wait()
            await session.end()

    agent = await start_agent(nursery, script)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, max_concurrent_calls=2)
    records = []

    async def long_call() -> None:
        records.append(await TwilioCaller(webhook_url=bridge.voice_url, speed=SPEED, max_call_s=100).run())

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as calls:
            calls.start_soon(long_call)
            calls.start_soon(long_call)
            await (await agent.wait_for_session(1)).wait_start()
            await (await agent.wait_for_session(2)).wait_start()
            third = await TwilioCaller(webhook_url=bridge.voice_url, speed=SPEED).run()
            # A stream that arrives anyway (a replayed TwiML, a stranger) is refused too.
            stray = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=2.0).run()
            assert len(agent.sessions) == 2
            release.set()
        await bridge.wait_idle()
        audio = speechlike(1.0, 8000, seed=70)
        fresh = await TwilioCaller(
            webhook_url=bridge.voice_url, audio=audio, speed=SPEED, hangup_after_s=1.5
        ).run()
        session = await agent.wait_for_session(3)
        await session.closed.wait()
    assert third.webhook_status == 200 and third.outcome == "no_stream"
    busy = ElementTree.fromstring(third.twiml or "")
    assert busy.find("./Connect") is None and busy.find("./Say") is not None
    assert stray.outcome in ("connect_failed", "bridge_closed"), stray.outcome
    assert [r.outcome for r in records] == ["bridge_closed", "bridge_closed"]
    assert fresh.outcome == "hung_up", fresh.error
    assert session.received_audio[: len(fresh.sent_pcm)] == fresh.sent_pcm
    assert metric_sum(bridge, "bridge_calls_rejected_total", reason="busy") >= 2


# --- oversized input ------------------------------------------------------------------------------


async def test_oversized_twilio_media_is_dropped_counted_and_the_call_goes_on(nursery):
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    stream_sid = "MZ" + "7" * 32
    huge = np.random.default_rng(71).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    oversized = _twilio.media_event_message(
        stream_sid=stream_sid, payload=huge, chunk=99, timestamp_ms=900, sequence_number=99
    )
    audio = speechlike(2.0, 8000, seed=72)
    caller = TwilioCaller(
        stream_url=bridge.stream_url, stream_sid=stream_sid, audio=audio, speed=SPEED, hangup_after_s=2.5,
        injections=[(0.5, oversized), (1.0, oversized)],
    )
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
        await bridge.wait_idle()
    assert record.outcome == "hung_up"
    assert record.counters.injections_sent == 2
    # The caller's own audio after (and around) the oversized frames arrived exact; none of theirs did.
    sent = record.sent_pcm
    received = session.received_audio
    assert received[: len(sent)] == sent
    assert len(received) - len(sent) < 512  # only the last frame's padding
    assert too_large_count(bridge, "twilio") == 2


async def test_oversized_agent_message_is_dropped_counted_and_the_call_goes_on(nursery):
    good = speechlike(0.5, 24000, seed=73)
    huge_pcm = bytes(3_900_000)  # ~81 s of 24 kHz audio: ~5.2 MB of base64 in one message

    async def script(session):
        await session.send_raw(_speakr.media_message(session.start_params["sessionId"], 1, huge_pcm))
        sent = await session.send_media(good, chunk_bytes=4800, sequence_start=2)
        await session.wait_statuses(len(sent))
        await session.end()

    agent = await start_agent(nursery, script)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED).run()
        session = await agent.wait_for_session(1)
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    assert record.counters.bytes_received == len(good) // 6  # the good answer, and nothing of the huge one
    assert [s.sequence_id for s in session.statuses] == list(range(2, 2 + -(-len(good) // 4800)))
    assert too_large_count(bridge, "speakr") >= 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_end"}) == 1


async def test_agent_far_ahead_of_real_time_is_bounded_and_the_call_goes_on(nursery):
    second = speechlike(1.0, 24000, seed=74)
    flood_s = 600  # ten minutes of audio, sent at once
    answer = speechlike(0.5, 24000, seed=75)

    async def script(session):
        await session.send_media(second * flood_s, chunk_bytes=len(second), sequence_start=1)
        await session.clear()
        sent = await session.send_media(answer, chunk_bytes=4800, sequence_start=100_000)
        last = sent[-1][1]
        await session.wait_until(lambda: any(s.sequence_id == last for s in session.statuses), "last status")
        await session.end()

    agent = await start_agent(nursery, script)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED).run()
        session = await agent.wait_for_session(1)
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    assert bridge.metric("bridge_dropped_total", {"reason": "downlink_overflow"}) > 0
    # What went to Twilio and was not yet played stayed within the documented bound (plus one agent
    # message): the rest of the ten minutes was dropped, not queued.
    assert MAX_UNPLAYED_BYTES < flood_s * 8000 // 2
    clear = record.events_of("clear_received")[0]
    before_clear = sum(e.size for e in record.events_of("media_received") if e.wall_s <= clear.wall_s)
    played_at_most = clear.phone_s * 8000
    assert before_clear - played_at_most <= MAX_UNPLAYED_BYTES + len(second) // 3
    assert before_clear < flood_s * 8000 // 2
    # ... and the call went on: the answer after the clear was played, and confirmed, whole.
    new_statuses = [s.sequence_id for s in session.statuses if s.sequence_id >= 100_000]
    assert new_statuses == list(range(100_000, 100_000 + -(-len(answer) // 4800)))
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_end"}) == 1


# --- a stalled agent --------------------------------------------------------------------------------


class StalledAgent:
    """A Speakr agent that says ``initial`` and ``ready``, then never reads again.

    trio-websocket reads into a one-message queue and stops reading the socket once it is full, and a
    tiny receive buffer (inherited from the listening socket) makes the TCP window fill after a few kB:
    the bridge's sends to it then block, as with a hung agent process.
    """

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self.started = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/speakr"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                ws = await request.accept()
                await ws.send_message(_speakr.initial_message())
                await ws.get_message()  # start
                await ws.send_message(_speakr.ready_message())
                self.started.set()
                await trio.sleep_forever()  # never read again
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def test_stalled_agent_drops_caller_audio_then_hands_the_caller_to_the_fallback(nursery):
    agent = StalledAgent()
    await nursery.start(agent.serve)
    stall_timeout_s = 1.0
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, agent_stall_timeout_s=stall_timeout_s)
    audio = speechlike(10.0, 8000, seed=76)
    caller = TwilioCaller(stream_url=bridge.stream_url, audio=audio, speed=SPEED, hangup_after_s=60.0)
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed", record.outcome
    assert bridge.metric("bridge_dropped_total", {"reason": "uplink_overflow"}) > 0
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_stalled"}) == 1
    # Buffers fill within a fraction of a second at this speed; then the stall timeout, then the close.
    assert record.start_wall_s is not None
    assert record.events_of("closed")[-1].wall_s - record.start_wall_s < stall_timeout_s + 4.0
    assert agent.connections == 1


# --- agent failures ----------------------------------------------------------------------------------
# (test_call.py covers an agent that drops mid-call, one that is unreachable and one never ready.)


def closed_within(record, bound_s: float) -> bool:
    assert record.start_wall_s is not None
    return record.events_of("closed")[-1].wall_s - record.start_wall_s < bound_s


@pytest.mark.parametrize("status", [401, 503])
async def test_agent_refusing_the_upgrade_hands_the_caller_to_the_fallback(nursery, status):
    agent = await start_agent(nursery, reject_status=status)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=30.0).run()
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed"
    assert closed_within(record, FALLBACK_BOUND_S)
    assert len(agent.sessions) >= 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_connect_failed"}) == 1


async def test_agent_that_never_answers_the_upgrade_hands_the_caller_to_the_fallback(nursery):
    connections = []

    async def mute(stream: trio.SocketStream) -> None:  # accepts TCP, never answers the HTTP upgrade
        connections.append(stream)
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, mute, 0)
    port = listeners[0].socket.getsockname()[1]
    bridge = await start_bridge(
        nursery, speakr_ws_url=f"ws://127.0.0.1:{port}/speakr", agent_connect_timeout_s=0.5
    )
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=30.0).run()
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed"
    assert connections
    assert closed_within(record, FALLBACK_BOUND_S)
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_connect_failed"}) == 1


async def test_agent_with_a_bad_api_key_info_then_close_hands_the_caller_to_the_fallback(nursery):
    async def script(session):  # what Speakr does with a bad key: say why, hang up
        await session.info({"code": "invalid_api_key", "message": "Invalid API key"})
        await session.close(4001, "invalid api key")

    agent = await start_agent(nursery, script, send_initial=False, send_ready=False)
    bridge = await start_bridge(
        nursery, speakr_ws_url=agent.url + "?region=eu", speakr_api_key=Secret("sk-wrong")
    )
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=30.0).run()
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed"
    assert closed_within(record, FALLBACK_BOUND_S)
    session = agent.sessions[0]
    assert session.api_key == "sk-wrong" and session.query.get("region") == "eu"
    assert bridge.metric("bridge_agent_info_total", {"kind": "invalid_api_key"}) == 1
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_disconnect"}) == 1


async def test_agent_that_never_sends_initial_hands_the_caller_to_the_fallback(nursery):
    agent = await start_agent(nursery, send_initial=False)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, agent_ready_timeout_s=0.5)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED, hangup_after_s=30.0).run()
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed"
    assert closed_within(record, 0.5 + FALLBACK_BOUND_S)
    session = agent.sessions[0]
    assert session.start_params is None  # no start before initial
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_not_ready"}) == 1
