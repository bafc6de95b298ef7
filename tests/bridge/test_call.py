"""End to end: a real Hypercorn bridge between the Twilio caller emulator and the Speakr agent emulator.

Every test runs real sockets on 127.0.0.1 with the real clock; phone time runs faster than real time
(``SPEED``) where the behaviour does not depend on wall-clock pacing. Agent scripts key their actions
to statuses (i.e. to what the caller's phone has played), so they are independent of machine speed.
"""

from __future__ import annotations

import math

import numpy as np
import trio
from e2e_helpers import (
    agent_led_call,
    best_alignment,
    pcm,
    snr_db,
    speechlike,
    start_agent,
    start_bridge,
    start_pair,
)

import codec
from bridge.emulators import TwilioCaller

SPEED = 5.0
LIMIT_S = 30  # generous bound on any single test
#: The downlink resampler holds back its group delay; those last samples of an answer play when the
#: agent's next audio arrives or at `end` — after the gap, when the agent waits for every status first.
TAIL_SAMPLES = math.ceil(codec.DownlinkEncoder().delay_s * 8000)


def ideal_8k(audio24: bytes) -> np.ndarray:
    """The exact 8 kHz version of band-limited (< 3.4 kHz) 24 kHz audio: every third sample."""
    return pcm(audio24)[::3]


def zero_runs(x: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of runs of exact zeros at least ``min_len`` long."""
    runs, start = [], None
    for i, v in enumerate(np.concatenate([x, [1.0]])):
        if v == 0 and start is None:
            start = i
        elif v != 0 and start is not None:
            if i - start >= min_len:
                runs.append((start, i))
            start = None
    return runs


def heard_speech(record) -> np.ndarray:
    """What the caller heard, from the first non-silent sample on."""
    heard = pcm(record.heard_pcm)
    nonzero = np.flatnonzero(heard)
    return heard[nonzero[0] :] if len(nonzero) else heard[:0]


# --- uplink ------------------------------------------------------------------------------------


async def test_uplink_is_sample_exact_in_512_byte_frames(nursery):
    agent, bridge = await start_pair(nursery)
    audio = speechlike(2.0, 8000, seed=11)
    caller = TwilioCaller(stream_url=bridge.stream_url, audio=audio, speed=SPEED, hangup_after_s=2.5)
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
    assert record.outcome == "hung_up"
    received = session.received_audio
    assert set(session.frame_sizes) == {512}
    # Everything the caller sent, decoded as G.711 says, in order, once, then only the end's padding.
    sent = codec.ulaw_decode(codec.ulaw_encode(record.sent_pcm))
    assert len(sent) == record.counters.frames_sent * 320
    assert received[: len(sent)] == sent
    assert len(received) == math.ceil(len(sent) / 512) * 512
    assert received[len(sent) :] == bytes(len(received) - len(sent))
    assert session.frames_before_ready == 0
    # Twilio's stop ends the Speakr session with a normal close.
    assert session.close_code == 1000


async def test_caller_audio_before_ready_keeps_the_most_recent_second(nursery):
    agent = await start_agent(nursery, ready_delay_s=1.5 / SPEED + 0.3)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    audio = speechlike(3.0, 8000, seed=12)
    caller = TwilioCaller(stream_url=bridge.stream_url, audio=audio, speed=SPEED, hangup_after_s=3.2)
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
    sent = codec.ulaw_decode(codec.ulaw_encode(record.sent_pcm))
    received = session.received_audio
    # What arrived is a contiguous tail of what was sent (plus end padding): older audio was dropped,
    # at most 1 s (16000 bytes) was held, and nothing after ready is missing.
    offset = sent.find(received[:4096])
    assert offset > 0
    assert received[: len(sent) - offset] == sent[offset:]
    assert bridge.metric("bridge_dropped_total", {"reason": "preroll"}) == 1


# --- downlink ----------------------------------------------------------------------------------


async def test_downlink_matches_ideal_reference_across_irregular_odd_messages(nursery):
    audio24 = speechlike(2.0, 24000, seed=21)
    sizes = [4801, 2400, 7203, 961, 3, 1, 1999]

    async def script(session):
        sent = await session.send_media(audio24, chunk_bytes=sizes)
        await session.wait_statuses(len(sent))
        await session.end()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    ideal = ideal_8k(audio24)
    # Every output sample arrived exactly once: 16000 for 48000 in (the filter tail is flushed at end).
    assert record.counters.bytes_received == len(ideal)
    heard = pcm(record.heard_pcm)
    offset, peak = best_alignment(heard, ideal)
    assert peak > 0.99
    # One alignment for the whole answer: a lost or doubled sample anywhere would wreck the SNR after it.
    assert snr_db(ideal, heard[offset : offset + len(ideal)]) >= 30.0


async def test_marks_become_statuses_only_for_played_audio_with_ids_unchanged(nursery):
    audio24 = speechlike(1.0, 24000, seed=22)
    message_bytes = 4800  # 100 ms each

    async def script(session):
        sent = await session.send_media(
            audio24, chunk_bytes=message_bytes, session_id="sess-42", sequence_start=7
        )
        await session.wait_statuses(len(sent))
        await session.end()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    session = agent.sessions[0]
    ids = [(s.session_id, s.sequence_id) for s in session.statuses]
    assert ids == [("sess-42", 7 + i) for i in range(10)]  # in order, JSON types kept
    assert all(type(seq) is int for _, seq in ids)
    # No status before its audio could have been played on the phone clock.
    first_heard = record.first_audio_heard_wall_s
    assert first_heard is not None
    for i, status in enumerate(session.statuses):
        played_by = first_heard + (i + 1) * 0.1 / SPEED
        assert status.wall_s >= played_by - 0.02 / SPEED - 0.005


# --- barge-in ----------------------------------------------------------------------------------


async def test_pause_then_continue_resumes_within_one_mark_interval_and_loses_nothing(nursery):
    answer = speechlike(3.0, 24000, seed=31)

    async def script(session):
        sent = await session.send_media(answer, chunk_bytes=4800)
        await session.wait_statuses(10)  # one second has played
        await session.pause()
        await trio.sleep(0.3 / SPEED + 0.05)
        await session.resume()
        await session.wait_statuses(len(sent))
        await session.end()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    assert record.counters.clears_received == 1
    await bridge.wait_idle()
    ideal = ideal_8k(answer)
    heard = heard_speech(record)
    gaps = zero_runs(heard, 400)  # the pause: >= 50 ms of nothing
    assert len(gaps) >= 1
    gap_start, gap_end = gaps[0]
    before, after = heard[:gap_start], heard[gap_end:]
    resumed_at, peak = best_alignment(ideal, after[:4000])
    assert peak > 0.99
    played_up_to = len(before)
    repeated = played_up_to - resumed_at
    assert 0 <= repeated <= 800  # resumes from the first unconfirmed 100 ms piece: nothing lost
    # Everything after the resume point was heard, exactly once, in order.
    played_end = len(ideal) - TAIL_SAMPLES  # see TAIL_SAMPLES
    resumed_snr = snr_db(ideal[resumed_at:played_end], after[: played_end - resumed_at])
    assert resumed_snr >= 30.0
    assert bridge.metric("bridge_barge_in_events_total", {"event": "pause"}) == 1
    assert bridge.metric("bridge_barge_in_events_total", {"event": "continue"}) == 1
    print(f"continue repeated {repeated / 8:.1f} ms; resumed audio SNR {resumed_snr:.1f} dB")


async def test_pause_then_clear_plays_nothing_more_of_the_old_answer(nursery):
    old = speechlike(3.0, 24000, seed=32)
    new = speechlike(1.0, 24000, seed=33)
    old_ids: list = []

    async def script(session):
        old_ids.extend(await session.send_media(old, chunk_bytes=4800, sequence_start=1))
        await session.wait_statuses(10)
        await session.pause()
        await trio.sleep(0.2 / SPEED + 0.05)
        await session.clear()
        sent = await session.send_media(new, chunk_bytes=4800, sequence_start=100)
        await session.wait_until(lambda: any(s.sequence_id == sent[-1][1] for s in session.statuses))
        await session.end()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    session = agent.sessions[0]
    heard = heard_speech(record)
    gap_start, gap_end = zero_runs(heard, 400)[0]
    after = heard[gap_end:]
    ideal_old, ideal_new = ideal_8k(old), ideal_8k(new)
    # After the interruption the caller hears the new answer, whole, and nothing else.
    assert len(np.flatnonzero(after)) <= len(ideal_new) + 16
    n = len(ideal_new) - TAIL_SAMPLES
    assert snr_db(ideal_new[:n], after[:n]) >= 30.0
    _, peak_old = best_alignment(ideal_old[gap_start:], after[: len(ideal_new)])
    assert peak_old < 0.2
    # Statuses: only old pieces that were played (before the pause), never the cleared rest.
    old_statuses = [s.sequence_id for s in session.statuses if s.sequence_id < 100]
    assert old_statuses == list(range(1, len(old_statuses) + 1))
    assert 10 <= len(old_statuses) <= 12
    assert [s.sequence_id for s in session.statuses if s.sequence_id >= 100] == list(range(100, 110))


async def test_continue_without_pause_is_ignored(nursery):
    answer = speechlike(0.5, 24000, seed=34)

    async def script(session):
        await session.resume()
        sent = await session.send_media(answer, chunk_bytes=4800)
        await session.wait_statuses(len(sent))
        await session.end()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    assert record.counters.clears_received == 0
    assert record.counters.bytes_received == len(answer) // 6


# --- endings -----------------------------------------------------------------------------------


async def test_agent_end_plays_out_then_closes_the_stream(nursery):
    answer = speechlike(1.0, 24000, seed=41)

    async def script(session):
        await session.send_media(answer, chunk_bytes=24000)
        await session.end()  # at once: the bridge must let the audio already sent finish first

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    with trio.fail_after(LIMIT_S):
        session = await agent.wait_for_session(1)
        await session.closed.wait()
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    assert record.counters.bytes_received == 8000
    heard = heard_speech(record)
    assert len(np.flatnonzero(heard)) > 7900  # the whole second was played before the hang-up
    assert session.close_code == 1000
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_end"}) == 1


async def test_agent_drop_closes_the_twilio_stream_within_a_second(nursery):
    dropped_at: list[float] = []

    async def script(session):
        await trio.sleep(0.2)
        dropped_at.append(trio.current_time())
        await session.drop()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    assert record.outcome == "bridge_closed"
    closed = record.events_of("closed")[-1]
    assert closed.wall_s - dropped_at[0] < 1.0
    print(f"agent drop -> Twilio stream closed in {(closed.wall_s - dropped_at[0]) * 1000:.1f} ms")
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_disconnect"}) == 1


async def test_caller_drop_closes_speakr_with_1000_within_a_second(nursery):
    agent, bridge = await start_pair(nursery)
    audio = speechlike(2.0, 8000, seed=42)
    caller = TwilioCaller(stream_url=bridge.stream_url, audio=audio, speed=SPEED, drop_after_s=1.0)
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        dropped = record.events_of("dropped")[-1].wall_s
        session = await agent.wait_for_session(1)
        await session.closed.wait()
    assert record.outcome == "dropped"
    closed_at = session.events_of("closed")[-1].wall_s
    assert closed_at - dropped < 1.0
    print(f"caller drop -> Speakr closed (1000) in {(closed_at - dropped) * 1000:.1f} ms")
    assert session.close_code == 1000
    # What was sent before the drop reached the agent, padded at the end only.
    sent = codec.ulaw_decode(codec.ulaw_encode(record.sent_pcm))
    assert session.received_audio[: len(sent)] == sent
    await bridge.wait_idle()


async def test_agent_that_never_gets_ready_hands_the_caller_to_the_fallback(nursery):
    agent = await start_agent(nursery, send_ready=False)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, agent_ready_timeout_s=0.5)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED).run()
    assert record.outcome == "bridge_closed"
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_not_ready"}) == 1


async def test_agent_unreachable_hands_the_caller_to_the_fallback(nursery):
    with trio.socket.socket() as sock:  # a port with nobody listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bridge = await start_bridge(nursery, speakr_ws_url=f"ws://127.0.0.1:{port}/")
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(stream_url=bridge.stream_url, speed=SPEED).run()
    assert record.outcome == "bridge_closed"
    await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "agent_connect_failed"}) == 1


async def test_stream_that_never_starts_is_closed(nursery):
    import trio_websocket

    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, stream_start_timeout_s=0.3)
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(bridge.stream_url) as ws:
            await ws.send_message('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed:
                pass
        await bridge.wait_idle()
    assert bridge.metric("bridge_calls_ended_total", {"reason": "twilio_no_start"}) == 1
    assert agent.sessions == [] or agent.sessions[0].start_params is None


# --- hostile input -----------------------------------------------------------------------------

GARBAGE_FROM_TWILIO = [
    "not json at all",
    "[1, 2, 3]",
    '{"event": "nonsense"}',
    '{"event": "media", "streamSid": "MZ1", "media": {"payload": "***not base64***"}}',
    '{"event": "media", "streamSid": "MZ1", "media": {"payload": 12}}',
    '{"event": "mark", "streamSid": "MZ1", "mark": {}}',
    '{"event": "mark", "streamSid": "MZ1", "mark": {"name": "never-sent"}}',
    '{"event": "media", "streamSid": "MZ1", "media": {"payload": "' + "A" * 400_000 + '"}}',
    "\udcff" if False else "{\"event\": \"\\ud800\"}",
    b"\x00\x01binary",
    "",
]


async def test_hostile_twilio_input_never_ends_the_call_or_the_server(nursery):
    agent, bridge = await start_pair(nursery)
    audio = speechlike(2.0, 8000, seed=51)
    injections = [(0.1 + 0.1 * i, frame) for i, frame in enumerate(GARBAGE_FROM_TWILIO)]
    caller = TwilioCaller(
        stream_url=bridge.stream_url, audio=audio, speed=SPEED, hangup_after_s=2.5,
        injections=injections, media_before_start=3, double_start=True,
    )
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
    assert record.outcome == "hung_up"
    sent = codec.ulaw_decode(codec.ulaw_encode(record.sent_pcm))
    assert session.received_audio[: len(sent)] == sent  # the garbage cost the caller nothing
    await bridge.wait_idle()
    errors = sum(
        v for k, v in _samples(bridge, "bridge_protocol_errors_total").items() if "twilio" in k
    )
    assert errors >= len(GARBAGE_FROM_TWILIO) - 1  # the unknown mark counts as a mark, not an error
    # And the server takes the next call as if nothing happened.
    with trio.fail_after(LIMIT_S):
        again = await TwilioCaller(
            stream_url=bridge.stream_url, audio=audio, speed=SPEED, hangup_after_s=1
        ).run()
    assert again.outcome == "hung_up"


async def test_hostile_agent_input_never_ends_the_call(nursery):
    good = speechlike(0.5, 24000, seed=52)

    async def script(session):
        for frame in [
            "garbage", b"\x01\x02\x03", '{"type":"media","msg":"!!!"}',
            '{"type":"media","msg":"' + "QUJD" + '"}',  # base64 of "ABC": no NUL separator
            '{"type":"media","msg":"e30AAAA="}',  # metadata {} without ids
            '{"type":"warp"}', '{"type":"info","msg":{"code":"bad_param","message":"x"}}',
            '{"type":"media","msg":"' + "A" * 300_000 + '"}',
        ]:
            await session.send_raw(frame)
        sent = await session.send_media(good, chunk_bytes=4801)
        await session.wait_statuses(len(sent))
        await session.end()

    record, agent, bridge = await agent_led_call(nursery, script, speed=SPEED, limit_s=LIMIT_S)
    assert record.outcome == "bridge_closed" and record.close_code == 1000
    await bridge.wait_idle()
    assert record.counters.bytes_received == len(good) // 6
    errors = _samples(bridge, "bridge_protocol_errors_total")
    speakr_errors = {k: v for k, v in errors.items() if "speakr" in k}
    assert sum(speakr_errors.values()) >= 6
    assert bridge.metric("bridge_agent_info_total", {"kind": "bad_param"}) == 1


def _samples(bridge, name: str) -> dict[str, float]:
    out = {}
    for metric in bridge.state.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                out[str(sorted(sample.labels.items()))] = sample.value
    return out


# --- isolation ---------------------------------------------------------------------------------


async def test_many_concurrent_calls_stay_isolated_even_when_one_misbehaves(nursery):
    agent, bridge = await start_pair(nursery)
    calls = 8
    audios = [speechlike(1.5, 8000, seed=100 + i) for i in range(calls)]
    records: dict[int, object] = {}

    async def one(i: int) -> None:
        kwargs = {"drop_after_s": 0.5} if i == 0 else {}
        injections = [(0.3, "garbage")] if i == 1 else []
        caller = TwilioCaller(
            stream_url=bridge.stream_url, audio=audios[i], speed=SPEED, hangup_after_s=2.0,
            injections=injections, **kwargs,
        )
        records[i] = await caller.run()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as group:
            for i in range(calls):
                group.start_soon(one, i)
        await agent.wait_for_session(calls)
        for session in agent.sessions:
            await session.closed.wait()
    assert records[0].outcome == "dropped"
    assert all(records[i].outcome == "hung_up" for i in range(1, calls))
    # Each agent session got exactly one caller's audio, whole (bar the dropped one, a prefix of its own).
    matched = set()
    for session in agent.sessions:
        received = session.received_audio
        owners = [
            i for i in range(calls)
            if received[:4096] == codec.ulaw_decode(codec.ulaw_encode(audios[i]))[:4096]
        ]
        assert len(owners) == 1
        i = owners[0]
        matched.add(i)
        sent = codec.ulaw_decode(codec.ulaw_encode(records[i].sent_pcm))
        assert received[: len(sent)] == sent
    assert matched == set(range(calls))
    await bridge.wait_idle()


# --- overload ----------------------------------------------------------------------------------


async def test_caller_audio_arriving_seconds_late_is_dropped_not_forwarded(nursery):
    """A backlog (Twilio's stream clock far ahead of when frames reach us) is stale: dropped, counted."""
    import trio_websocket

    from bridge import _twilio

    agent, bridge = await start_pair(nursery)
    ids = {"stream_sid": "MZ" + "1" * 32, "call_sid": "CA" + "2" * 32, "account_sid": "AC" + "3" * 32}
    live = codec.ulaw_encode(speechlike(0.64, 8000, seed=61))
    stale = bytes([0x7F]) * 160 * 25  # 0.5 s of a distinct code: it must never reach the agent

    def media(i: int, payload: bytes, ts_ms: int) -> str:
        return _twilio.media_event_message(
            stream_sid=ids["stream_sid"], payload=payload, chunk=i, timestamp_ms=ts_ms, sequence_number=i + 2
        )

    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(bridge.stream_url) as ws:
            await ws.send_message(_twilio.connected_message())
            await ws.send_message(_twilio.start_message(custom_parameters={}, **ids))
            session = await agent.wait_for_session(1)
            await session.wait_start()
            # 32 live frames paced in real time (stream time = wall time).
            t0 = trio.current_time()
            for i in range(32):
                await trio.sleep_until(t0 + i * 0.02)
                await ws.send_message(media(i, live[i * 160 : (i + 1) * 160], i * 20))
            # Then a backlog: 25 frames whose stream time is 2 s behind the wall clock.
            await trio.sleep(2.0)
            for i in range(25):
                await ws.send_message(media(32 + i, stale[i * 160 : (i + 1) * 160], 640 + i * 20))
            await session.wait_audio_bytes(len(live) * 2 // 512 * 512)
            await ws.send_message(_twilio.stop_message(sequence_number=99, **ids))
        await session.closed.wait()
        await bridge.wait_idle()
    received = session.received_audio
    assert received[: len(live) * 2] == codec.ulaw_decode(live)  # live audio: exact
    assert codec.ulaw_decode(bytes([0x7F]))[:2] * 8 not in received  # the stale half second: gone
    assert bridge.metric("bridge_dropped_total", {"reason": "stale_uplink"}) == 25
