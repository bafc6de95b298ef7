"""Side by side with pipecat: the same calls through the bridge (``AGENT=openai``) and through a pipecat bot.

Run: ``bash benchmarks/peers/setup_venv.sh && pytest benchmarks/peers -s`` (about 25 minutes). A plain
``pytest benchmarks`` skips it (``conftest.py`` here); ``.ci/run`` never runs it.

Both relays sit between the same lean Twilio callers and the product's OpenAI Realtime emulator, in one
run, step after step (``_peers.py`` says what a step does and measures):

- ours: ``python -m bridge serve --workers 1`` with ``AGENT=openai``, ``OPENAI_REALTIME_URL`` and
  ``OPENAI_API_KEY`` pointing at the emulator;
- pipecat: ``pipecat_bot.py`` under uvicorn in one process, in its own virtual environment
  (``setup_venv.sh``), its ``base_url`` pointing at the emulator.

Every step is a fresh relay process and a fresh emulator. At 10 calls, ``REPS`` repetitions alternate the
two relays (ours, pipecat, ours, ...), so both see the same machine; each figure is the median of the
repetitions with its range. Then, for each relay, the most calls it holds (every call set up and up, p99 of
both hops <= 20 ms, no caller audio lost), searched on a grid then by bisection, ``CAPACITY_REPS`` times.
Ratios are of the medians of this run. The table goes to ``benchmarks/results/peers.md``.

If this tree cannot run ``AGENT=openai`` (no session reaches the emulator), ours is reported as not run,
with the reason, and pipecat's figures stand alone.

Settings (environment): ``PEERS_VENV`` (pipecat's venv, default ``benchmarks/peers/.venv``), ``PEERS_REPS``
(3), ``PEERS_CAPACITY_REPS`` (3), ``PEERS_CAPACITY_BUDGET_S`` (1200: the capacity searches stop there, and
the report says how many ran), ``PEERS_BRIDGE_TREE`` (measure the bridge of another checkout).

This machine may be shared: every capacity step records the CPU other processes used meanwhile, and a
failing step on a busy machine is run again (at most ``MAX_RERUNS`` per search).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trio
from _harness import (
    ServerProcess,
    free_port,
    machine_cpu_s,
    machine_line,
    md_table,
    percentile,
    raise_fd_limit,
    write_result,
)
from _peers import PeerResult, Scenario, drive_peers

pytestmark = pytest.mark.peers

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parents[1]
VENV: Final = Path(os.environ.get("PEERS_VENV", str(HERE / ".venv")))
PIPECAT_PYTHON: Final = VENV / "bin" / "python"
API_KEY: Final = "sk-peers-benchmark"

REPS: Final = int(os.environ.get("PEERS_REPS", "3"))
CAPACITY_REPS: Final = int(os.environ.get("PEERS_CAPACITY_REPS", "3"))
LATENCY_CALLS: Final = 10
SCENARIO: Final = Scenario()
#: Capacity steps measure a shorter window: the search has many of them.
CAPACITY_SCENARIO: Final = Scenario(window_s=5.0, settle_s=1.5)
P99_BAR_S: Final = 0.020
CAPACITY_GRID: Final = (10, 20, 30, 40, 60, 80, 100, 130)
CAPACITY_RESOLUTION: Final = 0.1  # stop bisecting at max(2 calls, this share of the holding N)
CAPACITY_MAX_STEPS: Final = 10  # per search, reruns not counted
#: A failing step while other processes used more than this share of a core is run again (at most
#: MAX_RERUNS per search): this machine may be shared.
OTHERS_BUSY_PCT: Final = 25.0
MAX_RERUNS: Final = 3
CAPACITY_BUDGET_S: Final = float(os.environ.get("PEERS_CAPACITY_BUDGET_S", "1200"))

OURS: Final = "speakr-bridge"
PIPECAT: Final = "pipecat"


#: Measure the bridge of another checkout instead of this one (its ``bridge`` package first on the path).
BRIDGE_TREE: Final = os.environ.get("PEERS_BRIDGE_TREE")


def _bridge_python() -> list[str]:
    """``python -m bridge``, of this tree or of ``PEERS_BRIDGE_TREE``."""
    if not BRIDGE_TREE:
        return [sys.executable, "-m", "bridge"]
    code = (
        f"import runpy, sys; sys.path.insert(0, {BRIDGE_TREE!r}); "
        "runpy.run_module('bridge', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


@dataclass(frozen=True, slots=True)
class Relay:
    """A relay under test: how to start it against an emulator URL."""

    name: str
    argv: Callable[[int], list[str]]
    env: Callable[[str], dict[str, str]]


RELAYS: Final = {
    OURS: Relay(
        OURS,
        lambda port: (
            _bridge_python() + ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        ),
        lambda url: {
            "AGENT": "openai",
            "OPENAI_REALTIME_URL": url,
            "OPENAI_API_KEY": API_KEY,
            "MAX_CONCURRENT_CALLS": "100000",
            "BRIDGE_DRAIN_TIMEOUT_S": "0.5",
            "LOG_FORMAT": "console",
        },
    ),
    PIPECAT: Relay(
        PIPECAT,
        lambda port: [
            str(PIPECAT_PYTHON),
            str(HERE / "pipecat_bot.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        lambda url: {"OPENAI_API_KEY": API_KEY, "PIPECAT_OPENAI_BASE_URL": url.split("?", 1)[0]},
    ),
}


@dataclass(slots=True)
class Step:
    """One relay process carrying N calls."""

    relay: str
    calls: int
    result: PeerResult
    rss_idle: int = 0
    error: str = ""

    @property
    def cpu_s(self) -> float:
        return self.result.probe_end.get("cpu", math.nan) - self.result.probe_begin.get("cpu", math.nan)

    @property
    def cpu_ms_per_call_s(self) -> float:
        r = self.result
        return 1000 * self.cpu_s / (self.calls * r.window_s) if r.window_s else math.nan

    @property
    def rss_kib_per_call(self) -> float:
        return (self.result.probe_end.get("rss", math.nan) - self.rss_idle) / 1024 / self.calls

    #: The relay's own figures with one call (set by the capacity search): what load adds is judged.
    floor: Step | None = None

    @property
    def lossless(self) -> bool:
        """Every call set up and up, every caller sample at the agent."""
        return not self.error and not self.result.lost

    @property
    def holds_strict(self) -> bool:
        """p99 of both hops <= 20 ms and no loss."""
        return self.lossless and self.result.p99_ms() <= P99_BAR_S * 1000

    @property
    def holds(self) -> bool:
        """No loss, and p99 of both hops at most 20 ms above the relay's own 1-call p99."""
        floor_ms = self.floor.result.p99_ms() if self.floor is not None else 0.0
        return self.lossless and self.result.p99_ms() <= floor_ms + P99_BAR_S * 1000

    @property
    def others_pct(self) -> float:
        """CPU the machine's other processes used in the window, % of one core (noise on a shared box)."""
        r = self.result
        machine = r.probe_end.get("machine", math.nan) - r.probe_begin.get("machine", math.nan)
        return 100 * (machine - self.cpu_s - r.driver_cpu_s) / r.window_s if r.window_s else math.nan

    @property
    def driver_pct(self) -> float:
        """The load driver's CPU (callers and the emulator), % of one core."""
        r = self.result
        return 100 * r.driver_cpu_s / r.window_s if r.window_s else math.nan

    def why_not(self) -> str:
        r = self.result
        if self.error:
            return self.error
        if not self.lossless:
            return r.summary()
        return f"p99 {r.p99_ms():.0f} ms"


async def run_step(relay: Relay, calls: int, scenario: Scenario, workdir: Path) -> Step:
    emulator = scenario.emulator(API_KEY)
    step = Step(relay.name, calls, PeerResult(calls=calls))
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        port = free_port()
        server = ServerProcess(
            relay.argv(port), port=port, env=relay.env(emulator.url), workdir=workdir, name=relay.name
        )
        try:
            await server.wait_ready(30.0)
            step.rss_idle = server.rss_bytes()
            step.result = await drive_peers(
                "127.0.0.1",
                port,
                emulator,
                calls,
                scenario,
                probe=lambda: {
                    "cpu": server.cpu_s(),
                    "rss": float(server.rss_bytes()),
                    "machine": machine_cpu_s()[0],
                },
            )
        except RuntimeError as exc:
            step.error = str(exc).splitlines()[0][:200]
        finally:
            server.stop()
        nursery.cancel_scope.cancel()
    return step


def _ms(values: Sequence[float], q: float) -> float:
    return 1000 * percentile(values, q)


def figures(step: Step) -> dict[str, float]:
    """The per-step figures the table reports (ms unless named)."""
    r = step.result
    trunc = r.truncation_error_ms
    ts = r.twilio_samples_error_ms
    return {
        "uplink p50": _ms(r.uplink_s, 50),
        "uplink p99": _ms(r.uplink_s, 99),
        "downlink p50": _ms(r.downlink_s, 50),
        "downlink p99": _ms(r.downlink_s, 99),
        "speech_started -> playback stops, p50": _ms(r.barge_stop_s, 50),
        "speech_started -> playback stops, p99": _ms(r.barge_stop_s, 99),
        "truncation error, median": percentile(trunc, 50),
        "truncation error, max |e|": max((abs(e) for e in trunc), default=math.nan),
        "twilio-samples estimate error, median": percentile(ts, 50),
        "CPU ms per call-second": step.cpu_ms_per_call_s,
        "RSS KiB per call at 10 calls": step.rss_kib_per_call,
    }


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    return statistics.median(vals), min(vals), max(vals)


def fmt(triple: tuple[float, float, float], digits: int = 1) -> str:
    med, lo, hi = triple
    if math.isnan(med):
        return "n/a"
    return f"{med:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


async def capacity_search(
    relay: Relay, workdir: Path, deadline: float, log: Callable[[str], None]
) -> tuple[int, list[Step], bool]:
    """The most calls ``relay`` holds (:attr:`Step.holds`): one call for its floor, a grid up to the first
    failure, then bisection."""
    floor = await run_step(relay, 1, CAPACITY_SCENARIO, workdir)
    floor.floor = floor
    steps: list[Step] = [floor]
    reruns = 0
    log(f"  capacity {relay.name} floor (1 call): p99 {floor.result.p99_ms():.1f} ms, {floor.why_not()}")
    best, worst = 0, None
    candidates = iter(CAPACITY_GRID)
    n = next(candidates)
    complete = False
    for _ in range(CAPACITY_MAX_STEPS):
        if time.monotonic() > deadline:
            break
        step = await run_step(relay, n, CAPACITY_SCENARIO, workdir)
        step.floor = floor
        steps.append(step)
        log(
            f"  capacity {relay.name} N={n}: {'holds' if step.holds else 'fails: ' + step.why_not()}"
            f" (p99 {step.result.p99_ms():.1f} ms, others {step.others_pct:.0f} % of a core)"
        )
        while not step.holds and step.others_pct > OTHERS_BUSY_PCT and reruns < MAX_RERUNS:
            reruns += 1  # the machine, not the relay, may have failed: once more
            step = await run_step(relay, n, CAPACITY_SCENARIO, workdir)
            step.floor = floor
            steps.append(step)
            log(f"  capacity {relay.name} N={n} again: {'holds' if step.holds else 'fails'}")
        if step.holds:
            best = max(best, n)
        else:
            worst = n if worst is None else min(worst, n)
        if worst is None:
            n = next(candidates, 0)
            if not n:
                complete = True
                break
            continue
        if worst - best <= max(2, CAPACITY_RESOLUTION * best):
            complete = True
            break
        n = (best + worst) // 2
    return best, steps, complete


@dataclass(slots=True)
class Comparison:
    relays: list[str]
    ours_problem: str | None
    latency: dict[str, list[Step]] = field(default_factory=dict)
    capacity: dict[str, list[int]] = field(default_factory=dict)  # per search: most calls held
    capacity_strict: dict[str, list[int]] = field(default_factory=dict)  # per search: same, p99 <= 20 ms
    capacity_steps: list[Step] = field(default_factory=list)
    rss_slopes: dict[str, list[float]] = field(default_factory=dict)  # per search, KiB per call
    seconds: float = 0.0


async def compare(workdir: Path, log: Callable[[str], None]) -> Comparison:
    t0 = time.monotonic()
    # Can this tree run AGENT=openai at all? One call: does a session reach the emulator?
    probe = await run_step(
        RELAYS[OURS], 1, Scenario(window_s=1.0, settle_s=0.5, link_timeout_s=10.0), workdir
    )
    ours_problem = None
    if probe.result.linked < 1:
        ours_problem = (
            "`AGENT=openai` opened no OpenAI Realtime session with the emulator "
            f"({probe.error or probe.result.summary()})"
        )
        log(f"ours not run: {ours_problem}")
    relays = [PIPECAT] if ours_problem else [OURS, PIPECAT]
    out = Comparison(
        relays, ours_problem, {r: [] for r in relays}, {r: [] for r in relays}, {r: [] for r in relays}
    )
    for rep in range(REPS):
        for name in relays:
            step = await run_step(RELAYS[name], LATENCY_CALLS, SCENARIO, workdir)
            out.latency[name].append(step)
            f = figures(step)
            log(
                f"  rep {rep + 1} {name}: {step.result.summary()}; up p50/p99 {f['uplink p50']:.1f}/"
                f"{f['uplink p99']:.1f} ms, down {f['downlink p50']:.1f}/{f['downlink p99']:.1f} ms, "
                f"stop p50 {f['speech_started -> playback stops, p50']:.1f} ms, trunc err "
                f"{f['truncation error, median']:.0f} ms, {f['CPU ms per call-second']:.1f} ms CPU/call-s"
                + (f" [{step.error}]" if step.error else "")
            )
    deadline = time.monotonic() + CAPACITY_BUDGET_S
    for _ in range(CAPACITY_REPS):
        for name in relays:
            best, steps, complete = await capacity_search(RELAYS[name], workdir, deadline, log)
            out.capacity_steps += steps
            if not complete:  # cut short by the budget: its best is only a lower bound
                log(f"  capacity {name}: search cut short by the budget, not counted")
                continue
            out.capacity[name].append(best)
            out.capacity_strict[name].append(max((s.calls for s in steps if s.holds_strict), default=0))
            out.rss_slopes.setdefault(name, []).append(rss_slope_kib(steps))
    out.seconds = time.monotonic() - t0
    return out


def rss_slope_kib(steps: Sequence[Step]) -> float:
    """Least-squares slope of the relay's RSS over N (KiB per call), over steps where every call was up."""
    points = [(s.calls, s.result.probe_end.get("rss", math.nan)) for s in steps if s.lossless]
    points = [(n, r) for n, r in points if not math.isnan(r)]
    if len({n for n, _ in points}) < 2:
        return math.nan
    mean_n = statistics.fmean(n for n, _ in points)
    mean_r = statistics.fmean(r for _, r in points)
    num = sum((n - mean_n) * (r - mean_r) for n, r in points)
    den = sum((n - mean_n) ** 2 for n, _ in points)
    return num / den / 1024


def _versions() -> str:
    if not PIPECAT_PYTHON.exists():
        return "pipecat venv missing"
    code = (
        "from importlib.metadata import version as v;"
        "print(', '.join(f'{n} {v(n)}' for n in ('pipecat-ai','fastapi','uvicorn','websockets','soxr')))"
    )
    return subprocess.run(
        [str(PIPECAT_PYTHON), "-c", code], capture_output=True, text=True, timeout=60
    ).stdout.strip()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "unknown"


DIGITS: Final = {"CPU ms per call-second": 2, "RSS KiB per call at 10 calls": 0}
#: For these, smaller is better; the ratio is pipecat / ours (> 1: ours is better). Errors compare by size.
ROWS: Final = [
    "uplink p50",
    "uplink p99",
    "downlink p50",
    "downlink p99",
    "speech_started -> playback stops, p50",
    "speech_started -> playback stops, p99",
    "truncation error, median",
    "truncation error, max |e|",
    "CPU ms per call-second",
    "RSS KiB per call at 10 calls",
]


def report(c: Comparison) -> str:
    meds: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name in c.relays:
        per_step = [figures(s) for s in c.latency[name]]
        meds[name] = {row: median_range([f[row] for f in per_step]) for row in ROWS}
        meds[name]["twilio-samples"] = median_range(
            [f["twilio-samples estimate error, median"] for f in per_step]
        )
    headers = ["figure (ms unless named)", OURS, PIPECAT, "pipecat / ours"]
    rows: list[list[str]] = []
    cap = {n: median_range([float(x) for x in c.capacity[n]]) for n in c.relays}
    strict = {n: median_range([float(x) for x in c.capacity_strict[n]]) for n in c.relays}
    floors = {
        n: median_range([s.result.p99_ms() for s in c.capacity_steps if s.relay == n and s.calls == 1])
        for n in c.relays
    }
    slope = {n: median_range(c.rss_slopes.get(n, [])) for n in c.relays}
    for name_row, key in [
        ("calls held: p99 <= 20 ms, no loss", "strict"),
        ("1-call p99 (the relay's floor)", "floor"),
        ("calls held: p99 <= its 1-call p99 + 20 ms, no loss", "cap"),
        ("RSS KiB per call, slope over the capacity steps", "slope"),
    ] + [(r, r) for r in ROWS]:
        cells: list[str] = [name_row]
        vals: dict[str, float] = {}
        for name in (OURS, PIPECAT):
            if name not in c.relays:
                cells.append("not run")
                continue
            special = {"strict": strict, "floor": floors, "cap": cap, "slope": slope}
            triple = special[key][name] if key in special else meds[name][key]
            cells.append(fmt(triple, 0 if key in ("strict", "cap", "slope") else DIGITS.get(key, 1)))
            vals[name] = triple[0]
        counts = key in ("strict", "cap")
        if (
            len(vals) == 2
            and not any(math.isnan(v) for v in vals.values())
            and (vals[PIPECAT] if counts else vals[OURS])
        ):
            ratio = vals[OURS] / vals[PIPECAT] if counts else abs(vals[PIPECAT]) / abs(vals[OURS])
            cells.append(f"{ratio:.2f}" + (" (ours / pipecat)" if counts else ""))
        elif counts and vals.get(PIPECAT) == 0 and vals.get(OURS):
            cells.append("pipecat holds none")
        else:
            cells.append("")
        rows.append(cells)
    ts_on = OURS if OURS in c.relays else PIPECAT
    rows.append(["twilio-samples' timestamp arithmetic, truncation error median", "", "", ""])
    rows[-1][1 if ts_on == OURS else 2] = fmt(meds[ts_on]["twilio-samples"])
    table = md_table(headers, rows, right=[False, True, True, True])
    steps = md_table(
        [
            "relay",
            "N",
            "holds",
            "p99 <= 20 ms",
            "linked",
            "up p99 ms",
            "down p99 ms",
            "uplink samples lost",
            "CPU %",
            "RSS MiB",
            "driver CPU %",
            "others CPU %",
            "why not",
        ],
        [
            [
                s.relay,
                s.calls,
                "yes" if s.holds else "no",
                "yes" if s.holds_strict else "no",
                f"{s.result.linked}/{s.calls}",
                f"{_ms(s.result.uplink_s, 99):.1f}",
                f"{_ms(s.result.downlink_s, 99):.1f}",
                s.result.uplink_missing,
                f"{100 * s.cpu_s / s.result.window_s:.0f}" if s.result.window_s else "",
                f"{s.result.probe_end.get('rss', math.nan) / 2**20:.1f}",
                f"{s.driver_pct:.0f}",
                f"{s.others_pct:.0f}",
                "" if s.holds else s.why_not(),
            ]
            for s in c.capacity_steps
        ],
        right=[False, True, False, False, True, True, True, True, True, True, True, True, False],
    )
    barges = {n: sum(s.result.barges for s in c.latency[n]) for n in c.relays}
    head = (
        f"{machine_line()}. Commit {_commit()}"
        + (f" (the bridge measured from {BRIDGE_TREE})" if BRIDGE_TREE else "")
        + f", {time.strftime('%Y-%m-%d', time.gmtime())}. "
        f"Peer: {_versions()}; uvicorn without uvloop/httptools (plain `uvicorn`, as pipecat's runner extra "
        f"pins it). Whole run: {c.seconds:.0f} s.\n\n"
        f"Load: {LATENCY_CALLS} concurrent calls for the latency rows, {REPS} repetitions alternating "
        f"the two relays, {SCENARIO.window_s:.0f} s window each; caller: {SCENARIO.speech_s:.1f} s of speech "
        f"every {SCENARIO.cycle_s:.0f} s, 20 ms frames in real time; agent (the OpenAI Realtime emulator): a "
        f"{SCENARIO.reply_ms / 1000:.0f} s answer in {SCENARIO.delta_ms} ms deltas in real time, barged in "
        f"on every cycle ({', '.join(f'{n}: {b}' for n, b in barges.items())} barge-ins measured); handset "
        f"playout delay {SCENARIO.playout_delay_ms} ms. Capacity: searches completed "
        f"({', '.join(f'{n}: {len(c.capacity[n])}' for n in c.relays)}; {CAPACITY_REPS} asked), "
        f"{CAPACITY_SCENARIO.window_s:.0f} s windows.\n\n"
        "Each cell: median of the repetitions (range). Truncation error: `audio_end_ms` the emulator "
        "received minus what the phone played of the item (positive: the agent believes the caller heard "
        "more than they did). The last row applies twilio-samples' documented algorithm (latest inbound "
        "media "
        "`timestamp` when `speech_started` arrives minus the latest one when the response's first delta "
        f"arrived) to the {ts_on} calls' own timestamps.\n\n"
    )
    if c.ours_problem:
        head += f"**Ours not run:** {c.ours_problem}.\n\n"
    return head + table + "\n\nCapacity steps, in the order run:\n\n" + steps


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory, bench_report: list[str]) -> Comparison:
    if not PIPECAT_PYTHON.exists():
        pytest.skip(f"no pipecat venv at {VENV}: run `bash benchmarks/peers/setup_venv.sh`")
    raise_fd_limit()
    result = trio.run(compare, tmp_path_factory.mktemp("peers"), print)
    text = report(result)
    title = "Side by side with pipecat: the same calls, one run"
    path = write_result("peers.md", title, text + "\n\n" + NOTES)
    path.write_text(path.read_text().replace("`pytest benchmarks`.", "`pytest benchmarks/peers`.", 1))
    bench_report.append(text)
    return result


NOTES: Final = """\
## Why the figures differ (read from pipecat 1.14.0's code and the bridge's, measured here)

- **Hop latency.** pipecat's OpenAI Realtime service speaks `audio/pcm` at 24 kHz to the service, never
  `audio/pcmu`: `_send_user_audio` resamples every caller frame 8 -> 24 kHz, and the answer comes out as
  24 kHz frames that its Twilio serializer resamples 24 -> 8 kHz, both with soxr's `ResampleStream` at `VHQ`
  (its `create_stream_resampler()` default). Fed 20 ms frames, that stream releases its output in blocks of
  about 140 ms: what it holds back cycles from 30 to 150 ms (mean 85 ms; soxr 1.0.0 in the peers venv, 200
  frames each way). That is pipecat's floor at one call as at many, so it holds no call at p99 <= 20 ms, and
  no setting changes it (the 24 kHz conversion is in the service's code). The bridge asks for `audio/pcmu`
  both ways and forwards the payloads untouched: its hops are the framework's and the kernel's time.
- **Truncation error.** pipecat sends no marks. On `speech_started` it truncates the item at
  `min(wall-clock since its first delta arrived, audio received)`, which counts as heard whatever is still
  in its resampler and output pacing, on the wire, and in the handset's playout buffer (200 ms here): about
  +400 ms. twilio-samples' timestamp arithmetic measures the same span on Twilio's stream clock; replayed on
  the bridge's calls (which forward audio at once, as twilio-samples does) it is off by the handset's 200 ms
  plus the hop. The bridge truncates at what Twilio's marks confirmed was played: a little less than the
  phone model counts (a mark comes back on the 20 ms tick after its audio ended, and the span playing when
  the `clear` lands counts as heard), never more.
- **Barge-in.** Both clear the phone within a few ms of `speech_started`; pipecat's interruption crosses its
  pipeline's frame queues first.
- **Calls held, CPU and memory.** Per call, pipecat runs a pipeline of frame processors, each with its own
  asyncio tasks and queues, two soxr streams and an output clock, in one event loop; its latency grows past
  the table's count of calls with the process still short of a whole core. The bridge's CPU per call-second
  is mostly Hypercorn, wsproto and the kernel (`benchmarks/results/profile.txt`). Judged against its own
  1-call floor (p99 at most 20 ms above it), pipecat's count is the fairer comparison of capacity; judged at
  p99 <= 20 ms, pipecat holds none.
- **This machine is shared.** Other sessions' benchmarks ran meanwhile (the "others CPU %" column); the
  10-call figures repeat within a few percent, the capacity searches less so, which is why each relay's
  searches alternate with the other's and failing steps on a busy machine are run again.

## Reproduce

```
bash benchmarks/peers/setup_venv.sh
pytest benchmarks/peers -s
```
"""


def test_pipecat_carried_the_calls_and_the_barge_ins(comparison: Comparison) -> None:
    steps = comparison.latency[PIPECAT]
    assert steps and all(s.result.linked == LATENCY_CALLS for s in steps), [s.result.summary() for s in steps]
    assert all(s.result.barges >= LATENCY_CALLS for s in steps)
    assert all(s.result.uplink_s and s.result.downlink_s for s in steps)


def test_ours_carried_the_calls_and_the_barge_ins(comparison: Comparison) -> None:
    if comparison.ours_problem:
        pytest.skip(comparison.ours_problem)
    steps = comparison.latency[OURS]
    assert all(s.result.linked == LATENCY_CALLS for s in steps), [s.result.summary() for s in steps]
    assert all(s.result.barges >= LATENCY_CALLS and not s.result.truncates_missing for s in steps)


def test_ours_truncates_at_what_the_phone_played(comparison: Comparison) -> None:
    """The bridge's ``audio_end_ms`` is within 60 ms of what the phone played (a wall-clock estimate is
    off by the handset's playout delay and more)."""
    if comparison.ours_problem:
        pytest.skip(comparison.ours_problem)
    for step in comparison.latency[OURS]:
        errors = step.result.truncation_error_ms
        assert errors and abs(percentile(errors, 50)) <= 60.0, errors
