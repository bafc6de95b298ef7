"""``speakr-bridge demo``: one whole call on loopback, no keys, no network.

Theory of operation
-------------------
:func:`run_demo` owns one nursery holding the three parties of a real call, all on 127.0.0.1:

- the agent: the built-in local echo agent (:class:`~bridge.agents.speakr._local_agent.LocalAgentServer`, the
  one ``serve`` starts when ``SPEAKR_WS_URL`` is unset), or the agent at ``agent_url``. The demo starts the
  local agent itself rather than letting the app do it, for two reasons: its speech is paced on the wall
  clock, so at ``speed`` k its pace must be k times the usual one for the phone to hear it as the app's
  agent would sound in real time; and its per-session statistics (turns, pauses, continues, clears) go into
  the summary.
- the bridge: ``create_app`` served by Hypercorn on a free port, exactly as ``serve`` runs it, with a
  per-run random Twilio auth token, so the signed webhook, the per-call ``bridge_token`` and the signed
  stream upgrade are all exercised (and nobody else on the machine can open a session on it meanwhile).
- the caller: a :class:`~bridge.emulators.TwilioCaller` that POSTs the voice webhook, follows the TwiML to
  the stream and speaks the input on a paced phone clock, playing what the bridge sends as Twilio would.

Two taps watch the bridge without changing what it does: an ASGI middleware around the app (Quart's
``app.asgi_app = Middleware(app.asgi_app)`` pattern) counts and timestamps the stream's messages for the
progress line, and a recording proxy in front of the bridge's ``bridge_hop_latency_seconds`` histogram keeps
every sample the bridge observes (the histogram's buckets are too coarse for a p50), bounded by
:data:`MAX_HOP_SAMPLES` per direction. Everything else comes from the caller's record, the bridge's
metrics registry (one app, one call: its sums are exact) and the agent's session statistics.

What the user's environment may change: only ``LOG_FORMAT``, and, with ``agent_url`` (a real agent), the
``SPEAKR_*`` start settings and ``SPEAKR_API_KEY`` it needs. ``SPEAKR_WS_URL``, ``PUBLIC_URL``,
``TWILIO_AUTH_TOKEN`` and the limits are ignored: the demo is always the same offline loopback call.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import numpy as np
import orjson
import trio

import codec
from bridge._config import Config, Secret
from bridge._metrics import Metrics
from bridge._server import serve_in_process
from bridge._simulate import (
    SAFETY_MARGIN_S,
    SAMPLE_RATE,
    InputAudio,
    UsageError,
    default_hangup_s,
    load_input,
    ms,
    percentile,
    played_s,
)
from bridge._vad import TurnDetector, Utterance, frame_levels_dbfs, threshold_dbfs
from bridge.agents._settings import DeepgramSettings, OpenAISettings
from bridge.agents.speakr._local_agent import DEFAULT_SPEECH_PACE, LocalAgentServer, SessionStats
from bridge.app import STREAM_PATH, create_app
from bridge.emulators import CallRecord, TwilioCaller

__all__ = ["DEFAULT_OUTPUT", "DemoResult", "demo_command", "run_demo"]

log = logging.getLogger("bridge.demo")

DEFAULT_OUTPUT: Final = "speakr-bridge-demo.wav"
#: Raw hop-latency samples kept per direction (a 10-minute call uplinks ~19,000 frames).
MAX_HOP_SAMPLES: Final = 100_000
#: After the caller hangs up, how long the bridge and the agent get to finish the call.
FINISH_TIMEOUT_S: Final = 5.0
#: Progress refresh, wall seconds: an in-place line on a terminal, one line a second otherwise.
PROGRESS_TTY_S: Final = 0.1
PROGRESS_LINE_S: Final = 1.0
#: The agent must be heard for at least this long after the caller's first utterance to count as answering.
MIN_ANSWER_S: Final = 0.2

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


# ----------------------------------------------------------------------------------------------------- taps


class _HopChild:
    __slots__ = ("_child", "_samples")

    def __init__(self, child: Any, samples: list[float]) -> None:
        self._child = child
        self._samples = samples

    def observe(self, amount: float, *args: Any, **kwargs: Any) -> None:
        self._child.observe(amount, *args, **kwargs)
        if len(self._samples) < MAX_HOP_SAMPLES:
            self._samples.append(amount)


class _HopRecorder:
    """Stands in front of the hop-latency histogram: forwards every observation, keeps the raw value."""

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self.samples: dict[str, list[float]] = {}

    def labels(self, *values: str, **kwargs: str) -> _HopChild:
        direction = values[0] if values else next(iter(kwargs.values()), "")
        return _HopChild(self._histogram.labels(*values, **kwargs), self.samples.setdefault(direction, []))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._histogram, name)


class _StreamTap:
    """ASGI middleware: counts the Media Stream's messages each way, live (for the progress line)."""

    def __init__(self, app: Asgi) -> None:
        self._app = app
        self.start_wall_s: float | None = None
        self.media_in = 0
        self.marks_in = 0
        self.media_out = 0
        self.marks_out = 0
        self.clears_out = 0
        self.closed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or scope.get("path") != STREAM_PATH:
            await self._app(scope, receive, send)
            return

        async def tapped_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive" and message.get("text"):
                event = _event_of(message["text"])
                if event == "media":
                    self.media_in += 1
                elif event == "mark":
                    self.marks_in += 1
                elif event == "start" and self.start_wall_s is None:
                    self.start_wall_s = trio.current_time()
            elif message["type"] == "websocket.disconnect":
                self.closed = True
            return message

        async def tapped_send(message: Message) -> None:
            if message["type"] == "websocket.send" and message.get("text"):
                event = _event_of(message["text"])
                if event == "media":
                    self.media_out += 1
                elif event == "mark":
                    self.marks_out += 1
                elif event == "clear":
                    self.clears_out += 1
            await send(message)

        await self._app(scope, tapped_receive, tapped_send)


def _event_of(text: str) -> str | None:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    event = frame.get("event") if type(frame) is dict else None
    return event if type(event) is str else None


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _hop_buckets(metrics: Metrics) -> dict[str, tuple[float, float]]:
    """Per direction, the ``le`` bounds of the buckets where the hop histogram's p50 and p99 fall."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "bridge_hop_latency_seconds_bucket":
                le = float(sample.labels["le"])
                buckets.setdefault(sample.labels["direction"], []).append((le, sample.value))
    out: dict[str, tuple[float, float]] = {}
    for direction, cumulative in buckets.items():
        cumulative.sort()
        total = cumulative[-1][1]
        if total:
            p50, p99 = (next(le for le, n in cumulative if n >= q * total) for q in (0.5, 0.99))
            out[direction] = (p50, p99)
    return out


def _samples_by_label(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    """Every sample ``name{label=…}`` of the registry, by that label's value (non-zero ones)."""
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.value:
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


# ----------------------------------------------------------------------------------------------- progress


class _Progress:
    """Shows the call on ``out`` while it runs: phone time, frames each way, who speaks, barge-in events."""

    _EVENTS: Final = {
        "pause": "pause     the caller speaks over the agent: its audio is held",
        "continue": "continue  only a back-channel: the agent goes on where it was cut",
        "clear": "clear     a real interruption: the agent's answer is dropped",
    }

    def __init__(
        self, out: TextIO, tap: _StreamTap, metrics: Metrics, audio: InputAudio, speed: float
    ) -> None:
        self._out = out
        self._tap = tap
        self._metrics = metrics
        self._speed = speed
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._seen = {"pause": 0, "continue": 0, "clear": 0}
        self._drawn = False
        # Where the caller speaks, per 10 ms of phone time (the agent's own speech threshold).
        self._loud = frame_levels_dbfs(audio.pcm) >= threshold_dbfs(0.18)

    def _write(self, text: str, *, permanent: bool) -> None:
        if self._tty:
            self._out.write("\r" + text + "\x1b[K" + ("\n" if permanent else ""))
            self._drawn = not permanent
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def _caller_speaking(self, phone_s: float) -> bool:
        i = int(phone_s * 100)
        return bool(self._loud[max(0, i - 5) : i + 1].any()) if i < len(self._loud) else False

    def _line(self, phone_s: float) -> str:
        tap = self._tap
        agent = tap.marks_out > tap.marks_in
        caller = self._caller_speaking(phone_s)
        who = {
            (True, True): "both speaking",
            (True, False): "agent speaking",
            (False, True): "caller speaking",
            (False, False): "quiet",
        }[(agent, caller)]
        return (
            f"  {phone_s:6.2f} s  caller→bridge {tap.media_in:5d} frames  bridge→caller {tap.media_out:4d} "
            f"media {tap.marks_out:4d} marks  {who}"
        )

    def _phone_s(self) -> float | None:
        start = self._tap.start_wall_s
        return None if start is None else (trio.current_time() - start) * self._speed

    def poll(self, *, line: bool) -> None:
        phone_s = self._phone_s()
        if phone_s is None:
            return
        for name in self._seen:
            count = int(_sample(self._metrics, "bridge_barge_in_events_total", event=name))
            while self._seen[name] < count:
                self._seen[name] += 1
                self._write(f"  {phone_s:6.2f} s  {self._EVENTS[name]}", permanent=True)
        if line:
            self._write(self._line(phone_s), permanent=False)

    async def run(self) -> None:
        interval = PROGRESS_TTY_S if self._tty else PROGRESS_TTY_S / 2
        every = 1 if self._tty else max(1, round(PROGRESS_LINE_S / interval))
        n = 0
        while True:  # cancelled when the call ends
            await trio.sleep(interval)
            n += 1
            self.poll(line=n % every == 0)

    def finish(self) -> None:
        self.poll(line=False)
        if self._drawn:
            self._out.write("\r\x1b[K")
            self._out.flush()


# ------------------------------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True, repr=False)
class DemoResult:
    """How the demo call went: the summary's figures, the health verdict and the raw record.

    Attributes:
        healthy: connected, heard the agent, the agent answered, the expected barge-in events (bundled sample,
            built-in agent), no protocol errors, ended by the caller hanging up; ``problems`` says what not.
        duration_s: phone time from Twilio ``start`` to the hang-up.
        frames: messages each way: ``twilio_in`` (caller's 20 ms frames), ``speakr_out`` (512-byte frames to
            the agent), ``speakr_in`` (agent media), ``twilio_out`` (media to the caller).
        barge_in: pause/continue/clear events the bridge received.
        marks: ``sent`` (by the bridge), ``echoed`` (by the phone), and the bridge's own count of returned
            marks by outcome (``played``, ``cleared``, …) where its metrics have them.
        uplink_hop_s, downlink_hop_s: every hop latency the bridge measured (receive → forward), seconds.
        hop_histogram: per direction, the upper bounds of the histogram buckets holding p50 and p99: what
            the summary shows should the raw samples be missing (the bridge measuring elsewhere).
        start_to_ready_s: Twilio ``start`` to the agent's ``ready``, as the bridge measured it.
        agent: the built-in agent's session statistics (``None`` with an external agent).
    """

    healthy: bool
    problems: tuple[str, ...]
    output_path: Path
    input: InputAudio
    agent_url: str
    local_agent: bool
    agent_name: str
    speed: float
    hangup_s: float
    duration_s: float
    call_sid: str
    outcome: str
    bridge_end_reasons: dict[str, float]
    frames: dict[str, int]
    heard_s: float
    first_audio_s: float | None
    marks: dict[str, int]
    barge_in: dict[str, int]
    protocol_errors: int
    uplink_hop_s: tuple[float, ...]
    downlink_hop_s: tuple[float, ...]
    hop_histogram: dict[str, tuple[float, float]]
    start_to_ready_s: float | None
    codec_implementation: str
    max_tick_lateness_s: float
    agent: SessionStats | None
    record: CallRecord

    def __repr__(self) -> str:
        output = str(self.output_path)
        return f"DemoResult(healthy={self.healthy!r}, problems={self.problems!r}, output={output!r})"

    def summary(self) -> str:
        """The printed summary (stdout)."""
        f, m, b = self.frames, self.marks, self.barge_in
        src = self.input
        name = self.agent_name
        if name != "speakr":
            agent = f"{name} (the bundled offline emulator) at {self.agent_url}"
        else:
            kind = "built-in local echo agent" if self.local_agent else "external agent"
            agent = f"{kind} at {self.agent_url}"
        turns = f"; agent turns {self.agent.turns}" if self.agent is not None else ""
        ends = ", ".join(f"{k}" for k in sorted(self.bridge_end_reasons)) or "-"
        first = "-" if self.first_audio_s is None else f"{self.first_audio_s:.2f} s"

        def hop(samples: tuple[float, ...], direction: str) -> str:
            if samples:
                p50, p99 = percentile(samples, 50), percentile(samples, 99)
                return f"p50 {ms(p50)}  p99 {ms(p99)}  (n={len(samples)})"
            if direction in self.hop_histogram:
                p50, p99 = self.hop_histogram[direction]
                return f"p50 ≤ {ms(p50)}  p99 ≤ {ms(p99)}  (histogram buckets, no raw samples)"
            return "not measured"

        rows = [
            (
                "input",
                f"{src.source} ({src.source_rate} Hz, {src.source_channels} ch) → {src.duration_s:.2f} s "
                f"at {SAMPLE_RATE} Hz",
            ),
            ("agent", agent),
            (
                "call",
                f"{self.call_sid}: {self.duration_s:.2f} s of phone time at {self.speed:g}x, "
                f"{'caller hung up' if self.outcome == 'hung_up' else self.outcome} "
                f"(bridge: {ends})",
            ),
            (
                "frames",
                f"caller→bridge {f['twilio_in']} (20 ms)  bridge→agent {f[name + '_out']} "
                f"({'32' if name == 'speakr' else '20'} ms)  "
                f"agent→bridge {f[name + '_in']}  bridge→caller {f['twilio_out']}",
            ),
            ("heard", f"{self.heard_s:.2f} s of agent audio played, the first at {first}"),
            (
                "marks",
                f"sent {m['sent']}, echoed {m['echoed']}"
                + (
                    " (bridge: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(m.items()) if k not in ("sent", "echoed"))
                    + ")"
                    if len(m) > 2
                    else ""
                ),
            ),
            ("barge-in", f"pause {b['pause']}, continue {b['continue']}, clear {b['clear']}{turns}"),
            ("uplink hop", hop(self.uplink_hop_s, "uplink") + "  Twilio media in → agent frame out"),
            ("downlink hop", hop(self.downlink_hop_s, "downlink") + "  agent audio in → Twilio media out"),
            ("start → ready", ms(self.start_to_ready_s)),
            ("protocol errors", str(self.protocol_errors)),
            ("codec", self.codec_implementation),
            (
                "recording",
                f"{self.output_path} (stereo 16-bit {SAMPLE_RATE} Hz: left caller, right what the "
                "caller heard)",
            ),
            ("result", "healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.problems)),
        ]
        width = max(len(k) for k, _ in rows)
        return "speakr-bridge demo: one call on loopback\n" + "\n".join(
            f"  {k:<{width}}  {v}" for k, v in rows
        )


def _first_utterance_end_s(audio: InputAudio) -> float | None:
    """Phone time at which the built-in agent would take the caller's first turn as finished."""
    detector = TurnDetector()
    for event in detector.feed(audio.pcm + bytes(4 * SAMPLE_RATE)):
        if isinstance(event, Utterance):
            return event.time_s
    return None


def _check(
    rec: CallRecord,
    audio: InputAudio,
    barge_in: dict[str, int],
    protocol_errors: int,
    end_reasons: dict[str, float],
    agent: SessionStats | None,
    heard_s: float,
) -> list[str]:
    problems: list[str] = []
    if not rec.connected:
        problems.append(f"the call never connected ({rec.outcome}: {rec.error or 'no detail'})")
        return problems
    if rec.outcome != "hung_up":
        close = f"{rec.close_code} {rec.close_reason or ''}".rstrip()
        problems.append(f"the call ended unexpectedly: {rec.outcome} (close {close})")
    if "twilio_stop" not in end_reasons:
        problems.append(f"the bridge ended the call for another reason: {', '.join(end_reasons) or 'none'}")
    if rec.first_audio_heard_s is None or heard_s <= 0:
        problems.append("the caller heard nothing")
    first_turn = _first_utterance_end_s(audio)
    if first_turn is None:
        problems.append("no speech found in the input: nothing for the agent to answer")
    else:
        heard = np.frombuffer(rec.heard_pcm, dtype="<i2")[int(first_turn * SAMPLE_RATE) :]
        if np.count_nonzero(heard) < MIN_ANSWER_S * SAMPLE_RATE:
            problems.append(
                f"the agent never answered (nothing heard after the caller's turn at {first_turn:.1f} s)"
            )
    if agent is not None and agent.turns < 1:
        problems.append("the agent took no turn")
    if audio.bundled and agent is not None:
        if (
            barge_in["continue"] < 1
            or barge_in["clear"] < 1
            or barge_in["pause"] < barge_in["continue"] + barge_in["clear"]
        ):
            problems.append(
                "the bundled sample should give pause→continue (the 'Okay.') and pause→clear (the "
                f"interruption), got pause {barge_in['pause']}, continue {barge_in['continue']}, "
                f"clear {barge_in['clear']}"
            )
    if protocol_errors:
        problems.append(f"{protocol_errors} protocol error(s)")
    return problems


# ---------------------------------------------------------------------------------------------------- run


def demo_config(
    env: Config | None,
    agent_url: str,
    twilio_auth_token: str,
    *,
    external_agent: bool,
    agent: str = "speakr",
    backend: Mapping[str, Any] | None = None,
) -> Config:
    """The demo bridge's configuration: defaults, what the module docstring allows from ``env``, loopback.

    ``agent`` picks the backend; ``backend`` holds its settings (pointing at its emulator) for other backends.
    """
    values: dict[str, Any] = {
        "speakr_ws_url": agent_url,
        "twilio_auth_token": Secret(twilio_auth_token),
        "agent": agent,
        **(backend or {}),
    }
    if env is not None:
        values["log_format"] = env.log_format
        if external_agent:
            for name in (
                "speakr_api_key",
                "voice_id",
                "system_prompt",
                "temperature",
                "threshold",
                "silence_duration_ms",
                "prefix_padding",
                "agent_connect_timeout_s",
                "agent_ready_timeout_s",
            ):
                values[name] = getattr(env, name)
    return dataclasses.replace(Config(), **values)


async def start_emulated_backend(
    nursery: trio.Nursery, name: str, speed: float
) -> tuple[dict[str, Any], str]:
    """Start the bundled emulator of backend ``name`` on loopback: the Config fields that point the bridge at
    it, and its URL (for the summary)."""
    if name == "openai":
        from bridge.agents.openai import DEFAULT_API_KEY as OPENAI_KEY
        from bridge.agents.openai import OpenAIRealtimeServer

        server = OpenAIRealtimeServer()
        await nursery.start(server.serve)
        return {"openai": OpenAISettings(url=server.url, api_key=Secret(OPENAI_KEY))}, server.url
    if name == "deepgram":
        from bridge.agents.deepgram import DEFAULT_API_KEY as DEEPGRAM_KEY
        from bridge.agents.deepgram import DeepgramAgentServer

        dg = DeepgramAgentServer()
        await nursery.start(dg.serve)
        return {"deepgram": DeepgramSettings(url=dg.url, api_key=Secret(DEEPGRAM_KEY))}, dg.url
    if name == "cascade":
        from bridge.agents.cascade import demo_backend

        fields, url = await demo_backend(nursery, speed)
        return fields, url
    raise UsageError(f"--agent must be speakr, openai, deepgram or cascade, got {name!r}")


def _check_arguments(output_path: str | os.PathLike[str], agent_url: str | None, speed: float) -> Path:
    """Validates what ``run_demo`` is given; returns the output path, absolute."""
    if not (math.isfinite(speed) and 0 < speed <= 50):
        raise UsageError(f"--speed must be more than 0 and at most 50, got {speed!r}")
    if agent_url is not None:
        parts = urlsplit(agent_url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise UsageError(f"--agent-url must be a ws:// or wss:// URL with a host, got {agent_url!r}")
    output = Path(output_path).resolve()
    if output.is_dir():
        raise UsageError(f"--output {str(output_path)!r} is a directory; give a file name")
    if not output.parent.is_dir():
        raise UsageError(f"--output: directory {str(output.parent)!r} does not exist")
    return output


async def run_demo(
    *,
    input_path: str | os.PathLike[str] | None = None,
    audio: InputAudio | None = None,
    output_path: str | os.PathLike[str] = DEFAULT_OUTPUT,
    agent_url: str | None = None,
    speed: float = 1.0,
    progress: TextIO | None = None,
    env_config: Config | None = None,
    log_level: int | None = None,
    agent_name: str = "speakr",
) -> DemoResult:
    """Runs one loopback call: the built-in agent (or ``agent_url``), the bridge, a caller speaking the input.

    Args:
        input_path: a 16-bit PCM WAV of any common rate, mono or stereo; ``None``: the bundled sample.
        audio: the input, already loaded (:func:`~bridge._simulate.load_input`); overrides ``input_path``.
        output_path: where the call is written as a stereo WAV (left caller, right what it heard).
        agent_url: a Speakr-protocol agent to use instead of the built-in one.
        agent_name: the backend that answers: ``speakr`` (the built-in agent or ``agent_url``), or ``openai``,
            ``deepgram``, ``cascade`` against their bundled emulators (:func:`start_emulated_backend`).
        speed: phone clock rate; 1.0 is real time. The built-in agent's pace follows it.
        progress: where the live progress goes (``None``: nowhere).
        env_config: the user's configuration; only the parts the module docstring names are used.
        log_level: level for the ``bridge`` loggers during the call (the app sets INFO).

    Raises:
        UsageError: a bad input file, output path, agent URL or speed (nothing was started).
    """
    output = _check_arguments(output_path, agent_url, speed)
    if audio is None:
        audio = load_input(input_path)
    hangup_s = default_hangup_s(audio)
    token = secrets.token_urlsafe(24)
    agent: LocalAgentServer | None = None
    async with trio.open_nursery() as nursery:
        backend: dict[str, Any] = {}
        if agent_name != "speakr":
            backend, emulator_url = await start_emulated_backend(nursery, agent_name, speed)
            agent_url = emulator_url
        elif agent_url is None:
            agent = LocalAgentServer(speech_pace=DEFAULT_SPEECH_PACE * speed)
            await nursery.start(agent.serve)
        url = agent.url if agent is not None else agent_url
        assert url is not None
        app = create_app(
            demo_config(
                env_config, url if agent_name == "speakr" else "ws://127.0.0.1:9/unused", token,
                external_agent=agent is None and agent_name == "speakr", agent=agent_name, backend=backend,
            )
        )
        if log_level is not None:
            logging.getLogger("bridge").setLevel(log_level)
        state = app.extensions["bridge"]
        metrics: Metrics = state.metrics
        hops = _HopRecorder(metrics.hop_latency)
        metrics.hop_latency = hops  # type: ignore[assignment]
        tap = _StreamTap(app.asgi_app)  # type: ignore[arg-type]
        app.asgi_app = tap  # type: ignore[method-assign,assignment]
        base: str = await nursery.start(partial(serve_in_process, app))
        shown = _Progress(progress, tap, metrics, audio, speed) if progress is not None else None
        if shown is not None:
            nursery.start_soon(shown.run)
        caller = TwilioCaller(
            webhook_url=base + "/twilio/voice",
            auth_token=token,
            audio=audio.pcm,
            speed=speed,
            hangup_after_s=hangup_s,
            max_call_s=hangup_s + SAFETY_MARGIN_S,
        )
        rec = await caller.run()
        with trio.move_on_after(FINISH_TIMEOUT_S):  # the bridge and the agent wind the call down
            # BridgeState has no per-call "ended" event outside a drain; the wait is bounded just above.
            while state.active_calls:  # noqa: ASYNC110
                await trio.sleep(0.01)
            if agent is not None and agent.connections:
                await agent.wait_sessions_ended(1)
        if shown is not None:
            shown.finish()
        nursery.cancel_scope.cancel()
    try:
        rec.stereo_wav(str(output))
        write_error = None
    except OSError as exc:
        write_error = f"could not write the recording to {output}: {exc.strerror or exc}"
    return _result(
        rec, audio, output, url, agent, speed, hangup_s, metrics, hops, tap, write_error, agent_name
    )


def _result(
    rec: CallRecord,
    audio: InputAudio,
    output: Path,
    agent_url: str,
    agent: LocalAgentServer | None,
    speed: float,
    hangup_s: float,
    metrics: Metrics,
    hops: _HopRecorder,
    tap: _StreamTap,
    write_error: str | None,
    agent_name: str = "speakr",
) -> DemoResult:
    session = agent.recent_sessions[-1] if agent is not None and agent.recent_sessions else None
    frames = {
        d: int(_sample(metrics, "bridge_frames_total", direction=d))
        for d in ("twilio_in", f"{agent_name}_out", f"{agent_name}_in", "twilio_out")
    }
    barge_in = {
        e: int(_sample(metrics, "bridge_barge_in_events_total", event=e))
        for e in ("pause", "continue", "clear")
    }
    mark_outcomes = _samples_by_label(metrics, "bridge_marks_total", "outcome")
    marks = {"sent": tap.marks_out, "echoed": rec.counters.marks_echoed}
    marks.update({outcome: int(n) for outcome, n in mark_outcomes.items()})  # the bridge's played/cleared
    bridge_errors = int(sum(_samples_by_label(metrics, "bridge_protocol_errors_total", "kind").values()))
    agent_errors = sum(session.protocol_errors.values()) if session is not None else 0
    protocol_errors = bridge_errors + rec.counters.protocol_errors + agent_errors
    end_reasons = _samples_by_label(metrics, "bridge_calls_ended_total", "reason")
    ready_count = _sample(metrics, "bridge_agent_ready_seconds_count")
    start_to_ready = _sample(metrics, "bridge_agent_ready_seconds_sum") / ready_count if ready_count else None
    heard_s = played_s(rec)
    problems = _check(rec, audio, barge_in, protocol_errors, end_reasons, session, heard_s)
    if write_error is not None:
        problems.append(write_error)
    return DemoResult(
        healthy=not problems,
        problems=tuple(problems),
        output_path=output,
        input=audio,
        agent_url=agent_url,
        local_agent=agent is not None,
        agent_name=agent_name,
        speed=speed,
        hangup_s=hangup_s,
        duration_s=rec.duration_s,
        call_sid=rec.call_sid,
        outcome=rec.outcome,
        bridge_end_reasons=end_reasons,
        frames=frames,
        heard_s=heard_s,
        first_audio_s=rec.first_audio_heard_s,
        marks=marks,
        barge_in=barge_in,
        protocol_errors=protocol_errors,
        uplink_hop_s=tuple(hops.samples.get("uplink", ())),
        downlink_hop_s=tuple(hops.samples.get("downlink", ())),
        hop_histogram=_hop_buckets(metrics),
        start_to_ready_s=start_to_ready,
        codec_implementation=codec.IMPLEMENTATION,
        max_tick_lateness_s=rec.max_tick_lateness_s,
        agent=session,
        record=rec,
    )


def demo_command(
    *,
    input_path: str | None,
    output_path: str,
    agent_url: str | None,
    agent: str = "speakr",
    speed: float,
    quiet: bool,
    env_config: Config,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """``speakr-bridge demo``: prints the summary; 0 for a healthy call, 1 with a reason line otherwise.

    Raises:
        UsageError: bad arguments (the command line exits with 2).
    """
    _check_arguments(output_path, agent_url, speed)
    audio = load_input(input_path)
    logging.getLogger("bridge").setLevel(logging.WARNING)  # the progress line, not INFO logs, shows the call
    if not quiet:
        what = "the bundled sample" if input_path is None else input_path
        print(
            f"speakr-bridge demo: calling the bridge on loopback; the caller says {what} "
            f"({'real time' if speed == 1 else f'{speed:g}x real time'})",
            file=err,
            flush=True,
        )
    result = trio.run(
        partial(
            run_demo,
            audio=audio,
            output_path=output_path,
            agent_url=agent_url,
            agent_name=agent,
            speed=speed,
            progress=None if quiet else err,
            env_config=env_config,
            log_level=logging.WARNING,
        )
    )
    print(result.summary(), file=out)
    if not result.healthy:
        print(f"demo: unhealthy call: {result.problems[0]}", file=out)
        return 1
    return 0
