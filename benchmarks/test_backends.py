"""Every backend side by side: server CPU per call-second and hop latency (Speakr, OpenAI, Deepgram, cascade).

Run: ``pytest benchmarks`` (or ``pytest benchmarks/test_backends.py -s`` to see each run as it is measured;
about four minutes). Issue 10: the passthrough backends (OpenAI Realtime and Deepgram Voice Agent, μ-law
both ways) must cost less CPU per call-second than the Speakr path (PCM16 8 kHz up, 24 kHz down: decoded,
re-framed and resampled), since nothing is transcoded.

How: for each backend, a fresh ``python -m bridge serve --workers 1`` configured for it (``AGENT``, the
backend's URL pointing at the lean agent of ``_load.py`` speaking that backend's wire) and the same N
concurrent real-time calls from the lean load driver: callers talk all the time; the agent speaks 2 s of
every 4 in 100 ms messages with a barge-in in about 40 % of its turns (Speakr: ``pause`` then ``continue``
or ``clear``; OpenAI ``speech_started``, Deepgram ``UserStartedSpeaking``: the service cancels its answer).
Server CPU (the process tree, from /proc) over the measured window / (calls x window seconds) is the CPU per
call-second; the uplink hop (caller frame sent -> the agent has the audio it completed) and the downlink hop
(agent message sent -> the caller has its ``media``) are timed on one clock. Every (N, repetition) round
runs the three backends one after the other, in an order rotated every round, so machine noise falls on all
of them alike; the figures are the medians over the repetitions, with their spread (min-max), and each
backend's ratio to Speakr is the median of the per-round ratios (same round, same noise).

The cascade (``AGENT=cascade``, issue 12) is the fourth backend of each round's rotation, with a workload of
its own since our VAD must take turns: the callers speak in bursts (``CASCADE_PROFILE``), the three
OpenAI-compatible endpoints run in another process (``_cascade_service.py``: its CPU is not the bridge's),
and its table says how much of the bridge's CPU per call-second the VAD alone is (``vad_cpu_per_call_s``, a
micro-benchmark of ``TurnDetector.feed`` on the same caller audio). The other backends' runs are unchanged.

Asserted: every call of every run was set up, stayed up and lost no caller audio, with no protocol error
on either side. The CPU ratios are reported, not asserted: wall-clock CPU on a shared machine swings by
more than the difference between backends, so "a passthrough backend costs less than Speakr" is asserted
on instruction counts instead (``benchmarks/test_instructions.py``).
The table goes to ``benchmarks/results/backends.md``; the lean agents are checked against the bridge's own
client side of each wire first (no server needed).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trio_websocket
from _harness import (
    ServerProcess,
    bridge_argv,
    free_port,
    http_get,
    machine_cpu_s,
    machine_line,
    md_table,
    parse_prometheus,
    percentile,
    raise_fd_limit,
    write_result,
)
from _load import (
    AGENTLESS,
    PROTOCOLS,
    LeanAgentServer,
    LeanCaller,
    LoadProfile,
    LoadResult,
    LoadRun,
    drive_load,
)

import codec
from bridge.agents.deepgram import _client_wire as dg_client
from bridge.agents.deepgram import _wire as dg_wire
from bridge.agents.openai import _wire as oai_wire

#: Concurrent calls per run, and rounds (each round runs every backend once at every N).
CALLS: Final = (10, 50)
ROUNDS: Final = 3
PROFILE: Final = LoadProfile(settle_s=1.0, settle_max_s=4.0, window_s=6.0)
#: Every backend measured, in the rotation; the cascade (no agent socket) has a workload of its own.
BACKENDS: Final = PROTOCOLS + AGENTLESS
#: The cascade's callers speak in bursts (1.5-2 s of speech-like noise, then 3 s of silence) so that our VAD
#: takes turns; the answers come from ``_cascade_service.py`` in a process of its own.
BURSTS: Final = (1.5, 2.0, 3.0)
CASCADE_PROFILE: Final = LoadProfile(settle_s=3.0, settle_max_s=3.0, window_s=6.0, speak_s=0.0,
                                     caller_bursts=BURSTS)
RUN_TIMEOUT_S: Final = 60.0
COMMAND: Final = "pytest benchmarks/test_backends.py -s"
NAMES: Final = {"speakr": "Speakr (PCM16, resampled)", "openai": "OpenAI Realtime (μ-law)",
                "deepgram": "Deepgram Voice Agent (μ-law)", "cascade": "Cascade (our VAD, STT → LLM → TTS)"}


#: What the runs say beyond the table (measured on the commits named).
NOTES: Final = """\
## What makes the passthroughs cheaper

Both passthrough legs send the agent one message per 32 ms of caller audio (256 bytes of μ-law), the cadence
of Speakr's 512-byte PCM16 frames; what they save per agent message (no base64 of 4.8 kB of PCM, no
resampler: 1.1 M against 1.6 M instructions) is then a saving per call-second too (instruction counts:
`instructions.md`, OpenAI -6.0 %, Deepgram -7.8 %). Their first version sent one message per 20 ms Twilio
frame (`uplink_frame_bytes=160`): 50 agent sends a second instead of 31.25, and a send through
trio-websocket is most of an uplink message's cost, so they cost +4.4 % and +2.5 % more than Speakr. The
wall-clock CPU above follows the instruction counts where the machine was quiet (the "other processes"
column); where it was not, the instruction counts are the figure to trust.
"""


@dataclass(slots=True)
class Run:
    """One backend, one N, one round."""

    protocol: str
    calls: int
    round: int
    result: LoadResult
    server_cpu_s: float
    others_cpu_pct: float
    wall_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # the bridge's /metrics after the drain

    @property
    def cpu_per_call_s(self) -> float:
        """Server CPU seconds per call-second (the window's)."""
        r = self.result
        return self.server_cpu_s / (r.calls * r.window_s) if r.window_s else math.nan

    def hop(self, direction: str, q: float) -> float:
        samples = self.result.uplink_s if direction == "up" else self.result.downlink_s
        return percentile(samples, q)

    def why_not(self) -> str:
        """Empty when the run carried every call; else the first reason it did not."""
        r = self.result
        if r.ready < r.calls:
            return f"set-up: {r.ready}/{r.calls} ready {r.connect_errors[:2]}"
        if r.closed_early:
            return f"{r.closed_early} calls closed by the server"
        if self.protocol in AGENTLESS:
            if r.protocol_errors:
                return f"{r.protocol_errors} protocol errors caller side"
            if r.callers_heard < r.calls:
                return f"only {r.callers_heard}/{r.calls} callers heard an answer in the window"
            errors = sum(v for k, v in self.metrics.items() if k.startswith("bridge_cascade_errors_total"))
            if errors or not self.metrics:
                return f"cascade errors {errors:g}" if self.metrics else "no /metrics scrape"
            return ""
        if r.uplink_missing_bytes:
            return f"uplink lost {r.uplink_missing_bytes} of {r.uplink_expected_bytes} bytes"
        if r.protocol_errors or r.agent_protocol_errors:
            return f"protocol errors: {r.protocol_errors} caller side, {r.agent_protocol_errors} agent side"
        if not r.uplink_s or not r.downlink_s:
            return "no latency samples"
        return ""


class CascadeService:
    """``_cascade_service.py`` in a process of its own (its CPU is not the bridge's); stops when its stdin
    closes."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        repo = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(workdir / "cascade-service.log", "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_cascade_service.py"))], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
        )

    async def url(self, timeout_s: float = 20.0) -> str:
        assert self.proc.stdout is not None
        with trio.fail_after(timeout_s):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        if not line.startswith(b"http://"):
            raise RuntimeError(f"the cascade service did not start: {line!r}")
        return line.decode().strip()

    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3.0)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        finally:
            self._log.close()


async def _one_run(protocol: str, calls: int, round_: int, workdir: Path) -> Run:
    if protocol in AGENTLESS:
        return await _cascade_run(calls, round_, workdir)
    agent = LeanAgentServer(protocol=protocol)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        port = free_port()
        server = ServerProcess(
            bridge_argv(port), port=port, env=agent.bridge_env(), workdir=workdir,
            name=f"{protocol}-{calls}-{round_}",
        )
        try:
            await server.wait_ready()
            marks: dict[str, float] = {}

            def probe() -> dict[str, float]:
                busy, _ = machine_cpu_s()
                return {"server": server.cpu_s(), "busy": busy, "t": time.perf_counter()}

            t0 = time.perf_counter()
            with trio.fail_after(RUN_TIMEOUT_S):
                result = await drive_load("127.0.0.1", port, agent, calls, PROFILE, probe=probe)
            b, e = result.probe_begin, result.probe_end
            server_cpu = e["server"] - b["server"]
            window = e["t"] - b["t"]
            # The rest of the machine: all busy CPU minus this server and this driver.
            others = (e["busy"] - b["busy"]) - server_cpu - result.driver_cpu_s
            marks["others_pct"] = 100 * max(0.0, others) / window if window else math.nan
            return Run(protocol, calls, round_, result, server_cpu, marks["others_pct"],
                       time.perf_counter() - t0)
        finally:
            server.stop()
            nursery.cancel_scope.cancel()


async def _cascade_run(calls: int, round_: int, workdir: Path) -> Run:
    """The cascade: the bridge under test with ``AGENT=cascade``, its endpoints in another process."""
    t0 = time.perf_counter()
    service = CascadeService(workdir)
    try:
        agent = LeanAgentServer(protocol="cascade", cascade_url=await service.url())
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve)
            port = free_port()
            server = ServerProcess(
                bridge_argv(port), port=port, env=agent.bridge_env(), workdir=workdir,
                name=f"cascade-{calls}-{round_}",
            )
            try:
                await server.wait_ready()

                def probe() -> dict[str, float]:
                    busy, _ = machine_cpu_s()
                    return {"server": server.cpu_s(), "busy": busy, "t": time.perf_counter()}

                async def scrape() -> dict[str, Any]:
                    status, body = await http_get("127.0.0.1", port, "/metrics", timeout_s=5.0)
                    return parse_prometheus(body.decode()) if status == 200 else {}

                with trio.fail_after(RUN_TIMEOUT_S):
                    result = await drive_load("127.0.0.1", port, agent, calls, CASCADE_PROFILE, probe=probe,
                                              after_drain=scrape)
                b, e = result.probe_begin, result.probe_end
                server_cpu = e["server"] - b["server"]
                window = e["t"] - b["t"]
                others = (e["busy"] - b["busy"]) - server_cpu - result.driver_cpu_s
                others_pct = 100 * max(0.0, others) / window if window else math.nan
                return Run("cascade", calls, round_, result, server_cpu, others_pct, time.perf_counter() - t0,
                           dict(result.after_drain))
            finally:
                server.stop()
                nursery.cancel_scope.cancel()
    finally:
        service.stop()


async def _measure(workdir: Path, log: Callable[[str], None]) -> list[Run]:
    runs: list[Run] = []
    for round_ in range(ROUNDS):
        for calls in CALLS:
            k = round_ % len(BACKENDS)
            for protocol in BACKENDS[k:] + BACKENDS[:k]:  # rotated: no backend is always first
                run = await _one_run(protocol, calls, round_, workdir / f"r{round_}")
                runs.append(run)
                r = run.result
                if protocol in AGENTLESS:
                    log(
                        f"round {round_} {protocol:8} N={calls:3}: {1e3 * run.cpu_per_call_s:6.2f} ms CPU per"
                        f" call-second; {r.twilio_media} media, {r.twilio_clears} clears, {r.caller_bursts} "
                        f"bursts, {r.callers_heard} callers heard; others {run.others_cpu_pct:.0f} %; "
                        f"{run.why_not() or 'carried'} ({run.wall_s:.0f} s)"
                    )
                    continue
                up = f"{_ms(run.hop('up', 50))}/{_ms(run.hop('up', 99))}"
                down = f"{_ms(run.hop('down', 50))}/{_ms(run.hop('down', 99))}"
                log(
                    f"round {round_} {protocol:8} N={calls:3}: {1e3 * run.cpu_per_call_s:6.2f} ms CPU per "
                    f"call-second; hops p50/p99 up {up} ms, down {down} ms; others "
                    f"{run.others_cpu_pct:.0f} %; {r.summary()} ({run.wall_s:.0f} s)"
                )
    return runs


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{1e3 * x:.2f}"


# ------------------------------------------------------------------------------------ the VAD alone

#: The VAD micro-benchmark: this many runs, each one call's caller audio for this long.
VAD_RUNS: Final = 41
VAD_AUDIO_S: Final = 60.0


def vad_cpu_per_call_s() -> list[float]:
    """CPU seconds per call-second of our VAD alone (``TurnDetector.feed`` as the cascade leg calls it),
    one figure per run.

    The audio is the cascade runs' caller audio (the lean caller's own bursts, μ-law decoded to PCM16 in
    20 ms frames, as the leg receives it); ``agent_speaking`` follows the VAD's decisions as the leg's
    answer does: from each end of turn for the answer's length (1.6 s, every 4th 5.9 s), until a barge-in.
    The settings are the leg's defaults (threshold 0.18, silence 1000 ms, prefix 0.7 s, early end 400 ms).
    """
    from _cascade_service import LONG_EVERY, LONG_REPLY, SHORT_REPLY

    from bridge._vad import BargeIn, TurnDetector, Utterance, VadSettings
    from bridge.agents.cascade import speech_ms

    run = LoadRun(1, CASCADE_PROFILE)
    caller = LeanCaller(run, 3)
    frames = [codec.ulaw_decode(caller._next_frame(k)) for k in range(round(VAD_AUDIO_S / 0.02))]
    answer_frames = [speech_ms(SHORT_REPLY) // 20, speech_ms(LONG_REPLY) // 20]
    settings = VadSettings(threshold=0.18, silence_ms=1000, prefix_padding_s=0.7, early_silence_ms=400)
    out = []
    for _ in range(VAD_RUNS):
        vad = TurnDetector(settings)
        speaking_left, answers = 0, 0
        t0 = time.process_time()
        for frame in frames:
            for event in vad.feed(frame, agent_speaking=speaking_left > 0):
                if type(event) is Utterance:
                    answers += 1
                    speaking_left = answer_frames[answers % LONG_EVERY == 0]
                elif type(event) is BargeIn:
                    speaking_left = 0
            speaking_left = max(0, speaking_left - 1)
        out.append((time.process_time() - t0) / VAD_AUDIO_S)
    return out


def _median_spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio(runs: list[Run], protocol: str, calls: int) -> list[float]:
    """Per round: this backend's CPU per call-second / Speakr's (same round, same N)."""
    out = []
    for round_ in range(ROUNDS):
        mine = [r for r in runs if (r.protocol, r.calls, r.round) == (protocol, calls, round_)]
        base = [r for r in runs if (r.protocol, r.calls, r.round) == ("speakr", calls, round_)]
        if mine and base and base[0].cpu_per_call_s > 0:
            out.append(mine[0].cpu_per_call_s / base[0].cpu_per_call_s)
    return out


def report(runs: list[Run], vad: list[float]) -> str:
    rows = []
    for calls in CALLS:
        for protocol in PROTOCOLS:
            mine = [r for r in runs if r.protocol == protocol and r.calls == calls]
            cpu = [1e3 * r.cpu_per_call_s for r in mine]
            rows.append([
                NAMES[protocol], calls, _median_spread(cpu),
                f"{statistics.median(ratio(runs, protocol, calls)):.2f}" if protocol != "speakr" else "1",
                "/".join(_ms(statistics.median([r.hop("up", q) for r in mine])) for q in (50, 99)),
                "/".join(_ms(statistics.median([r.hop("down", q) for r in mine])) for q in (50, 99)),
                f"{statistics.median([r.others_cpu_pct for r in mine]):.0f} %",
                "yes" if all(not r.why_not() for r in mine) else "no",
            ])
    text = md_table(
        ["backend", "calls", "server CPU ms per call-second, median (min-max)", "vs Speakr",
         "uplink hop p50/p99 ms", "downlink hop p50/p99 ms", "other processes", "all carried"],
        rows, right=[False] + [True] * 7,
    )
    text += (
        f"\n\n{ROUNDS} rounds; in each, every backend at every N, the backends in a rotated order; medians "
        "over the rounds (spread: min-max; the hop percentiles are medians of each run's percentile; "
        "\"vs Speakr\" is the median of the per-round ratios). One fresh "
        f"`python -m bridge serve --workers 1` per run; window {PROFILE.window_s:g} s after ramp and "
        "settle; callers talk all the time, the agent speaks 2 s of every 4 in 100 ms messages, a "
        "barge-in in ~40 % of its turns. \"other processes\": CPU the rest of the machine "
        "used during the window (noise).\n\n"
        f"Command: `{COMMAND}`. {machine_line()}.\n\n"
        "Every run:\n\n"
        + md_table(
            ["round", "backend", "calls", "CPU ms per call-second", "uplink p50/p99", "downlink p50/p99",
             "agent messages", "Twilio media", "barge-ins", "other processes"],
            [
                [r.round, r.protocol, r.calls, f"{1e3 * r.cpu_per_call_s:.2f}",
                 f"{_ms(r.hop('up', 50))}/{_ms(r.hop('up', 99))}",
                 f"{_ms(r.hop('down', 50))}/{_ms(r.hop('down', 99))}",
                 "-" if r.protocol in AGENTLESS else r.result.agent_media, r.result.twilio_media,
                 "-" if r.protocol in AGENTLESS else r.result.barge_ins, f"{r.others_cpu_pct:.0f} %"]
                for r in runs
            ],
            right=[True, False] + [True] * 8,
        )
    )
    return text + "\n\n" + cascade_report(runs, vad) + "\n\n" + NOTES


def cascade_report(runs: list[Run], vad: list[float]) -> str:
    """The cascade's table: its own workload, the same rounds, N and window as the others."""
    vad_ms = 1e3 * statistics.median(vad)
    rows = []
    for calls in CALLS:
        mine = [r for r in runs if r.protocol == "cascade" and r.calls == calls]
        if not mine:
            continue
        cpu = [1e3 * r.cpu_per_call_s for r in mine]

        def total(r: Run, key: str) -> int:
            return round(r.metrics.get(key, 0.0))

        rows.append([
            calls, _median_spread(cpu), f"{statistics.median(ratio(runs, 'cascade', calls)):.2f}",
            f"{vad_ms:.3f} ({100 * vad_ms / statistics.median(cpu):.1f} %)",
            statistics.median([r.result.caller_bursts for r in mine]),
            statistics.median([r.result.twilio_media for r in mine]),
            statistics.median([r.result.twilio_clears for r in mine]),
            statistics.median([total(r, 'bridge_turn_latency_seconds_count{agent="cascade",source="bridge"}')
                               for r in mine]),
            statistics.median([total(r, 'bridge_barge_in_events_total{event="clear"}') for r in mine]),
            f"{statistics.median([r.others_cpu_pct for r in mine]):.0f} %",
            "yes" if all(not r.why_not() for r in mine) else "no",
        ])
    table = md_table(
        ["calls", "server CPU ms per call-second, median (min-max)", "vs Speakr", "of which VAD (share)",
         "caller bursts", "Twilio media", "Twilio clears", "answers (run)", "interruptions (run)",
         "other processes", "all carried"],
        rows, right=[True] * 11,
    )
    return (
        "## The cascade (AGENT=cascade): CPU per call-second, VAD included\n\n"
        "A workload of its own (the VAD needs turns), in the same rounds as the table above (same N, same "
        "window, the same rotation with the cascade as a fourth backend; \"vs Speakr\": median of the ratios "
        "to the Speakr run of the same round and N). The bridge: `python -m bridge serve --workers 1` with "
        "`AGENT=cascade`, `CASCADE_STT_URL`/`LLM_URL`/`TTS_URL` pointing at the three OpenAI-compatible "
        "endpoints emulated by `CascadeServer` in a process of its own (`benchmarks/_cascade_service.py`), "
        "so only the bridge's CPU is counted (its process tree). The callers speak in bursts: "
        f"{BURSTS[0]:g}-{BURSTS[1]:g} s of speech-like noise (300-3000 Hz, a 4 Hz syllable envelope; "
        f"uniform length), then {BURSTS[2]:g} s of digital silence, each call at its own phase; the VAD's "
        "defaults (threshold 0.18, end of turn after 1 s of silence, early start after 400 ms). Every turn "
        "is transcribed (100 ms), answered by the model (first token after 100 ms, 100 tokens/s) and "
        "spoken (first byte after 100 ms, 4x real time, PCM 24 kHz streamed into the call): 1.6 s of "
        "speech, or 5.9 s for every 4th chat request, which the caller's next burst interrupts (a Twilio "
        "clear, the answer's requests cancelled). The model's first words at call start (1.6 s) play "
        f"during the settle ({CASCADE_PROFILE.settle_s:g} s), before the {CASCADE_PROFILE.window_s:g} s "
        "window. \"caller bursts\", \"Twilio media\", \"Twilio clears\" (a barge-in sends one at the pause "
        "and one at the interruption): in the window, per run; \"answers\" (end of turn to first audio "
        "timed) and \"interruptions\": the bridge's /metrics over the whole run (with the first words, which "
        "a caller's first burst often cuts). So about one turn in four is interrupted in the window "
        "(clears / 2 / bursts). \"all carried\": every call stayed up, heard answers in the window, no "
        "cascade error, no protocol error. \"other processes\" holds the emulated endpoints' CPU here. Not "
        "measured: hop latencies (there is no agent socket to time them at), uplink loss (idem).\n\n"
        "\"of which VAD\": `TurnDetector.feed` alone on one call's caller audio of this workload (μ-law "
        "decoded to 20 ms PCM16 frames, as the leg gets it; `agent_speaking` following the answers), "
        f"CPU per call-second, median of {VAD_RUNS} runs of {VAD_AUDIO_S:g} s "
        f"({1e3 * min(vad):.3f}-{1e3 * max(vad):.3f} ms), and its share of the median above.\n\n"
        + table
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, bench_report: list[str]) -> list[Run]:
    raise_fd_limit()
    result = trio.run(_measure, tmp_path_factory.mktemp("backends"), print)
    vad = vad_cpu_per_call_s()
    print(f"VAD alone: {1e3 * statistics.median(vad):.3f} ms CPU per call-second (median of {len(vad)})")
    table = report(result, vad)
    print("\n" + table)
    bench_report.append("Backends side by side\n" + table)
    write_result("backends.md", "Every backend side by side: CPU per call-second and hop latency", table)
    return result


# ---------------------------------------------------------------------------------------------- checks


async def _check_openai_wire() -> None:
    """The lean OpenAI service, driven by the bridge's own client side of the wire."""
    agent = LeanAgentServer(protocol="openai")
    run = LoadRun(1, LoadProfile(speak_s=0.0))
    caller = LeanCaller(run, 0)
    run.callers.append(caller)
    caller.sent_at = [time.perf_counter()] * 4
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        agent.run = run
        with trio.fail_after(10):
            async with trio_websocket.open_websocket_url(agent.url) as ws:
                created = oai_wire.parse_server_event(await ws.get_message())
                assert isinstance(created, oai_wire.SessionCreated)
                await ws.send_message(oai_wire.session_update_message(
                    instructions=f"Be brief.\nbench:{run.token}:0\n\nYour goal on this call: test"))
                updated = oai_wire.parse_server_event(await ws.get_message())
                assert isinstance(updated, oai_wire.SessionUpdated)
                assert updated.output_format is not None and updated.output_format.is_pcmu
                assert updated.input_format is not None and updated.input_format.is_pcmu
                assert caller.ready and caller.agent is not None
                for _ in range(3):
                    await ws.send_message(oai_wire.append_audio_message(b"\xff" * 160))
                session = caller.agent
                session._media(caller, timed=False)
                events = [oai_wire.parse_server_event(await ws.get_message()) for _ in range(2)]
                assert isinstance(events[0], oai_wire.ResponseCreated)
                delta = events[1]
                assert isinstance(delta, oai_wire.AudioDelta) and len(delta.audio) == 800
                session._barge()
                started = oai_wire.parse_server_event(await ws.get_message())
                assert isinstance(started, oai_wire.SpeechStarted)
                done = oai_wire.parse_server_event(await ws.get_message())
                assert isinstance(done, oai_wire.ResponseDone) and done.status == "cancelled"
                await ws.send_message(oai_wire.truncate_message(delta.item_id, 40))
                truncated = oai_wire.parse_server_event(await ws.get_message())
                assert isinstance(truncated, oai_wire.Unknown)
                assert truncated.type == "conversation.item.truncated"
                assert caller.bytes_at_agent == 480 and run.result.truncates == 1
                frame = agent.uplink_frame_bytes  # three Twilio frames hold this many whole uplink frames
                assert run.result.agent_protocol_errors == 0
                assert agent.uplink_expected_bytes(3) == 480 // frame * frame
        nursery.cancel_scope.cancel()


async def _check_deepgram_wire() -> None:
    """The lean Deepgram service, driven by the bridge's own client side of the wire."""
    agent = LeanAgentServer(protocol="deepgram")
    run = LoadRun(1, LoadProfile(speak_s=0.0))
    caller = LeanCaller(run, 0)
    run.callers.append(caller)
    caller.sent_at = [time.perf_counter()] * 4
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        agent.run = run
        with trio.fail_after(10):
            async with trio_websocket.open_websocket_url(agent.url) as ws:
                assert isinstance(dg_wire.parse_event(await ws.get_message()), dg_wire.Welcome)
                await ws.send_message(dg_client.settings_message(dg_client.AgentSettings(
                    prompt=f"bench:{run.token}:0")))
                assert isinstance(dg_wire.parse_event(await ws.get_message()), dg_wire.SettingsApplied)
                assert caller.ready and caller.agent is not None
                await ws.send_message(dg_client.keep_alive_message())
                for _ in range(3):
                    await ws.send_message(b"\xff" * 160)
                session = caller.agent
                session._media(caller, timed=False)
                assert isinstance(dg_wire.parse_event(await ws.get_message()), dg_wire.AgentStartedSpeaking)
                audio = dg_wire.parse_event(await ws.get_message())
                assert isinstance(audio, dg_wire.AgentAudio) and len(audio.audio) == 800
                session._close_answer()
                assert isinstance(dg_wire.parse_event(await ws.get_message()), dg_wire.AgentAudioDone)
                session._barge()
                assert isinstance(dg_wire.parse_event(await ws.get_message()), dg_wire.UserStartedSpeaking)
                with trio.fail_after(5):
                    while caller.bytes_at_agent < 480:  # noqa: ASYNC110 -- bounded, another task counts
                        await trio.sleep(0.01)
                assert run.result.agent_protocol_errors == 0
        nursery.cancel_scope.cancel()


def test_the_lean_agents_speak_each_backends_wire() -> None:
    """The lean OpenAI and Deepgram services answer the bridge's own client side of each wire."""
    trio.run(_check_openai_wire)
    trio.run(_check_deepgram_wire)


def test_every_call_of_every_run_was_carried(runs: list[Run]) -> None:
    failed = [f"{r.protocol} N={r.calls} round {r.round}: {r.why_not()}" for r in runs if r.why_not()]
    assert not failed, failed
