"""The peer comparison's load: N real-time Twilio callers against a relay in front of the OpenAI emulator.

Theory of operation
-------------------
One Trio run holds the callers and the agent side, so every figure is on one clock (``time.perf_counter``);
the relay under test (the bridge with ``AGENT=openai``, or the pipecat bot) is a separate process in
between. The callers are the lean load driver's kind (``_harness``: non-blocking stdlib sockets, one epoll
set, WebSocket framing written out; the Twilio messages built and parsed by ``bridge._twilio``; the phone is
:class:`~bridge.emulators.PhonePlayback` with a 200 ms handset playout delay, which plays in real time,
honours ``clear`` and echoes marks when their audio has played). The agent is the product's OpenAI Realtime
emulator (:class:`~bridge.agents.openai.OpenAIRealtimeServer`), whose server VAD hears the caller in
input-audio time, sends ``speech_started`` and cancels the response in progress, and records every
``conversation.item.truncate``. A :class:`TimedSession` subclass only adds timestamps.

The scripted conversation, the same for both relays: a caller speaks ``speech_s`` (a -20 dBFS tone) at the
start of every ``cycle_s`` and is silent otherwise; its phase in the cycle differs per call. The emulator's
VAD stops the caller's turn ``silence_duration_ms`` (500) after the speech and answers with ``reply_ms`` of
audio, sent in ``delta_ms`` deltas in real time; the caller's next speech barges in on it. So every cycle
of every call has one barge-in: ``speech_started`` -> the relay clears the phone and truncates the item.
A caller starts talking ``lead_in_s`` after its emulator session has been configured (it is linked to its
call by ``session.instructions``, set from the call's ``customParameters.system_prompt``), so that sample
0 of the emulator's input audio is sample 0 of the call.

Measured, all in the window unless said:

* uplink hop: emulator receipt of an ``input_audio_buffer.append`` minus the send time of the caller frame
  holding the last sample it completes (8 kHz samples; 24 kHz PCM counts 3 for 1: a resampler's delay is
  latency the relay adds);
* downlink hop: per audio delta, caller receipt of the first ``media`` that reaches the delta's first sample
  (counted from the response's first media; a response's media are those received between its first
  delta's send time and the next response's) minus the delta's send time; deltas sent after the response's
  ``speech_started`` are not timed;
* barge-in: from the emulator's ``speech_started`` to the phone's playback of that response stopping (the
  ``clear`` while audio was queued, else the instant the queue ran dry);
* truncation error: the ``audio_end_ms`` the emulator received for the item minus what the phone played of
  it (samples handed to the speaker, cleared ones not counted), per barge-in, whole run. The
  twilio-samples estimate (latest inbound media ``timestamp`` when ``speech_started`` arrives minus the
  latest one when the response's first delta arrived) is worked out from the same calls' timestamps;
* loss: after the window the callers send silence (a resampler then lets out what it holds back); every
  caller sample sent before must reach the emulator;
* the relay's CPU seconds and RSS from ``/proc`` (whole process tree).
"""

from __future__ import annotations

import bisect
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from _harness import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Endpoint,
    Poller,
    client_handshake,
    connect,
    percentile,
    take_frames,
    ws_frame,
)

from bridge import _twilio
from bridge._errors import TwilioProtocolError
from bridge.agents import openai as oa
from bridge.agents.openai._emulator import RealtimeSession
from bridge.emulators import PhonePlayback

__all__ = ["PeerResult", "Scenario", "TimedRealtimeServer", "drive_peers"]

FRAME_SAMPLES: Final = 160
FRAME_S: Final = 0.02
TICK_BUCKETS: Final = 10
SILENT_FRAME: Final = b"\xff" * FRAME_SAMPLES
_DELTA_PREFIX: Final = '{"type":"response.output_audio.delta"'
_LINK = re.compile(r"bench:([0-9a-f]+):(\d+)")


@dataclass(frozen=True, slots=True)
class Scenario:
    """The scripted conversation and the phases of a run (see the module docstring)."""

    cycle_s: float = 4.0
    speech_s: float = 0.4
    speech_dbfs: float = -20.0
    reply_ms: int = 5000
    delta_ms: int = 100
    playout_delay_ms: int = 200
    ramp_calls_per_s: float = 20.0
    link_timeout_s: float = 20.0
    lead_in_s: float = 0.5
    settle_s: float = 2.0
    window_s: float = 8.0
    drain_timeout_s: float = 3.0
    hangup_timeout_s: float = 3.0

    def caller_frames(self) -> list[bytes]:
        """One cycle of caller audio in 20 ms frames: the speech, then silence."""
        n = round(self.cycle_s / FRAME_S)
        speech = round(self.speech_s / FRAME_S)
        tone = oa.tone_ulaw(speech * 20, 440.0, self.speech_dbfs)
        frames = [tone[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(speech)]
        return frames + [SILENT_FRAME] * (n - speech)

    def emulator(self, api_key: str) -> TimedRealtimeServer:
        """The agent: answers every turn with ``reply_ms`` of tone, in real time."""
        turn = oa.Turn(audio=oa.tone_ulaw(self.reply_ms, 300.0, -12.0))
        return TimedRealtimeServer(
            api_key=api_key, turns=[turn], delta_ms=self.delta_ms, pace_s=self.delta_ms / 1000
        )


# ------------------------------------------------------------------------------------------ the agent


@dataclass(slots=True)
class _Response:
    """What the emulator sent of one response, with times (perf_counter)."""

    item_id: str
    deltas: list[tuple[int, float]] = field(default_factory=list)  # (first 8 kHz sample, send time)
    speech_started_s: float | None = None  # the barge-in's speech_started, sent while this was active


class TimedSession(RealtimeSession):
    """The emulator's session, plus the times the benchmark needs and the link to its caller."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.caller: PeerCaller | None = None
        self.timed: list[_Response] = []
        self.samples_in = 0  # input audio so far, in 8 kHz samples
        self._bytes_in = 0

    async def _on_message(self, data: str | bytes) -> None:
        now = time.perf_counter()
        before = len(self._appended)
        await super()._on_message(data)
        added = len(self._appended) - before
        if added and self.caller is not None:
            per = 1 if self.input_format == oa.FORMAT_PCMU else 6  # 24 kHz PCM16: 6 bytes an 8 kHz sample
            self._bytes_in += added
            self.samples_in = self._bytes_in // per
            self.caller.on_agent_heard(self.samples_in, now)

    async def _on_session_update(self, session: dict[str, Any]) -> None:
        await super()._on_session_update(session)
        run = self._server.run if isinstance(self._server, TimedRealtimeServer) else None
        match = _LINK.search(str(self.session.get("instructions") or ""))
        if run is None or match is None or self.caller is not None:
            return
        caller = run.caller_for(match.group(1), int(match.group(2)))
        if caller is not None and caller.session is None:
            self.caller, caller.session = caller, self
            caller.linked_at = time.perf_counter()

    async def _send(self, text: str | bytes, kind: str | None = None, detail: str = "") -> None:
        now = time.perf_counter()
        active = self._active
        if active is not None and isinstance(text, str):
            if text.startswith(_DELTA_PREFIX):
                if not self.timed or self.timed[-1].item_id != active.item_id:
                    self.timed.append(_Response(active.item_id))
                step = self._server.delta_ms * 8  # 8 kHz samples a delta; the last one shorter
                start = (active.deltas - 1) * step  # every delta but the last is a whole step
                self.timed[-1].deltas.append((start, now))
            elif kind == "speech_started" and self.timed and self.timed[-1].item_id == active.item_id:
                self.timed[-1].speech_started_s = now
        await super()._send(text, kind, detail)


class TimedRealtimeServer(oa.OpenAIRealtimeServer):
    """The OpenAI emulator with :class:`TimedSession` sessions, linked to the run's callers."""

    session_class = TimedSession

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run: PeerRun | None = None


# ------------------------------------------------------------------------------------------ the callers


@dataclass(slots=True)
class PeerResult:
    """What one run measured (times in seconds, audio in 8 kHz samples)."""

    calls: int
    connected: int = 0
    linked: int = 0
    closed_early: int = 0
    connect_errors: list[str] = field(default_factory=list)
    uplink_s: list[float] = field(default_factory=list)
    downlink_s: list[float] = field(default_factory=list)
    barge_stop_s: list[float] = field(default_factory=list)
    barges_without_clear: int = 0
    truncation_error_ms: list[float] = field(default_factory=list)
    twilio_samples_error_ms: list[float] = field(default_factory=list)
    barges: int = 0
    truncates_missing: int = 0
    truncates_refused: int = 0
    uplink_expected: int = 0
    uplink_missing: int = 0
    window_s: float = 0.0
    driver_cpu_s: float = 0.0
    tick_late_s: list[float] = field(default_factory=list)
    probe_begin: dict[str, float] = field(default_factory=dict)
    probe_end: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> bool:
        """A call not set up, closed early, or caller audio missing."""
        return self.linked < self.calls or self.closed_early > 0 or self.uplink_missing > 0

    def p99_ms(self) -> float:
        return 1000 * max(percentile(self.uplink_s, 99), percentile(self.downlink_s, 99))

    def summary(self) -> str:
        return (
            f"{self.calls} calls: {self.connected} connected, {self.linked} linked, {self.closed_early} "
            f"closed early {self.connect_errors[:3]}; uplink missing {self.uplink_missing} of "
            f"{self.uplink_expected} samples; {self.barges} barge-ins"
        )


class PeerRun:
    """Shared state of one run."""

    def __init__(self, calls: int, scenario: Scenario) -> None:
        self.token = secrets.token_hex(4)
        self.scenario = scenario
        self.frames = scenario.caller_frames()
        self.result = PeerResult(calls=calls)
        self.callers: list[PeerCaller] = []
        self.buckets: list[list[PeerCaller]] = [[] for _ in range(TICK_BUCKETS)]
        self.measuring = False
        self.window = (0.0, 0.0)
        self.talking = True
        self.draining = False  # callers send silence: a relay's resampler flushes what it holds back

    def caller_for(self, token: str, index: int) -> PeerCaller | None:
        if token != self.token or index >= len(self.callers):
            return None
        return self.callers[index]


class PeerCaller:
    """One Twilio call: the Media Stream client, the phone, and what it received, with times."""

    def __init__(self, run: PeerRun, index: int) -> None:
        self.run = run
        self.index = index
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.ep: Endpoint | None = None
        scenario = run.scenario
        self.phone = PhonePlayback(start_delay_samples=scenario.playout_delay_ms * 8)
        self.phase = (index * 37) % len(run.frames)  # where in the cycle this call starts talking
        self.seq = 0
        self.session: TimedSession | None = None
        self.linked_at: float | None = None
        self.talk_t0: float | None = None
        self.frames_sent = 0
        self.sent_at: list[float] = []
        self.live = False
        self.hung_up = False
        self.done = trio.Event()
        self.heard_frame = 0  # caller frames wholly heard by the agent
        # The phone, for the analysis: media (time, samples, enqueued before), clears (time, consumed
        # before, enqueued at), dry-outs (time).
        self.media: list[tuple[float, int, int]] = []
        self.clears: list[tuple[float, int, int]] = []
        self.dry: list[float] = []
        self.enqueued = 0
        self.consumed = 0  # played or cleared

    def _seq(self) -> int:
        self.seq += 1
        return self.seq

    def _send(self, text: str) -> None:
        assert self.ep is not None
        self.ep.write(ws_frame(OP_TEXT, text.encode(), masked=True))

    async def run_call(self, host: str, port: int, path: str, nursery: trio.Nursery, poller: Poller) -> None:
        result = self.run.result
        try:
            try:
                self.ep = await connect(host, port, nursery)
                await client_handshake(self.ep, host, port, path)
            except (ConnectionError, OSError) as exc:
                result.connect_errors.append(f"{type(exc).__name__}: {exc}")
                return
            result.connected += 1
            self._send(_twilio.connected_message())
            self._send(
                _twilio.start_message(
                    stream_sid=self.stream_sid,
                    call_sid=self.call_sid,
                    account_sid="AC" + "0" * 32,
                    custom_parameters={"system_prompt": f"bench:{self.run.token}:{self.index}"},
                    sequence_number=self._seq(),
                )
            )
            self.live = True
            poller.register(self.ep, self._on_readable)
            if self.ep.buf:
                self._on_readable(time.perf_counter())
            await self.done.wait()
        finally:
            self.live = False
            if self.ep is not None:
                self.ep.close()
            self.done.set()

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
                    self.run.result.closed_early += 1
                    ep.write(ws_frame(OP_CLOSE, payload or b"", masked=True))
                self._finish()
                return
            elif opcode == OP_PING:
                ep.write(ws_frame(OP_PONG, payload or b"", masked=True))
        if not more:
            if not self.hung_up:
                self.run.result.closed_early += 1
            self._finish()

    def _finish(self) -> None:
        self.live = False
        if self.ep is not None:
            self.ep.close()
        self.done.set()

    def _on_text(self, payload: bytes, now: float) -> None:
        try:
            msg = _twilio.parse_outbound(payload.decode("utf-8"))
        except (TwilioProtocolError, UnicodeDecodeError):
            return
        if isinstance(msg, _twilio.PlayMedia):
            n = len(msg.payload)
            self.media.append((now, n, self.enqueued))
            self.enqueued += n
            self.phone.enqueue_media(msg.payload)
        elif isinstance(msg, _twilio.PlayMark):
            for name in self.phone.enqueue_mark(msg.name):
                self._echo(name)
        else:  # clear
            self.clears.append((now, self.consumed, self.enqueued))
            queued = self.phone.queued_samples
            for name in self.phone.clear():
                self._echo(name)
            self.consumed += queued

    def _echo(self, name: str) -> None:
        self._send(
            _twilio.mark_event_message(stream_sid=self.stream_sid, name=name, sequence_number=self._seq())
        )

    def on_agent_heard(self, samples: int, now: float) -> None:
        """The emulator has received ``samples`` of this call's audio (the uplink hop)."""
        frame = samples // FRAME_SAMPLES - 1  # the last frame wholly heard
        if frame < self.heard_frame or frame >= len(self.sent_at):
            self.heard_frame = max(self.heard_frame, frame + 1)
            return
        run = self.run
        for k in range(self.heard_frame, frame + 1):
            sent = self.sent_at[k]
            if run.measuring and sent >= run.window[0]:
                run.result.uplink_s.append(now - sent)
        self.heard_frame = frame + 1

    def tick(self, now: float) -> None:
        """One 20 ms step of the phone: the speaker (marks due go back), then the microphone's frame."""
        if not self.live:
            return
        before = self.phone.played_audio_samples
        _, due = self.phone.tick(FRAME_SAMPLES)
        played = self.phone.played_audio_samples - before
        self.consumed += played
        if played and self.phone.queued_samples == 0:
            self.dry.append(now + played / 8000)
        out = b""
        for name in due:
            out += ws_frame(
                OP_TEXT,
                _twilio.mark_event_message(
                    stream_sid=self.stream_sid, name=name, sequence_number=self._seq()
                ).encode(),
                masked=True,
            )
        run = self.run
        if self.linked_at is not None and run.talking and now >= self.linked_at + run.scenario.lead_in_s:
            k = self.frames_sent
            sent = time.perf_counter()
            if self.talk_t0 is None:
                self.talk_t0 = sent
            frames = run.frames
            out += ws_frame(
                OP_TEXT,
                _twilio.media_event_message(
                    stream_sid=self.stream_sid,
                    payload=SILENT_FRAME if run.draining else frames[(k + self.phase) % len(frames)],
                    chunk=k + 1,
                    timestamp_ms=round((sent - self.talk_t0) * 1000),
                    sequence_number=self._seq(),
                ).encode(),
                masked=True,
            )
            self.sent_at.append(sent)
            self.frames_sent = k + 1
        if out:
            assert self.ep is not None
            self.ep.write(out)

    def hang_up(self) -> None:
        if not self.live or self.ep is None:
            return
        self.hung_up = True
        self._send(
            _twilio.stop_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid="AC" + "0" * 32,
                sequence_number=self._seq(),
            )
        )
        self.ep.write(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=True))

    # ---------------------------------------------------------------------------------- the analysis

    def _stream_ts_ms(self, t: float) -> int | None:
        """The ``timestamp`` of the latest media this call had sent by ``t`` (what a relay last saw)."""
        if self.talk_t0 is None:
            return None
        k = bisect.bisect_right(self.sent_at, t) - 1
        return None if k < 0 else round((self.sent_at[k] - self.talk_t0) * 1000)

    def _played(self, lo: int, hi: int) -> int:
        """Samples of the enqueued range ``[lo, hi)`` the phone played (consumed and not cleared)."""
        played = max(0, min(hi, self.consumed) - lo)
        for _, c0, c1 in self.clears:
            played -= max(0, min(hi, c1) - max(lo, c0))
        return max(0, played)

    def analyse(self, result: PeerResult, window: tuple[float, float]) -> None:
        """Per response of this call: downlink hops, the barge-in's stop time and truncation error."""
        session = self.session
        if session is None:
            return
        responses = session.timed
        truncates = {t.item_id: t for t in session.truncates}
        media_t = [m[0] for m in self.media]
        for r, resp in enumerate(responses):
            if not resp.deltas:
                continue
            t0 = resp.deltas[0][1]
            t1 = responses[r + 1].deltas[0][1] if r + 1 < len(responses) and responses[r + 1].deltas else 1e18
            first = bisect.bisect_left(media_t, t0)
            last = bisect.bisect_left(media_t, t1)
            mine = self.media[first:last]
            # Downlink hop of each delta sent before the barge-in.
            cut = resp.speech_started_s if resp.speech_started_s is not None else 1e18
            i, got = 0, 0
            for start, sent in resp.deltas:
                if sent >= cut:
                    break
                while i < len(mine) and got <= start:
                    got += mine[i][1]
                    i += 1
                if got <= start:
                    break
                if window[0] <= sent < window[1]:
                    result.downlink_s.append(mine[i - 1][0] - sent)
            ss = resp.speech_started_s
            if ss is None or not mine:
                continue
            result.barges += 1
            # Playback stop: the first clear after speech_started while audio was queued, else running dry.
            clear = next((c for c in self.clears if c[0] >= ss), None)
            dry = next((d for d in self.dry if d >= ss), None)
            if clear is None:
                result.barges_without_clear += 1
            stops = [t for t in (clear[0] if clear and clear[2] > clear[1] else None, dry) if t is not None]
            if stops:
                result.barge_stop_s.append(min(stops) - ss)
            lo = mine[0][2]
            hi = mine[-1][2] + mine[-1][1]
            played_ms = self._played(lo, hi) / 8
            trunc = truncates.get(resp.item_id)
            if trunc is None:
                result.truncates_missing += 1
            else:
                if not trunc.accepted:
                    result.truncates_refused += 1
                result.truncation_error_ms.append(trunc.audio_end_ms - played_ms)
            start_ts, now_ts = self._stream_ts_ms(t0), self._stream_ts_ms(ss)
            if start_ts is not None and now_ts is not None:
                result.twilio_samples_error_ms.append((now_ts - start_ts) - played_ms)


# ------------------------------------------------------------------------------------------ driving


async def _ticker(run: PeerRun) -> None:
    slot = FRAME_S / TICK_BUCKETS
    t0 = trio.current_time()
    k = 0
    while True:
        deadline = t0 + k * slot
        await trio.sleep_until(deadline)
        if run.measuring:
            run.result.tick_late_s.append(trio.current_time() - deadline)
        now = time.perf_counter()
        for caller in run.buckets[k % TICK_BUCKETS]:
            caller.tick(now)
        k += 1


async def drive_peers(
    host: str,
    port: int,
    emulator: TimedRealtimeServer,
    calls: int,
    scenario: Scenario,
    *,
    probe: Any = None,
    path: str = "/twilio/stream",
) -> PeerResult:
    """Run ``calls`` concurrent calls through the relay at ``host:port``; never raises for what it does.

    Phases: ramp, wait for every call's emulator session (bounded), lead-in and settle, the window
    (``probe()`` at both ends: the relay's CPU and memory), drain (callers stop; every sample must reach
    the emulator), hang up; then the analysis of every call.
    """
    run = PeerRun(calls, scenario)
    emulator.run = run
    result = run.result
    poller = Poller()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            nursery.start_soon(_ticker, run)
            t0 = trio.current_time()
            for i in range(calls):
                caller = PeerCaller(run, i)
                run.callers.append(caller)
                run.buckets[i % TICK_BUCKETS].append(caller)
                nursery.start_soon(caller.run_call, host, port, path, nursery, poller)
                await trio.sleep_until(t0 + (i + 1) / scenario.ramp_calls_per_s)
            with trio.move_on_after(scenario.link_timeout_s):
                while any(c.session is None for c in run.callers):  # noqa: ASYNC110 -- bounded poll
                    await trio.sleep(0.05)
            result.linked = sum(c.session is not None for c in run.callers)
            await trio.sleep(scenario.lead_in_s + scenario.settle_s)
            cpu0 = time.process_time()
            result.probe_begin = probe() if probe else {}
            w0 = time.perf_counter()
            run.window = (w0, w0 + scenario.window_s)
            run.measuring = True
            await trio.sleep(scenario.window_s)
            run.measuring = False
            result.probe_end = probe() if probe else {}
            result.window_s = time.perf_counter() - w0
            result.driver_cpu_s = time.process_time() - cpu0
            # Drain: callers go on sending silence, as Twilio does, so that whatever a relay holds back
            # (a resampler's filter delay) comes out; every sample sent before this must reach the agent.
            run.draining = True
            expected = [c.frames_sent * FRAME_SAMPLES for c in run.callers]

            def heard(c: PeerCaller) -> int:
                return c.session.samples_in if c.session is not None else 0

            with trio.move_on_after(scenario.drain_timeout_s):
                while any(heard(c) < e for c, e in zip(run.callers, expected, strict=True)):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            run.talking = False
            result.uplink_expected = sum(expected)
            result.uplink_missing = sum(
                max(0, e - heard(c)) for c, e in zip(run.callers, expected, strict=True)
            )
            for c in run.callers:
                c.hang_up()
            with trio.move_on_after(scenario.hangup_timeout_s):
                for c in run.callers:
                    await c.done.wait()
            nursery.cancel_scope.cancel()
    finally:
        emulator.run = None
    for c in run.callers:
        c.analyse(result, run.window)
    return result
