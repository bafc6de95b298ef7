"""Caller frames sent straight from the Twilio receiver (no task hop) keep their order with statuses.

The bridge sends a 512-byte frame itself when the Speakr sender is parked on an empty uplink channel,
and queues it otherwise (a status or an older frame is waiting, or the agent socket is full). These tests
drive a raw Twilio client and a raw agent (trio-websocket on loopback) through the real server and check
the order the agent sees: every frame exactly once and in order, and each status after exactly the frames
completed before its mark came back. The stalled-agent test in test_limits.py proves the other side: an
agent that stops reading still fills the channel and meets the overflow and stall rules.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio
import trio_websocket
from e2e_helpers import start_bridge

import codec
from bridge import _twilio
from bridge._call import CallSettings, run_call
from bridge._config import Config
from bridge._errors import CallEnded
from bridge._legs import _never
from bridge._legs import writable_probe as _writable_probe
from bridge._metrics import Metrics
from bridge.agents.speakr import _wire as _speakr

LIMIT_S = 10.0
MEDIA = 120  # 20 ms caller frames: 2.4 s
AGENT_MESSAGES = 6  # 100 ms each: six marks to echo
ECHO_AFTER = (7, 8, 30, 31, 32, 63, 90)  # media indexes after which the next mark goes back


def _caller_audio() -> list[bytes]:
    """Every 20 ms frame different (a ramp), so a reordered or repeated frame cannot go unnoticed."""
    samples = bytearray()
    for i in range(MEDIA * 160):
        samples += ((i * 37) % 60000 - 30000).to_bytes(2, "little", signed=True)
    ulaw = codec.ulaw_encode(bytes(samples))
    return [ulaw[i : i + 160] for i in range(0, len(ulaw), 160)]


class RecordingAgent:
    """``initial``, ``ready`` once ``start`` came, a few agent messages; records what arrives, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.changed = trio.Event()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(
                trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0, None
            )
            self.url = f"ws://127.0.0.1:{ws_server.port}/speakr"
            task_status.started()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.send_message(_speakr.initial_message())
            start = _speakr.parse_client_message(await ws.get_message())
            session_id = start.params["sessionId"]  # type: ignore[union-attr]
            await ws.send_message(_speakr.ready_message())
            pcm24 = bytes(4800)  # 100 ms of 24 kHz silence
            for seq in range(AGENT_MESSAGES):
                await ws.send_message(_speakr.media_message(session_id, seq, pcm24))
            while True:
                msg = _speakr.parse_client_message(await ws.get_message())
                if isinstance(msg, _speakr.AudioFrame):
                    self.log.append(("frame", bytes(msg.pcm)))
                elif isinstance(msg, _speakr.Status):
                    self.log.append(("status", msg.sequence_id))
                self.changed.set()
                self.changed = trio.Event()
        except trio_websocket.ConnectionClosed:
            pass

    def frames(self) -> int:
        return sum(1 for kind, _ in self.log if kind == "frame")

    def statuses(self) -> int:
        return sum(1 for kind, _ in self.log if kind == "status")

    async def wait_until(self, frames: int, statuses: int) -> None:
        while self.frames() < frames or self.statuses() < statuses:
            await self.changed.wait()


async def test_direct_and_queued_frames_reach_the_agent_in_order_with_statuses_where_marks_came(nursery):
    agent = RecordingAgent()
    await nursery.start(agent.serve)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    media = _caller_audio()
    stream_sid, call_sid, account_sid = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32
    marks: list[str] = []
    marks_changed = trio.Event()
    expected_before: list[int] = []  # per status: the frames completed before its mark went back

    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(bridge.stream_url) as twilio:

            async def read_twilio() -> None:
                nonlocal marks_changed
                try:
                    while True:
                        msg = _twilio.parse_outbound(await twilio.get_message())
                        if isinstance(msg, _twilio.PlayMark):
                            marks.append(msg.name)
                            marks_changed.set()
                            marks_changed = trio.Event()
                except trio_websocket.ConnectionClosed:
                    pass

            nursery.start_soon(read_twilio)
            seq = 0

            def next_seq() -> int:
                nonlocal seq
                seq += 1
                return seq

            await twilio.send_message(_twilio.connected_message())
            await twilio.send_message(
                _twilio.start_message(
                    stream_sid=stream_sid, call_sid=call_sid, account_sid=account_sid,
                    custom_parameters={}, sequence_number=next_seq(),
                )
            )
            while len(marks) < AGENT_MESSAGES:  # the agent is ready and has spoken: start talking
                await marks_changed.wait()
            echoed = 0
            for i, payload in enumerate(media):
                await twilio.send_message(
                    _twilio.media_event_message(
                        stream_sid=stream_sid, payload=payload, chunk=i + 1, timestamp_ms=20 * i,
                        sequence_number=next_seq(),
                    )
                )
                if i in ECHO_AFTER and echoed < len(marks):
                    await twilio.send_message(
                        _twilio.mark_event_message(
                            stream_sid=stream_sid, name=marks[echoed], sequence_number=next_seq()
                        )
                    )
                    echoed += 1
                    expected_before.append((i + 1) * 320 // 512)
                if i % 3 == 0:
                    await trio.sleep(0.002)  # some frames find the sender parked, some queued behind
            total_frames = MEDIA * 320 // 512
            await agent.wait_until(total_frames, echoed)

    assert echoed == AGENT_MESSAGES
    frames = [data for kind, data in agent.log if kind == "frame"]
    assert b"".join(frames) == codec.ulaw_decode(b"".join(media))[: total_frames * 512]
    seen_before, frames_so_far = [], 0
    for kind, _ in agent.log:
        if kind == "frame":
            frames_so_far += 1
        else:
            seen_before.append(frames_so_far)
    assert seen_before == expected_before
    assert [v for kind, v in agent.log if kind == "status"] == list(range(AGENT_MESSAGES))


class ScriptedTwilio:
    """Twilio's side of the Media Stream, in memory: what is queued is returned without a checkpoint.

    So the runner handles a mark and the media after it back to back, with no chance for the sender
    to run in between: the harshest order a real socket could deliver them in.
    """

    def __init__(self) -> None:
        self.inbox: deque[str | None] = deque()
        self.arrived = trio.Event()
        self.marks: list[str] = []
        self.marks_changed = trio.Event()

    def push(self, *messages: str | None) -> None:
        self.inbox.extend(messages)
        self.arrived.set()

    async def receive(self) -> str | bytes:
        while not self.inbox:
            self.arrived = trio.Event()
            await self.arrived.wait()
        message = self.inbox.popleft()
        if message is None:
            raise CallEnded("twilio_closed")
        return message

    async def send(self, text: str) -> None:
        msg = _twilio.parse_outbound(text)
        if isinstance(msg, _twilio.PlayMark):
            self.marks.append(msg.name)
            self.marks_changed.set()
            self.marks_changed = trio.Event()

    async def close(self, code: int = 1000) -> None:
        self.inbox.append(None)
        self.arrived.set()


async def test_a_frame_never_overtakes_a_status_queued_before_it(nursery):
    agent = RecordingAgent()
    await nursery.start(agent.serve)
    twilio = ScriptedTwilio()
    settings = CallSettings(config=Config(speakr_ws_url=agent.url), metrics=Metrics(), agent_url=agent.url)
    media = _caller_audio()
    stream_sid = "MZ" + "1" * 32
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as call:
            call.start_soon(run_call, twilio, settings)
            twilio.push(
                _twilio.connected_message(),
                _twilio.start_message(
                    stream_sid=stream_sid, call_sid="CA" + "2" * 32, account_sid="AC" + "3" * 32,
                    custom_parameters={},
                ),
            )
            while len(twilio.marks) < AGENT_MESSAGES:
                await twilio.marks_changed.wait()
            expected_before, echoed, batch = [], 0, []
            for i, payload in enumerate(media):
                batch.append(
                    _twilio.media_event_message(
                        stream_sid=stream_sid, payload=payload, chunk=i + 1, timestamp_ms=20 * i,
                        sequence_number=i + 2,
                    )
                )
                if i in ECHO_AFTER and echoed < AGENT_MESSAGES:
                    name = twilio.marks[echoed]
                    batch.append(
                        _twilio.mark_event_message(stream_sid=stream_sid, name=name, sequence_number=1)
                    )
                    echoed += 1
                    expected_before.append((i + 1) * 320 // 512)
                if i % 10 == 9:  # bursts, so that some frames find the sender parked and some do not
                    twilio.push(*batch)
                    batch = []
                    await trio.sleep(0.005)
            twilio.push(*batch)
            total_frames = MEDIA * 320 // 512
            await agent.wait_until(total_frames, echoed)
            call.cancel_scope.cancel()

    frames = [data for kind, data in agent.log if kind == "frame"]
    assert b"".join(frames) == codec.ulaw_decode(b"".join(media))[: total_frames * 512]
    seen_before, frames_so_far = [], 0
    for kind, _ in agent.log:
        if kind == "frame":
            frames_so_far += 1
        else:
            seen_before.append(frames_so_far)
    assert seen_before == expected_before


async def test_the_agent_socket_writability_probe_works_with_this_trio_websocket(nursery):
    """If trio-websocket stops exposing its stream, every frame would silently take the slower path."""
    agent = RecordingAgent()
    await nursery.start(agent.serve)
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(agent.url) as ws:
            probe = _writable_probe(ws)
            assert probe is not _never
            assert probe() is True  # an idle loopback socket has room
