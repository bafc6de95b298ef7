"""The built-in local echo agent, driven over a real loopback socket by a test client acting as the bridge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
import trio_websocket

from bridge._vad import BARGE_IN_MS
from bridge.agents.speakr import _wire as _speakr
from bridge.agents.speakr._local_agent import MEDIA_SIZES, LocalAgentServer, greeting_pcm

RATE = 8000
FRAME = 512


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * RATE))


def speech(seconds: float, level_dbfs: float = -20.0, seed: int = 0) -> bytes:
    """Speech-like: three partials inside the telephone band, amplitude-modulated at a syllable rate."""
    t = np.arange(round(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(250, 2500, size=3)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs)
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t))
    x = x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (level_dbfs / 20)
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


class Client:
    """The bridge's side: a trio-websocket client that reads everything the agent sends in the background."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, _speakr.SpeakrEvent]] = []
        self.closed = False
        self._changed = trio.Event()

    async def read(self) -> None:
        try:
            while True:
                event = _speakr.parse_event(await self.ws.get_message())
                self.events.append((trio.current_time(), event))
                self._changed.set()
                self._changed = trio.Event()
        except trio_websocket.ConnectionClosed:
            self.closed = True
            self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            assert not self.closed, "the agent closed the connection"
            await self._changed.wait()

    def kinds(self, *, media: bool = False) -> list[str]:
        return [type(e).__name__ for _, e in self.events if media or not isinstance(e, _speakr.AgentMedia)]

    def media(self) -> list[_speakr.AgentMedia]:
        return [e for _, e in self.events if isinstance(e, _speakr.AgentMedia)]

    def audio(self) -> bytes:
        return b"".join(m.audio for m in self.media())

    async def start(self, params: _speakr.StartParams) -> None:
        await self.wait_until(lambda: len(self.events) >= 1)
        assert self.kinds() == ["Initial"]
        await self.ws.send_message(_speakr.start_message(params))
        await self.wait_until(lambda: "Ready" in self.kinds())

    async def send_audio(self, pcm: bytes) -> None:
        for offset in range(0, len(pcm), FRAME):
            await self.ws.send_message(pcm[offset : offset + FRAME])

    async def confirm_all(self) -> None:
        for m in self.media():
            await self.ws.send_message(_speakr.status_message(m.session_id, m.sequence_id))


@asynccontextmanager
async def connect(server: LocalAgentServer) -> AsyncIterator[Client]:
    async with trio_websocket.open_websocket_url(server.url + "?api_key=not-a-secret") as ws:
        client = Client(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read)
            yield client
            nursery.cancel_scope.cancel()


async def start_agent(nursery: trio.Nursery, **kwargs: Any) -> LocalAgentServer:
    server = LocalAgentServer(**kwargs)
    await nursery.start(server.serve)
    return server


def params(**kwargs: Any) -> _speakr.StartParams:
    return _speakr.StartParams(session_id="test-session", **kwargs)


# ------------------------------------------------------------------------------------------------ protocol


async def test_url_and_handshake_initial_start_ready(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, greeting=False)
        assert server.url == f"ws://127.0.0.1:{server.port}/"
        async with connect(server) as client:
            await client.start(params(threshold=0.3, silence_duration_ms=600, prefix_padding=0.2))
            assert client.kinds() == ["Initial", "Ready"]
            stats = server.active_sessions[0]
            assert stats.session_id == "test-session"
            assert (stats.settings.threshold, stats.settings.silence_ms, stats.settings.prefix_padding_s) == (
                0.3, 600, 0.2,
            )
            assert not stats.bad_start


async def test_greeting_is_24khz_media_in_irregular_sizes_with_increasing_sequence_ids(
    nursery: trio.Nursery,
) -> None:
    greeting = greeting_pcm()
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None)
        async with connect(server) as client:
            await client.start(params())
            await client.wait_until(lambda: len(client.audio()) >= len(greeting))
            media = client.media()
            assert client.audio() == greeting
            assert all(m.session_id == "test-session" for m in media)
            assert [m.sequence_id for m in media] == list(range(1, len(media) + 1))
            sizes = [len(m.audio) for m in media]
            assert sizes[:-1] == [MEDIA_SIZES[i % len(MEDIA_SIZES)] for i in range(len(sizes) - 1)]
            assert any(size % 2 for size in sizes), "odd sizes split samples across messages"
            assert stats_of(server).media_sent == len(media)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Polls server-side state (the client's events do not wake on it); callers bound it with fail_after."""
    while not predicate():  # noqa: ASYNC110 - server-side state has no event to wait on
        await trio.sleep(0.01)


def stats_of(server: LocalAgentServer) -> Any:
    (stats,) = server.active_sessions.values()
    return stats


async def test_speech_is_paced_on_the_wall_clock(nursery: trio.Nursery) -> None:
    pace = 4.0
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=pace)
        async with connect(server) as client:
            await client.start(params())
            await client.wait_until(lambda: len(client.audio()) >= len(greeting_pcm()))
            times = [t for t, e in client.events if isinstance(e, _speakr.AgentMedia)]
            last_offset_s = (len(greeting_pcm()) - len(client.media()[-1].audio)) / 48000
            assert times[-1] - times[0] == pytest.approx(last_offset_s / pace, rel=0.1, abs=0.05)


# ------------------------------------------------------------------------------------------------ turns


async def test_caller_turn_is_echoed_resampled_to_24khz(nursery: trio.Nursery) -> None:
    said = silence(0.5) + speech(1.0, seed=7)
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None, greeting=False)
        async with connect(server) as client:
            await client.start(params(silence_duration_ms=800, prefix_padding=0.7))
            await client.send_audio(said + silence(1.0))
            expected_s = 1.5 + 0.1  # prefix reaches the start of the stream; speech; 100 ms tail
            await client.wait_until(lambda: len(client.audio()) >= 3 * 2 * round(expected_s * RATE))
            await trio.sleep(0.05)
            echo = np.frombuffer(client.audio(), dtype="<i2").astype(float)
            assert len(echo) == 3 * round(expected_s * RATE)
            original = np.frombuffer(said, dtype="<i2").astype(float)
            decimated = echo[::3][: len(original)]  # the resampler is delay-compensated: aligned
            r = np.corrcoef(decimated, original)[0, 1]
            assert r > 0.95
            assert client.kinds() == ["Initial", "Ready"]  # no pause: the agent was not speaking
            assert stats_of(server).turns == 1


async def test_speech_after_the_greeting_was_confirmed_played_is_a_turn_not_a_barge_in(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None)
        async with connect(server) as client:
            await client.start(params(silence_duration_ms=500))
            await client.wait_until(lambda: len(client.audio()) >= len(greeting_pcm()))
            await client.confirm_all()
            await eventually(lambda: stats_of(server).statuses == len(client.media()))
            greeting_messages = len(client.media())
            await client.send_audio(silence(0.2) + speech(0.6) + silence(0.7))
            await client.wait_until(lambda: len(client.media()) > greeting_messages)
            assert client.kinds() == ["Initial", "Ready"]
            echo = client.media()[greeting_messages:]
            assert echo[0].sequence_id == greeting_messages + 1


async def test_short_speech_over_the_agent_pauses_then_continues_and_nothing_is_sent_in_between(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(8):
        server = await start_agent(nursery, speech_pace=1.0)
        async with connect(server) as client:
            await client.start(params())
            await client.wait_until(lambda: len(client.media()) >= 2)
            await client.send_audio(speech(0.4))
            await client.wait_until(lambda: "Pause" in client.kinds())
            paused_at = len(client.events)
            await trio.sleep(0.4)  # the agent would have sent ~4 more messages at its pace
            assert client.kinds(media=True)[paused_at:] == []
            await client.send_audio(silence(0.5))
            await client.wait_until(lambda: "Continue" in client.kinds())
            await client.wait_until(lambda: len(client.events) > paused_at + 1)
            # pause, then nothing until continue, then the rest of the greeting
            after_pause = client.kinds(media=True)[paused_at - 1 : paused_at + 2]
            assert after_pause == ["Pause", "Continue", "AgentMedia"]
            stats = stats_of(server)
            assert (stats.pauses, stats.continues, stats.clears, stats.turns) == (1, 1, 0, 0)


async def test_long_speech_over_the_agent_pauses_then_clears_and_becomes_the_next_turn(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(8):
        server = await start_agent(nursery, speech_pace=1.0)
        async with connect(server) as client:
            await client.start(params(silence_duration_ms=600, prefix_padding=0.7))
            await client.wait_until(lambda: len(client.media()) >= 2)
            interruption = silence(0.3) + speech(BARGE_IN_MS / 1000 + 0.5, seed=3)
            await client.send_audio(interruption)
            await client.wait_until(lambda: "Clear" in client.kinds())
            assert client.kinds() == ["Initial", "Ready", "Pause", "Clear"]
            cleared_at = len(client.events)
            greeting_sent = sum(len(m.audio) for m in client.media())
            assert greeting_sent < len(greeting_pcm())  # the rest was dropped
            await trio.sleep(0.3)
            assert client.events[cleared_at:] == []  # nothing more of the greeting
            await client.send_audio(silence(0.8))
            expected_bytes = 3 * 2 * round((0.3 + BARGE_IN_MS / 1000 + 0.5 + 0.1) * RATE)
            await client.wait_until(
                lambda: sum(len(m.audio) for m in client.media()) >= greeting_sent + expected_bytes
            )
            after = client.events[cleared_at:]
            echo = b"".join(m.audio for _, m in after if isinstance(m, _speakr.AgentMedia))
            assert len(echo) == expected_bytes  # the interrupting speech, with its prefix, came back
            stats = stats_of(server)
            assert (stats.pauses, stats.continues, stats.clears, stats.turns) == (1, 0, 1, 1)


async def test_a_bridge_that_never_confirms_cannot_keep_the_agent_speaking(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None, greeting=False, status_grace_s=0.5)
        async with connect(server) as client:
            await client.start(params(silence_duration_ms=300, prefix_padding=0.0))
            await client.send_audio(speech(0.3) + silence(0.4))
            echo_s = 0.3 + 0.1  # speech + tail
            await client.wait_until(lambda: len(client.audio()) >= echo_s * 48000)
            await trio.sleep(echo_s + 0.1)  # the agent waits echo_s + 0.5 s for statuses
            await client.send_audio(speech(0.2, seed=4))  # still speaking: a barge-in
            await client.wait_until(lambda: "Pause" in client.kinds())
            await client.send_audio(silence(0.4))
            await client.wait_until(lambda: "Continue" in client.kinds())
            # After continue the bridge replays what was not confirmed: the clock starts again.
            await trio.sleep(echo_s + 0.5 + 0.3)
            await client.send_audio(speech(0.3, seed=5) + silence(0.4))  # taken as played: a new turn
            await eventually(lambda: stats_of(server).turns == 2)
            assert client.kinds() == ["Initial", "Ready", "Pause", "Continue"]


async def test_max_turns_ends_the_call_after_the_answer_was_played(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None, greeting=False, max_turns=1)
        async with connect(server) as client:
            await client.start(params(silence_duration_ms=300))
            await client.send_audio(speech(0.3) + silence(0.4))
            await client.wait_until(lambda: len(client.media()) > 0)
            await trio.sleep(0.05)
            assert "End" not in client.kinds()  # not before the answer was played
            await client.confirm_all()
            await client.wait_until(lambda: "End" in client.kinds())
        summary = await server.wait_sessions_ended(1)
        assert summary.ended_by_agent and summary.turns == 1


# ------------------------------------------------------------------------------------------------ robustness


async def test_bad_start_values_get_info_and_the_defaults(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, greeting=False)
        async with connect(server) as client:
            await client.wait_until(lambda: len(client.events) >= 1)
            inner = {"threshold": 7, "silenceDuration": "soon", "sessionId": "s1"}
            await client.ws.send_message(json.dumps({"type": "start", "msg": json.dumps(inner)}))
            await client.wait_until(lambda: "Ready" in client.kinds())
            assert client.kinds() == ["Initial", "Info", "Ready"]
            stats = stats_of(server)
            assert stats.bad_start and stats.session_id == "s1"
            assert (stats.settings.threshold, stats.settings.silence_ms) == (0.18, 1000)


async def test_unusable_start_gets_info_and_a_session_with_defaults(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None, greeting=False)
        async with connect(server) as client:
            await client.wait_until(lambda: len(client.events) >= 1)
            await client.ws.send_message('{"type":"start","msg":"[1, 2]"}')
            await client.wait_until(lambda: "Ready" in client.kinds())
            assert client.kinds() == ["Initial", "Info", "Ready"]
            await client.send_audio(speech(0.3) + silence(1.1))
            await client.wait_until(lambda: len(client.media()) > 0)
            assert str(client.media()[0].session_id).startswith("local-")


async def test_garbage_from_the_client_is_ignored_and_the_session_goes_on(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None, greeting=False)
        async with connect(server) as client:
            await client.start(params(silence_duration_ms=300))
            for junk in ["not json", "[]", '{"type":"dance"}', '{"type":"status","msg":{"sequence_id":1}}',
                         '{"type":"status","msg":{"session_id":"other","sequence_id":1}}',
                         _speakr.status_message("test-session", 999)]:
                await client.ws.send_message(junk)
            await client.send_audio(speech(0.3) + silence(0.5))
            await client.wait_until(lambda: len(client.media()) > 0)
            stats = stats_of(server)
            expected = {"bad_json": 1, "not_object": 1, "unknown_event": 1, "missing_field": 1}
            assert stats.protocol_errors == expected
            assert (stats.foreign_statuses, stats.stale_statuses) == (1, 1)


async def test_a_dropped_connection_never_stops_the_server(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        server = await start_agent(nursery, speech_pace=None)
        # A client that resets its TCP connection mid-greeting, and one that is not WebSocket at all.
        async with connect(server) as client:
            await client.start(params())
            await client.wait_until(lambda: len(client.media()) > 0)
            await client.ws._stream.aclose()  # no close frame
        summary = await server.wait_sessions_ended(1)
        assert summary.close_reason.startswith("1006") and summary.media_sent > 0
        garbage = await trio.open_tcp_stream("127.0.0.1", server.port)
        await garbage.send_all(b"GARBAGE\r\n\r\n")
        async with connect(server) as client:
            await client.start(params())
            await client.wait_until(lambda: len(client.media()) > 0)
        summary = await server.wait_sessions_ended(2)
        assert summary.index == 2 and summary.session_id == "test-session"
        assert server.contained_errors == 0
        await garbage.aclose()
