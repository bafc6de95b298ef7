"""The in-benchmark load driver: N lean Twilio callers and a lean Speakr agent in one Trio run.

Theory of operation
-------------------
On a 2-core machine the load driver shares the CPU with the server it measures, so it must cost much less
per call than the server does. It therefore speaks WebSocket itself (``_harness``: non-blocking stdlib
sockets, one shared epoll set waited on by one Trio task, no trio-websocket, no wsproto; caller frames
masked with the all-zero key, agent-side binary frames counted, never unmasked). What
crosses the wire is built and checked with the product's own protocol modules (``bridge._twilio`` builders
and the strict ``parse_outbound``, ``bridge.agents.speakr._wire`` builders) and the caller's phone is the
emulators' :class:`~bridge.emulators.PhonePlayback` (plays in real time, echoes marks when their audio has
played, all at once on ``clear``), so the bridge sees the traffic Twilio would send.

One task, the *ticker*, runs every caller's phone clock: it wakes every 2 ms and serves the tenth of the
callers whose 20 ms phase falls there (calls are spread over the 20 ms like real calls, not sent in one
burst), on absolute deadlines so a late wake never slows the audio down. A caller starts talking once the
agent has sent ``ready`` for it (the agent and the callers share this process, so each caller's
``start`` carries ``customParameters.system_prompt = "bench:<run>:<index>"``, which the bridge passes on
to the agent in ``start``): the bridge's pre-``ready`` buffer then never drops audio and sample 0 of a call
is sample 0 of its first 512-byte frame.

Measurements, all on this process's ``time.perf_counter()``:

* uplink hop: agent receipt of 512-byte frame ``j`` minus the send time of the caller frame holding its last
  sample (frame ``(256 j + 255) // 160``): the time the bridge added, not the framing wait;
* downlink hop: caller receipt of the first ``media`` carrying an agent message minus the agent's send
  time. Each caller keeps a FIFO of the agent's send times, tagged with the number of Twilio ``clear``
  (= agent ``pause`` and ``clear``) before it; the caller drops entries of older epochs as its own clears
  arrive, and tiny ``media`` (the resampler's flushed tail) do not consume one. The rest of a turn after a
  ``continue`` is not measured (the bridge replays what the pause cut off).
* loss: once callers stop talking, every complete 512-byte frame's worth of caller audio must reach the
  agent (exact byte count per call; the passthrough backends: every μ-law byte); a call the server
  closes is a failure too.

The agent side speaks one backend's wire (:class:`LeanAgentServer` ``protocol``): Speakr, OpenAI Realtime
or Deepgram Voice Agent, the same script on each (see the class). For the passthrough backends the uplink
hop is timed from the Twilio frame holding the last μ-law byte the message completed, and the downlink hop
from the agent's delta (or binary frame) to the caller's ``media`` carrying it.

Every loop is bounded: the run has fixed phases (ramp, settle, window, drain, hang-up) with timeouts.
The trio clock (``trio.current_time``) only schedules; it has a random offset and never enters a figure.
"""

from __future__ import annotations

import functools
import importlib
import os
import random
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson
import trio
from _harness import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Endpoint,
    Poller,
    bridge_env,
    client_handshake,
    connect,
    server_handshake,
    take_frames,
    ws_frame,
)

import codec
from bridge import _twilio
from bridge._errors import DeepgramProtocolError, OpenAIProtocolError, TwilioProtocolError
from bridge.agents.cascade._emulator import DEFAULT_API_KEY as _CASCADE_KEY
from bridge.agents.cascade._emulator import LLM_PATH as _CASCADE_LLM
from bridge.agents.cascade._emulator import STT_PATH as _CASCADE_STT
from bridge.agents.cascade._emulator import TTS_PATH as _CASCADE_TTS
from bridge.agents.deepgram import _client_wire as _dg_client
from bridge.agents.deepgram import _wire as _dg
from bridge.agents.openai import _service as _oai
from bridge.agents.openai._emulator_data import default_session, merge_session
from bridge.agents.openai._wire import FORMAT_PCM, FORMAT_PCMU, PCM_RATE
from bridge.agents.speakr import _wire as _speakr
from bridge.emulators import PhonePlayback

__all__ = [
    "AGENTLESS",
    "PROTOCOLS",
    "backend_env",
    "LeanAgentServer",
    "LoadProfile",
    "LoadResult",
    "LoadRun",
    "drive_load",
    "setup_times",
]

FRAME_SAMPLES: Final = 160  # Twilio: 20 ms of μ-law 8 kHz per media message
FRAME_S: Final = 0.02
SPEAKR_FRAME_BYTES: Final = 512
TICK_BUCKETS: Final = 10  # the ticker wakes every FRAME_S / TICK_BUCKETS
#: Agent media under this many μ-law bytes (the resampler's ~11-sample tail, flushed when the agent
#: pauses) carry no new message: they do not consume a downlink-latency FIFO entry.
MIN_TIMED_MEDIA_BYTES: Final = 100


def _audio_frames() -> tuple[list[bytes], bytes]:
    """Fixed test audio: 1 s of μ-law speech-level noise in 20 ms frames; 100 ms of PCM16 24 kHz."""
    rng = np.random.default_rng(7)
    pcm8 = rng.normal(0, 3000, 8000).clip(-32768, 32767).astype("<i2").tobytes()
    ulaw = codec.ulaw_encode(pcm8)
    frames = [ulaw[i : i + FRAME_SAMPLES] for i in range(0, len(ulaw), FRAME_SAMPLES)]
    t = np.arange(2400) / 24000
    pcm24 = (3000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    return frames, pcm24


_CALLER_FRAMES, _AGENT_CHUNK = _audio_frames()


def _burst_frames() -> list[bytes]:
    """1 s of speech-like μ-law noise in 20 ms frames: 300-3000 Hz, a 4 Hz syllable envelope, peaks at
    -16 dBFS and never quieter than -24 dBFS in a 10 ms frame (loud for the VAD's default -49 dBFS)."""
    rng = np.random.default_rng(11)
    n = 8000
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / 8000)
    spectrum[(freqs < 300) | (freqs > 3000)] = 0
    noise = np.fft.irfft(spectrum, n)
    noise /= np.max(np.abs(noise))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / 8000)
    ulaw = codec.ulaw_encode((5000 * noise * envelope).astype("<i2").tobytes())
    return [ulaw[i : i + FRAME_SAMPLES] for i in range(0, len(ulaw), FRAME_SAMPLES)]


_BURST_FRAMES = _burst_frames()
_SILENT_FRAME: Final = b"\xff" * FRAME_SAMPLES  # μ-law 0


def _agent_ulaw() -> bytes:
    """100 ms of μ-law 8 kHz: the passthrough agents' message (the same 220 Hz tone, same duration)."""
    t = np.arange(800) / 8000
    return codec.ulaw_encode((3000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes())


_AGENT_ULAW = _agent_ulaw()
#: The agent protocols the lean agent speaks (the bridge's backends with a socket of their own).
PROTOCOLS: Final = ("speakr", "openai", "deepgram")
#: Backends without an agent socket: the bridge's own cascade leg (our VAD, then HTTP to STT, LLM and TTS).
#: The lean agent only lends its poller; callers are ready once ``start`` is sent; the uplink is not seen.
AGENTLESS: Final = ("cascade",)
_BENCH_PROMPT = re.compile(r"bench:[0-9a-f]+:[0-9]+")


# ------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """What the calls do and how long each phase of a run lasts.

    Callers talk all the time (Twilio sends media frames whether or not the caller speaks). The agent
    alternates ``speak_s`` of speech (100 ms messages, the first ``lead_s`` of it at once, then in real
    time) and ``listen_s`` of silence; a turn has a barge-in with ``barge_probability``: ``pause``, then
    after ``barge_hold_s`` (speech goes on meanwhile, held by the bridge) ``continue`` or ``clear`` (the
    rest of the turn is dropped), half each.

    ``caller_bursts`` (``None``: the caller's audio is speech-level noise all the time): ``(shortest,
    longest, quiet)`` in seconds: each caller speaks speech-like noise for a length drawn uniformly in
    [shortest, longest] (20 ms steps), then sends ``quiet`` of digital silence, and again; each call starts
    at a random point of its first quiet (seeded by the call's index: the same bursts in every run).

    After the ramp the run settles for ``settle_s``, and then on until the uplink hop's p99 over the last
    0.5 s is under 20 ms (the server has absorbed the set-up burst), at most ``settle_max_s`` in all
    (without an agent socket, just ``settle_s``).
    """

    speak_s: float = 2.0
    listen_s: float = 2.0
    barge_probability: float = 0.4
    barge_hold_s: float = 0.3
    lead_s: float = 0.2
    message_s: float = 0.1
    caller_bursts: tuple[float, float, float] | None = None
    ramp_calls_per_s: float = 50.0
    settle_s: float = 1.5
    settle_max_s: float = 6.0
    window_s: float = 8.0
    ready_timeout_s: float = 15.0
    drain_timeout_s: float = 3.0
    hangup_timeout_s: float = 3.0


@dataclass(slots=True)
class LoadResult:
    """What one run measured (times in seconds)."""

    calls: int
    connected: int = 0
    ready: int = 0
    closed_early: int = 0
    connect_errors: list[str] = field(default_factory=list)
    uplink_s: list[float] = field(default_factory=list)
    downlink_s: list[float] = field(default_factory=list)
    start_to_ready_s: list[float] = field(default_factory=list)
    tick_late_s: list[float] = field(default_factory=list)
    window_s: float = 0.0
    driver_cpu_s: float = 0.0
    caller_frames: int = 0  # Twilio media sent in the window
    agent_frames: int = 0  # 512-byte frames received in the window
    agent_media: int = 0  # agent media messages sent in the window
    twilio_media: int = 0  # media received by callers in the window
    twilio_tails: int = 0  # of which tiny (flushed resampler tails)
    twilio_clears: int = 0  # clear received by callers in the window
    caller_bursts: int = 0  # bursts of speech callers started in the window
    callers_heard: int = 0  # callers that received media in the window
    marks_echoed: int = 0
    statuses: int = 0
    barge_ins: int = 0
    uplink_expected_bytes: int = 0
    uplink_missing_bytes: int = 0
    downlink_sent_samples: int = 0  # agent audio, in 8 kHz samples, whole run
    downlink_heard_samples: int = 0  # played + cleared at the phones, whole run
    protocol_errors: int = 0
    agent_protocol_errors: int = 0  # client messages the lean service could not read (not Speakr's)
    truncates: int = 0  # OpenAI conversation.item.truncate received, whole run
    probe_begin: dict[str, float] = field(default_factory=dict)
    probe_end: dict[str, float] = field(default_factory=dict)
    after_drain: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """The counts, without the sample lists (for assertion messages)."""
        return (
            f"{self.calls} calls: {self.connected} connected, {self.ready} ready, "
            f"{self.closed_early} closed early {self.connect_errors[:3]}; uplink missing "
            f"{self.uplink_missing_bytes} of {self.uplink_expected_bytes} bytes; "
            f"protocol errors {self.protocol_errors} (agent side {self.agent_protocol_errors})"
        )

    @property
    def lost(self) -> bool:
        return self.uplink_missing_bytes > 0 or self.closed_early > 0 or self.ready < self.calls


class LoadRun:
    """Shared state of one run: the callers, the phase flags, the samples."""

    def __init__(self, calls: int, profile: LoadProfile) -> None:
        self.token = secrets.token_hex(4)
        self.profile = profile
        self.result = LoadResult(calls=calls)
        self.callers: list[LeanCaller] = []
        self.buckets: list[list[LeanCaller]] = [[] for _ in range(TICK_BUCKETS)]
        self.measuring = False
        self.settling: list[float] = []  # uplink hops seen while settling (cleared every check)
        self.window_t0 = 0.0
        self.talking = True
        self.agentless = False  # no agent socket (:data:`AGENTLESS`): callers are ready once started
        self.all_ready = trio.Event()

    def caller_for(self, system_prompt: Any) -> LeanCaller | None:
        if not isinstance(system_prompt, str):
            return None
        parts = system_prompt.split(":")
        if len(parts) != 3 or parts[0] != "bench" or parts[1] != self.token or not parts[2].isdigit():
            return None
        index = int(parts[2])
        return self.callers[index] if index < len(self.callers) else None


class LeanCaller:
    """One Twilio call: Media Stream client, phone clock driven by the run's ticker."""

    def __init__(self, run: LoadRun, index: int) -> None:
        self.run = run
        self.index = index
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.account_sid = "AC" + "0" * 32
        self.ep: Endpoint | None = None
        self.phone = PhonePlayback()
        self.seq = 0
        self.frames_sent = 0
        self.sent_at: list[float] = []  # perf_counter of each uplink frame, by index
        self.t_start = 0.0
        self.ready = False
        self.live = False
        self.hung_up = False
        self.done = trio.Event()
        self.ready_event = trio.Event()
        self.talk_t0: float | None = None  # perf_counter of the first media frame: the stream clock's 0
        self.agent: _AgentSession | _PassthroughSession | None = None  # its agent session, once linked
        self.epoch = 0  # Twilio clears received
        self.fifo: deque[tuple[int, float, bool]] = deque()  # (epoch, agent send time, in window)
        self.frames_at_agent = 0
        self.bytes_at_agent = 0
        self.close_detail = ""
        self.heard_in_window = False
        bursts = run.profile.caller_bursts
        self.rng = random.Random(index * 7919 + 29)
        self.burst_left = 0  # speech frames left in this burst
        self.quiet_left = 0 if bursts is None else self.rng.randrange(round(bursts[2] / FRAME_S) + 1)

    def _seq(self) -> int:
        self.seq += 1
        return self.seq

    def _send(self, text: str) -> None:
        assert self.ep is not None
        self.ep.write(ws_frame(OP_TEXT, text.encode(), masked=True))

    async def run_call(self, host: str, port: int, path: str, nursery: trio.Nursery, poller: Poller) -> None:
        run, result = self.run, self.run.result
        try:
            try:
                self.ep = await connect(host, port, nursery)
                await client_handshake(self.ep, host, port, path)
            except (ConnectionError, OSError) as exc:
                result.connect_errors.append(f"{type(exc).__name__}: {exc}")
                return
            result.connected += 1
            self._send(_twilio.connected_message())
            self.t_start = time.perf_counter()
            self._send(
                _twilio.start_message(
                    stream_sid=self.stream_sid,
                    call_sid=self.call_sid,
                    account_sid=self.account_sid,
                    custom_parameters={"system_prompt": f"bench:{run.token}:{self.index}"},
                    sequence_number=self._seq(),
                )
            )
            self.live = True
            if run.agentless:
                self._ready()
            poller.register(self.ep, self._on_readable)
            if self.ep.buf:
                self._on_readable(time.perf_counter())
            await self.done.wait()
        finally:
            self.live = False
            if self.ep is not None:
                self.ep.close()
            self.done.set()

    def _ready(self) -> None:
        """No agent to say ``ready``: the caller talks from now on."""
        self.ready = True
        self.ready_event.set()
        result = self.run.result
        result.ready += 1
        if result.ready == result.calls:
            self.run.all_ready.set()

    def _next_frame(self, k: int) -> bytes:
        """The microphone's next 20 ms: noise all the time, or the bursts of ``caller_bursts``."""
        bursts = self.run.profile.caller_bursts
        if bursts is None:
            return _CALLER_FRAMES[k % len(_CALLER_FRAMES)]
        if self.quiet_left > 0:
            self.quiet_left -= 1
            if self.quiet_left == 0:
                shortest, longest, _ = bursts
                self.burst_left = self.rng.randint(round(shortest / FRAME_S), round(longest / FRAME_S))
                if self.run.measuring:
                    self.run.result.caller_bursts += 1
            return _SILENT_FRAME
        if self.burst_left > 0:
            self.burst_left -= 1
            if self.burst_left == 0:
                self.quiet_left = round(bursts[2] / FRAME_S)
            return _BURST_FRAMES[k % len(_BURST_FRAMES)]
        self.quiet_left = round(bursts[2] / FRAME_S)  # the first frame of a call that starts speaking
        return _SILENT_FRAME

    def _on_readable(self, now: float) -> None:
        ep = self.ep
        assert ep is not None
        more = ep.drain()
        for opcode, payload, _ in take_frames(ep.buf):
            if opcode == OP_TEXT:
                assert payload is not None
                self._on_text(payload, now)
            elif opcode == OP_CLOSE:
                if not self.hung_up:
                    self.close_detail = f"server closed: {payload!r}"
                    self.run.result.closed_early += 1
                    ep.write(ws_frame(OP_CLOSE, payload or b"", masked=True))
                self._finish()
                return
            elif opcode == OP_PING:
                ep.write(ws_frame(OP_PONG, payload or b"", masked=True))
            else:
                self.run.result.protocol_errors += 1
        if not more:
            if not self.hung_up:
                self.close_detail = "connection lost"
                self.run.result.closed_early += 1
            self._finish()

    def _finish(self) -> None:
        self.live = False
        if self.ep is not None:
            self.ep.close()
        self.done.set()

    def _on_text(self, payload: bytes, now: float) -> None:
        run, result = self.run, self.run.result
        try:
            msg = _twilio.parse_outbound(payload.decode("utf-8"))
        except (TwilioProtocolError, UnicodeDecodeError):
            result.protocol_errors += 1
            return
        if msg.stream_sid != self.stream_sid:
            result.protocol_errors += 1
            return
        if isinstance(msg, _twilio.PlayMedia):
            size = len(msg.payload)
            self.phone.enqueue_media(msg.payload)
            if run.measuring:
                result.twilio_media += 1
                if not self.heard_in_window:
                    self.heard_in_window = True
                    result.callers_heard += 1
            if size < MIN_TIMED_MEDIA_BYTES:
                if run.measuring:
                    result.twilio_tails += 1
                return
            fifo = self.fifo
            while fifo and fifo[0][0] < self.epoch:
                fifo.popleft()
            if fifo and fifo[0][0] == self.epoch:
                _, sent, timed = fifo.popleft()
                if timed and run.measuring:
                    result.downlink_s.append(now - sent)
        elif isinstance(msg, _twilio.PlayMark):
            for name in self.phone.enqueue_mark(msg.name):
                self._echo(name)
        else:
            self.epoch += 1
            if run.measuring:
                result.twilio_clears += 1
            for name in self.phone.clear():
                self._echo(name)

    def _echo(self, name: str) -> None:
        self._send(
            _twilio.mark_event_message(stream_sid=self.stream_sid, name=name, sequence_number=self._seq())
        )
        if self.run.measuring:
            self.run.result.marks_echoed += 1

    def tick(self) -> None:
        """One 20 ms step of the phone: the speaker (and marks due), then the microphone's frame."""
        if not self.live:
            return
        _, due = self.phone.tick(FRAME_SAMPLES)
        out = b""
        for name in due:  # marks due and the frame go out in one write, as one TCP segment would
            out += ws_frame(
                OP_TEXT,
                _twilio.mark_event_message(
                    stream_sid=self.stream_sid, name=name, sequence_number=self._seq()
                ).encode(),
                masked=True,
            )
        if due and self.run.measuring:
            self.run.result.marks_echoed += len(due)
        if self.ready and self.run.talking:
            k = self.frames_sent
            # Twilio's stream clock is the phone's real time: the timestamp is when the frame goes out,
            # by this driver's clock, not ``k * 20``. The real-time ticker sends on 20 ms deadlines, so
            # the two agree there; a driver stepping slower (the instruction benchmark waits for a
            # server under valgrind) then still sends audio that is on time, as a slow phone would.
            sent = time.perf_counter()
            if self.talk_t0 is None:
                self.talk_t0 = sent
            text = _twilio.media_event_message(
                stream_sid=self.stream_sid,
                payload=self._next_frame(k),
                chunk=k + 1,
                timestamp_ms=round((sent - self.talk_t0) * 1000),
                sequence_number=self._seq(),
            )
            out += ws_frame(OP_TEXT, text.encode(), masked=True)
            self.sent_at.append(sent)
            self.frames_sent = k + 1
            if self.run.measuring:
                self.run.result.caller_frames += 1
        if out:
            assert self.ep is not None
            self.ep.write(out)

    def hang_up(self) -> None:
        """Twilio's end of call: ``stop``, then a close frame."""
        if not self.live or self.ep is None:
            return
        self.hung_up = True
        self._send(
            _twilio.stop_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=self.account_sid,
                sequence_number=self._seq(),
            )
        )
        self.ep.write(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=True))


# ------------------------------------------------------------------------------------------ the agent


def backend_env(protocol: str, agent_url: str) -> dict[str, str]:
    """The bridge's configuration under test with backend ``protocol`` at ``agent_url``: ``bridge_env``
    (of ``_harness``, unchanged for Speakr) with ``AGENT`` and the backend's URL and (dummy) key instead."""
    env = bridge_env(agent_url)
    if protocol == "openai":
        del env["SPEAKR_WS_URL"]
        env |= {"AGENT": "openai", "OPENAI_REALTIME_URL": agent_url, "OPENAI_API_KEY": "sk-bench-lean"}
    elif protocol == "deepgram":
        del env["SPEAKR_WS_URL"]
        env |= {"AGENT": "deepgram", "DEEPGRAM_AGENT_URL": agent_url, "DEEPGRAM_API_KEY": "dg-bench-lean"}
    elif protocol == "cascade":  # agent_url: the base URL of the three endpoints (``_cascade_service``)
        del env["SPEAKR_WS_URL"]
        env |= {
            "AGENT": "cascade", "CASCADE_STT_URL": agent_url + _CASCADE_STT, "CASCADE_LLM_URL": agent_url
            + _CASCADE_LLM, "CASCADE_TTS_URL": agent_url + _CASCADE_TTS, "CASCADE_API_KEY": _CASCADE_KEY,
        }
    return env


class LeanAgentServer:
    """A lean agent for load, speaking one backend's wire (``protocol``, one of :data:`PROTOCOLS`).

    ``speakr``: ``initial``, ``ready`` at once on ``start``, scripted ``media`` (100 ms of 24 kHz PCM16),
    ``pause``/``continue``/``clear``; caller audio arrives as 512-byte PCM16 frames, ``status`` is counted.
    ``openai`` (Realtime, GA): ``session.created``; the ``session.update`` is checked as the service
    does and answered with ``session.updated`` reading back ``audio/pcmu`` both ways; speech as
    ``response.output_audio.delta`` (100 ms of base64 μ-law each) between ``response.created`` and
    ``response.output_audio.done`` + ``response.done``; a barge-in is the service VAD's
    ``input_audio_buffer.speech_started`` (the response is cancelled); ``conversation.item.truncate`` is
    answered with ``conversation.item.truncated``; caller audio arrives as ``input_audio_buffer.append``
    (base64 μ-law, decoded by the service's parser). ``deepgram`` (Voice Agent v1): ``Welcome``; the
    ``Settings`` are parsed as strictly as the service does and answered with ``SettingsApplied``; speech
    as binary μ-law frames (100 ms each) between ``AgentStartedSpeaking`` and ``AgentAudioDone``; a
    barge-in is ``UserStartedSpeaking``; caller audio arrives as binary frames (counted, never copied).

    Every message is built with the product's own service-side builders (``bridge.agents.*``) and each
    session links itself to its caller by the ``bench:<run>:<index>`` prompt the caller's ``start``
    carries (Speakr: ``start.system_prompt``; OpenAI: the session's ``instructions``; Deepgram:
    ``agent.think.prompt``).
    """

    def __init__(self, host: str = "127.0.0.1", protocol: str = "speakr", cascade_url: str = "") -> None:
        if protocol not in PROTOCOLS + AGENTLESS:
            raise ValueError(f"protocol must be one of {PROTOCOLS + AGENTLESS}, got {protocol!r}")
        self.host = host
        self.protocol = protocol
        self.cascade_url = cascade_url  # ``cascade``: the endpoints' base URL
        self.port = 0
        self.run: LoadRun | None = None
        self.unlinked_sessions = 0
        self.poller = Poller()

    @property
    def url(self) -> str:
        if self.protocol == "cascade":
            return self.cascade_url
        if self.protocol == "openai":
            return f"ws://{self.host}:{self.port}/v1/realtime?model=gpt-realtime"
        if self.protocol == "deepgram":
            return f"ws://{self.host}:{self.port}/v1/agent/converse"
        return f"ws://{self.host}:{self.port}/speakr"

    @property
    def reports_played(self) -> bool:
        """The bridge tells this agent when a segment has played (Speakr ``status``)."""
        return self.protocol == "speakr"

    def uplink_expected_bytes(self, frames_sent: int) -> int:
        """Bytes of caller audio the agent must have once ``frames_sent`` Twilio media went out: every
        complete uplink frame (Speakr: 512 bytes of PCM16 8 kHz; the passthroughs: μ-law in the frames
        their leg declares, ``Capabilities.uplink_frame_bytes``)."""
        if self.protocol == "speakr":
            return (frames_sent * FRAME_SAMPLES * 2 // SPEAKR_FRAME_BYTES) * SPEAKR_FRAME_BYTES
        if self.protocol in AGENTLESS:
            return 0  # no agent socket: the uplink is not observable here
        frame = self.uplink_frame_bytes
        return frames_sent * FRAME_SAMPLES // frame * frame

    @functools.cached_property
    def uplink_frame_bytes(self) -> int:
        """The bytes per uplink frame the bridge's leg for this protocol declares (its capabilities)."""
        if self.protocol == "speakr":
            return SPEAKR_FRAME_BYTES
        leg = {"openai": "OpenAILeg", "deepgram": "DeepgramLeg"}[self.protocol]
        module = importlib.import_module(f"bridge.agents.{self.protocol}._leg")
        return int(getattr(module, leg).capabilities.uplink_frame_bytes)

    def bridge_env(self) -> dict[str, str]:
        """The bridge's configuration selecting this agent."""
        return backend_env(self.protocol, self.url)

    async def serve(
        self, *, task_status: trio.TaskStatus[LeanAgentServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(4096)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.poller.run)
                task_status.started(self)
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    for _ in range(256):
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            break
                        nursery.start_soon(self._session(Endpoint(conn, nursery)).run)
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()

    def _session(self, ep: Endpoint) -> _AgentSession | _OpenAISession | _DeepgramSession:
        if self.protocol == "openai":
            return _OpenAISession(self, ep)
        if self.protocol == "deepgram":
            return _DeepgramSession(self, ep)
        return _AgentSession(self, ep)


class _AgentSession:
    def __init__(self, server: LeanAgentServer, ep: Endpoint) -> None:
        self.server = server
        self.ep = ep
        self.load: LoadRun | None = server.run
        self.caller: LeanCaller | None = None
        self.session_id: Any = "s"
        self.sequence = 0
        self.epoch = 0  # pause + clear sent (each makes the bridge send Twilio a clear)
        self.nursery: trio.Nursery | None = None
        self.closed = trio.Event()

    def _send(self, text: str) -> None:
        self.ep.write(ws_frame(OP_TEXT, text.encode(), masked=False))

    async def run(self) -> None:
        try:
            handshaken = False
            with trio.move_on_after(10.0):
                await server_handshake(self.ep)
                handshaken = True
            if not handshaken:
                return
            self._send(_speakr.initial_message())
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.server.poller.register(self.ep, self._on_readable)
                if self.ep.buf:
                    self._on_readable(time.perf_counter())
                await self.closed.wait()
                nursery.cancel_scope.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            self.ep.close()

    def _on_readable(self, now: float) -> None:
        ep = self.ep
        more = ep.drain()
        for opcode, payload, length in take_frames(ep.buf):
            if opcode == OP_BINARY:
                self._on_audio(length, now)
            elif opcode == OP_TEXT:
                assert payload is not None
                self._on_text(payload, now)
            elif opcode == OP_CLOSE:
                ep.write(ws_frame(OP_CLOSE, payload or b"", masked=False))
                more = False
                break
            elif opcode == OP_PING:
                ep.write(ws_frame(OP_PONG, payload or b"", masked=False))
        if not more:
            ep.close()
            self.closed.set()

    def _on_audio(self, length: int, now: float) -> None:
        c = self.caller
        if c is None:
            return
        j = c.frames_at_agent
        c.frames_at_agent = j + 1
        c.bytes_at_agent += length
        run = c.run
        i = (256 * j + 255) // FRAME_SAMPLES
        sent = c.sent_at
        if length != SPEAKR_FRAME_BYTES or i >= len(sent):
            return
        if run.measuring:
            run.result.agent_frames += 1
            if sent[i] >= run.window_t0:
                run.result.uplink_s.append(now - sent[i])
        else:
            run.settling.append(now - sent[i])

    def _on_text(self, payload: bytes, now: float) -> None:
        if self.caller is not None:
            if self.caller.run.measuring:
                self.caller.run.result.statuses += 1
            return
        try:
            outer = orjson.loads(payload)
            inner = outer.get("msg")
            params = orjson.loads(inner) if isinstance(inner, str) else inner
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(params, dict) or outer.get("type") != "start":
            return
        load = self.load
        caller = load.caller_for(params.get("system_prompt")) if load is not None else None
        if caller is None or caller.ready:
            self.server.unlinked_sessions += 1
            return
        self.caller = caller
        caller.agent = self
        self.session_id = params.get("sessionId", "s")
        self._send(_speakr.ready_message())
        t = time.perf_counter()
        caller.ready = True
        caller.ready_event.set()
        run = caller.run
        run.result.ready += 1
        run.result.start_to_ready_s.append(t - caller.t_start)
        if run.result.ready == run.result.calls:
            run.all_ready.set()
        if run.profile.speak_s > 0 and self.nursery is not None:
            self.nursery.start_soon(self._speak, caller)

    # --- the script -------------------------------------------------------------------------------

    async def _speak(self, caller: LeanCaller) -> None:
        p = caller.run.profile
        rng = random.Random(caller.index * 7919 + 17)
        await trio.sleep(rng.uniform(0.0, p.speak_s + p.listen_s))
        for _ in range(100_000):  # bounded by the run's cancellation long before
            await self._turn(caller, rng)
            if p.listen_s > 0:
                await trio.sleep(p.listen_s)

    def _media(self, caller: LeanCaller, timed: bool) -> None:
        self.sequence += 1
        text = _speakr.media_message(self.session_id, self.sequence, _AGENT_CHUNK)
        run = caller.run
        now = time.perf_counter()
        if timed:
            caller.fifo.append((self.epoch, now, run.measuring))
        self._send(text)
        run.result.downlink_sent_samples += len(_AGENT_CHUNK) // 6
        if run.measuring:
            run.result.agent_media += 1

    async def _turn(self, caller: LeanCaller, rng: random.Random) -> None:
        p = caller.run.profile
        count = max(1, round(p.speak_s / p.message_s))
        barge_at = rng.randrange(count // 4, max(count // 4 + 1, 3 * count // 4))
        if rng.random() >= p.barge_probability:
            barge_at = -1
        clear = rng.random() < 0.5
        start = trio.current_time()
        clean, resolve_at = True, None
        for m in range(count):
            await trio.sleep_until(start + max(0.0, m * p.message_s - p.lead_s))
            if m == barge_at:
                self._send(_speakr.pause_message())
                self.epoch += 1
                if caller.run.measuring:
                    caller.run.result.barge_ins += 1
                resolve_at = trio.current_time() + p.barge_hold_s
            if resolve_at is not None and trio.current_time() >= resolve_at:
                resolve_at = None
                if self._resolve(clear):
                    return
                clean = False
            self._media(caller, timed=clean and resolve_at is None)
        if resolve_at is not None:
            await trio.sleep_until(resolve_at)
            self._resolve(clear)

    def _resolve(self, clear: bool) -> bool:
        """End a pause: ``clear`` (True: the turn is over) or ``continue``."""
        if clear:
            self._send(_speakr.clear_message())
            self.epoch += 1
            return True
        self._send(_speakr.continue_message())
        return False


# --------------------------------------------------------------------------- the passthrough agents


class _PassthroughSession:
    """What the OpenAI and Deepgram lean services share: the socket, the caller link, the uplink count, the
    speech script.

    The script is the Speakr agent's (same random draws per call: the same turns, the same barge-in
    instants) with what these protocols have: a barge-in is the service's VAD hearing the caller (OpenAI
    ``speech_started``, Deepgram ``UserStartedSpeaking``), after which the service sends nothing more of
    that answer; there is no soft pause. The caller's downlink FIFO is emptied at the barge-in (nothing
    still in flight of that answer is timed; the next answer starts ``listen_s`` later) and entries are
    tagged with the caller's own clear count, so a clear the bridge sends, or not, never mismatches them.
    """

    def __init__(self, server: LeanAgentServer, ep: Endpoint) -> None:
        self.server = server
        self.ep = ep
        self.load: LoadRun | None = server.run
        self.caller: LeanCaller | None = None
        self.nursery: trio.Nursery | None = None
        self.closed = trio.Event()
        self.answers = 0  # answers started
        self.speaking = False  # an answer is open

    def _send(self, text: str) -> None:
        self.ep.write(ws_frame(OP_TEXT, text.encode(), masked=False))

    def _greet(self) -> None:
        """What the service sends once the socket is open."""
        raise NotImplementedError

    def _on_text(self, payload: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_binary(self, length: int, now: float) -> None:
        self._bad()

    def _bad(self) -> None:
        load = self.caller.run if self.caller is not None else self.load
        if load is not None:
            load.result.agent_protocol_errors += 1

    async def run(self) -> None:
        try:
            handshaken = False
            with trio.move_on_after(10.0):
                await server_handshake(self.ep)
                handshaken = True
            if not handshaken:
                return
            self._greet()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.server.poller.register(self.ep, self._on_readable)
                if self.ep.buf:
                    self._on_readable(time.perf_counter())
                await self.closed.wait()
                nursery.cancel_scope.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            self.ep.close()

    def _on_readable(self, now: float) -> None:
        ep = self.ep
        more = ep.drain()
        for opcode, payload, length in take_frames(ep.buf):
            if opcode == OP_TEXT:
                assert payload is not None
                self._on_text(payload, now)
            elif opcode == OP_BINARY:
                self._on_binary(length, now)
            elif opcode == OP_CLOSE:
                ep.write(ws_frame(OP_CLOSE, payload or b"", masked=False))
                more = False
                break
            elif opcode == OP_PING:
                ep.write(ws_frame(OP_PONG, payload or b"", masked=False))
        if not more:
            ep.close()
            self.closed.set()

    def _link(self, prompt: Any) -> bool:
        """Find the caller by the ``bench:<run>:<index>`` in the session's prompt; start its script."""
        load = self.load
        found = _BENCH_PROMPT.search(prompt) if isinstance(prompt, str) else None
        caller = load.caller_for(found.group(0)) if load is not None and found is not None else None
        if caller is None or caller.ready:
            self.server.unlinked_sessions += 1
            return False
        self.caller = caller
        caller.agent = self
        t = time.perf_counter()
        caller.ready = True
        caller.ready_event.set()
        run = caller.run
        run.result.ready += 1
        run.result.start_to_ready_s.append(t - caller.t_start)
        if run.result.ready == run.result.calls:
            run.all_ready.set()
        if run.profile.speak_s > 0 and self.nursery is not None:
            self.nursery.start_soon(self._speak, caller)
        return True

    def _on_audio(self, samples: int, now: float) -> None:
        """``samples`` more caller samples (8 kHz) arrived: the hop of the last one's Twilio frame."""
        c = self.caller
        if c is None:
            return
        c.frames_at_agent += 1
        total = c.bytes_at_agent + samples
        c.bytes_at_agent = total
        run = c.run
        i = (total - 1) // FRAME_SAMPLES
        sent = c.sent_at
        if samples <= 0 or i >= len(sent):
            return
        if run.measuring:
            run.result.agent_frames += 1
            if sent[i] >= run.window_t0:
                run.result.uplink_s.append(now - sent[i])
        else:
            run.settling.append(now - sent[i])

    # --- the script -------------------------------------------------------------------------------

    def _open_answer(self) -> None:
        raise NotImplementedError

    def _audio(self, ulaw: bytes) -> None:
        raise NotImplementedError

    def _close_answer(self) -> None:
        raise NotImplementedError

    def _barge(self) -> None:
        raise NotImplementedError

    def _media(self, caller: LeanCaller, timed: bool) -> None:
        """One 100 ms agent message (an answer opens first if none is)."""
        if not self.speaking:
            self.speaking = True
            self.answers += 1
            self._open_answer()
        run = caller.run
        now = time.perf_counter()
        if timed:
            caller.fifo.append((caller.epoch, now, run.measuring))
        self._audio(_AGENT_ULAW)
        run.result.downlink_sent_samples += len(_AGENT_ULAW)
        if run.measuring:
            run.result.agent_media += 1

    async def _speak(self, caller: LeanCaller) -> None:
        p = caller.run.profile
        rng = random.Random(caller.index * 7919 + 17)
        await trio.sleep(rng.uniform(0.0, p.speak_s + p.listen_s))
        for _ in range(100_000):  # bounded by the run's cancellation long before
            await self._turn(caller, rng)
            if p.listen_s > 0:
                await trio.sleep(p.listen_s)

    async def _turn(self, caller: LeanCaller, rng: random.Random) -> None:
        p = caller.run.profile
        count = max(1, round(p.speak_s / p.message_s))
        barge_at = rng.randrange(count // 4, max(count // 4 + 1, 3 * count // 4))
        if rng.random() >= p.barge_probability:
            barge_at = -1
        rng.random()  # the Speakr script's continue-or-clear draw: the same turns per call, whatever the wire
        start = trio.current_time()
        for m in range(count):
            await trio.sleep_until(start + max(0.0, m * p.message_s - p.lead_s))
            if m == barge_at:
                caller.fifo.clear()
                self.speaking = False
                self._barge()
                if caller.run.measuring:
                    caller.run.result.barge_ins += 1
                return
            self._media(caller, timed=True)
        self.speaking = False
        self._close_answer()


class _OpenAISession(_PassthroughSession):
    """The Realtime service's side (GA), built with ``bridge.agents.openai._service``."""

    def __init__(self, server: LeanAgentServer, ep: Endpoint) -> None:
        super().__init__(server, ep)
        self.session = default_session(0, "gpt-realtime")
        self.session["id"] = "sess_lean" + secrets.token_hex(6)
        self.response_id = ""
        self.item_id = ""
        self.audio_in_ms = 0.0

    def _greet(self) -> None:
        self._send(_oai.session_created_message(self.session))

    def _on_text(self, payload: bytes, now: float) -> None:
        try:
            event = _oai.parse_client_event(payload.decode("utf-8"))  # bytes would be a binary frame
        except (OpenAIProtocolError, UnicodeDecodeError):
            self._bad()
            return
        if type(event) is _oai.AppendAudio:  # the hot path
            n = len(event.audio)
            self.audio_in_ms += n / 8
            self._on_audio(n, now)
        elif type(event) is _oai.SessionUpdate:
            self._on_session_update(event.session)
        elif type(event) is _oai.TruncateItem:
            self._send(_oai.item_truncated_message(event.item_id, event.content_index, event.audio_end_ms))
            if self.caller is not None:
                self.caller.run.result.truncates += 1
        elif type(event) is _oai.Unknown:
            self._bad()

    def _on_session_update(self, update: dict[str, Any]) -> None:
        problem = _oai.session_update_problem(update)
        if problem is not None:
            self._bad()
            self._send(
                _oai.error_message(
                    "invalid_request_error", problem.code, problem.message, param=problem.param
                )
            )
            return
        session = self.session
        merge_session(session, update)
        for direction in ("input", "output"):  # the service's normalisation (as the emulator's)
            fmt = session["audio"][direction]["format"]
            if fmt.get("type") == FORMAT_PCM:
                fmt["rate"] = PCM_RATE
            else:
                fmt.pop("rate", None)
        self._send(_oai.session_updated_message(session))
        formats = [session["audio"][d]["format"].get("type") for d in ("input", "output")]
        if formats != [FORMAT_PCMU, FORMAT_PCMU]:
            self._bad()  # the bridge would forward static: never linked, the call is not ready
            return
        if self.caller is None:
            self._link(session.get("instructions"))

    def _open_answer(self) -> None:
        self.response_id = f"resp_lean{self.answers}"
        self.item_id = f"item_lean{self.answers}"
        self._send(_oai.response_created_message(self.response_id))

    def _audio(self, ulaw: bytes) -> None:
        self._send(_oai.audio_delta_message(self.response_id, self.item_id, ulaw))

    def _close_answer(self) -> None:
        self._send(_oai.audio_done_message(self.response_id, self.item_id))
        self._send(_oai.response_done_message(self.response_id, "completed"))

    def _barge(self) -> None:
        self._send(_oai.speech_started_message(round(self.audio_in_ms), f"item_caller{self.answers}"))
        self._send(
            _oai.response_done_message(
                self.response_id, "cancelled", status_details={"type": "cancelled", "reason": "turn_detected"}
            )
        )


class _DeepgramSession(_PassthroughSession):
    """The Voice Agent service's side (v1), built with ``bridge.agents.deepgram._wire``."""

    def _greet(self) -> None:
        self._send(_dg.welcome_message("lean-" + secrets.token_hex(8)))

    def _on_binary(self, length: int, now: float) -> None:
        self._on_audio(length, now)  # μ-law: one byte a sample; counted, never copied

    def _on_text(self, payload: bytes, now: float) -> None:
        try:
            message = _dg_client.parse_client_message(payload.decode("utf-8"))
        except (DeepgramProtocolError, UnicodeDecodeError):
            self._bad()
            return
        if type(message) is _dg_client.SettingsRequest:
            formats = [(f.encoding, f.sample_rate) for f in (message.input, message.output)]
            if formats != [(_dg.ENCODING, _dg.SAMPLE_RATE)] * 2 or self.caller is not None:
                self._bad()
                self._send(_dg.error_message("settings refused", "UNPARSABLE_CLIENT_MESSAGE"))
                return
            self._send(_dg.settings_applied_message())
            self._link(message.prompt)

    def _open_answer(self) -> None:
        self._send(_dg.agent_started_speaking_message(0.5, 0.1, 0.4))

    def _audio(self, ulaw: bytes) -> None:
        self.ep.write(ws_frame(OP_BINARY, ulaw, masked=False))

    def _close_answer(self) -> None:
        self._send(_dg.agent_audio_done_message())

    def _barge(self) -> None:
        self._send(_dg.user_started_speaking_message())


# ------------------------------------------------------------------------------------------ driving


Probe = Callable[[], dict[str, float]]


async def _ticker(run: LoadRun) -> None:
    slot = FRAME_S / TICK_BUCKETS
    t0 = trio.current_time()
    buckets = run.buckets
    k = 0
    while True:
        deadline = t0 + k * slot
        await trio.sleep_until(deadline)
        if run.measuring:
            run.result.tick_late_s.append(trio.current_time() - deadline)
        for caller in buckets[k % TICK_BUCKETS]:
            caller.tick()
        k += 1


#: Settled: p99 of the uplink hop over the last check period under this.
SETTLED_P99_S: Final = 0.020
SETTLE_CHECK_S: Final = 0.5


async def _settle(run: LoadRun) -> None:
    profile = run.profile
    start = trio.current_time()
    await trio.sleep(profile.settle_s)
    while trio.current_time() - start < profile.settle_max_s:
        run.settling = []
        await trio.sleep(SETTLE_CHECK_S)
        recent = sorted(run.settling)
        if run.agentless or recent and recent[int(0.99 * (len(recent) - 1))] < SETTLED_P99_S:
            break
    run.settling = []


async def drive_load(
    ws_url_host: str,
    ws_port: int | tuple[int, ...],
    agent: LeanAgentServer,
    calls: int,
    profile: LoadProfile,
    *,
    probe: Probe | None = None,
    after_drain: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    path: str = "/twilio/stream",
) -> LoadResult:
    """Run ``calls`` concurrent real-time calls through the server at ``ws_url_host:ws_port``.

    Several ports (instances of a fleet): calls are spread over them in turn.

    Phases: ramp (calls connect at ``profile.ramp_calls_per_s``), wait for every agent ``ready``
    (bounded), settle, measurement window (``probe()`` at its start and end), drain (callers stop
    talking; wait for the agent to have every complete frame), ``after_drain()`` (e.g. scrape
    /metrics), hang up. Never raises for what the server does: it is all in the result.
    """
    ports = ws_port if isinstance(ws_port, tuple) else (ws_port,)
    run = LoadRun(calls, profile)
    run.agentless = agent.protocol in AGENTLESS
    agent.run = run
    result = run.result
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ticker, run)
            t0 = trio.current_time()
            for i in range(calls):
                caller = LeanCaller(run, i)
                run.callers.append(caller)
                run.buckets[i % TICK_BUCKETS].append(caller)
                port = ports[i % len(ports)]
                nursery.start_soon(caller.run_call, ws_url_host, port, path, nursery, agent.poller)
                await trio.sleep_until(t0 + (i + 1) / profile.ramp_calls_per_s)
            with trio.move_on_after(profile.ready_timeout_s):
                await run.all_ready.wait()
            await _settle(run)
            # --- the window
            cpu0, w0 = os.times(), time.perf_counter()
            result.probe_begin = probe() if probe else {}
            run.window_t0 = time.perf_counter()
            run.measuring = True
            await trio.sleep(profile.window_s)
            run.measuring = False
            result.probe_end = probe() if probe else {}
            cpu1, w1 = os.times(), time.perf_counter()
            result.window_s = w1 - w0
            result.driver_cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            # --- drain: every complete uplink frame's worth of caller audio must reach the agent
            run.talking = False
            expected = [agent.uplink_expected_bytes(c.frames_sent) for c in run.callers]
            with trio.move_on_after(profile.drain_timeout_s):
                # Polling, not an event per call: bounded by the timeout, and cheap at 20 Hz.
                while any(c.bytes_at_agent < e for c, e in zip(run.callers, expected, strict=True)):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            result.uplink_expected_bytes = sum(expected)
            result.uplink_missing_bytes = sum(
                max(0, e - c.bytes_at_agent) for c, e in zip(run.callers, expected, strict=True)
            )
            result.downlink_heard_samples = sum(
                c.phone.played_audio_samples + c.phone.cleared_samples + c.phone.queued_samples
                for c in run.callers
            )
            if after_drain is not None:
                result.after_drain = await after_drain()
            # --- hang up
            for c in run.callers:
                c.hang_up()
            with trio.move_on_after(profile.hangup_timeout_s):
                for c in run.callers:
                    await c.done.wait()
            nursery.cancel_scope.cancel()
    finally:
        agent.run = None
    return result


async def setup_times(
    host: str, port: int, agent: LeanAgentServer, count: int, timeout_s: float = 5.0
) -> list[float]:
    """``count`` calls one after the other, each alone: Twilio ``start`` sent -> agent ``ready`` sent."""
    times: list[float] = []
    profile = LoadProfile(speak_s=0.0)
    for _ in range(count):
        run = LoadRun(1, profile)
        agent.run = run
        caller = LeanCaller(run, 0)
        run.callers.append(caller)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller.run_call, host, port, "/twilio/stream", nursery, agent.poller)
            with trio.move_on_after(timeout_s):
                await caller.ready_event.wait()
            caller.hang_up()
            with trio.move_on_after(timeout_s):
                await caller.done.wait()
            nursery.cancel_scope.cancel()
        times += run.result.start_to_ready_s
        agent.run = None
    return times
