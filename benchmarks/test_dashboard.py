"""The dashboard under 50 live calls: its update rate and the server CPU each viewer costs.

A real ``python -m bridge serve`` (one worker, its SQLite store, the built-in local agent) carries 50 calls
from ``python -m bridge simulate --calls 50``. Meanwhile the benchmark opens 0, 1, 0, 50, 0 dashboard
viewers (Server-Sent Event streams of ``/dashboard/events``, signed in) for a fixed window each and reads the
server's CPU time from ``/proc`` over each window. A viewer here is the SSE stream the browser page holds;
the browser's own rendering costs the viewer's machine, not the server.

Run: ``PYTHONPATH=$PWD python -m pytest benchmarks/test_dashboard.py -s``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "bridge"))
from fleet_helpers import clean_env, serve  # noqa: E402

CALLS = 50
WINDOW_S = 5.0  # each phase; the calls last longer than all the phases together
#: Viewers per phase; the 0-viewer phases between them are the baseline (the calls' audio) each is
#: compared with, so a drift of the audio load does not pass for a viewer's cost.
PHASES = (0, 1, 0, 50, 0)
API_TOKEN = "dashboard-bench-token-0123456789"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _worker_pids(parent: int) -> list[int]:
    pids = [parent]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


async def _viewer(client: httpx.AsyncClient, counts: dict[str, int], until: float) -> None:
    async with client.stream("GET", "/dashboard/events") as response:
        assert response.status_code == 200
        with trio.move_on_at(until):
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    update = orjson.loads(line[6:])
                    counts["messages"] += 1
                    counts["rows"] += len(update.get("rows", []))
                    counts["bytes"] += len(line)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for CPU times")
async def test_dashboard_with_50_live_calls(tmp_path: Path, bench_report: list[str]) -> None:
    env = {"BRIDGE_API_TOKEN": API_TOKEN, "MAX_CONCURRENT_CALLS": str(CALLS + 10)}
    async with serve(tmp_path, env=env) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            login = await client.post("/web/login", data={"token": API_TOKEN})
            cookie = login.cookies["bridge_session"]
        with (tmp_path / "sim.log").open("wb") as log:  # noqa: ASYNC230 -- once, before any call
            sim = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "bridge",
                    "simulate",
                    server.base_url,
                    "--calls",
                    str(CALLS),
                    "--hangup-after",
                    str(len(PHASES) * WINDOW_S + 30),
                ],
                env=clean_env({}),
                stdout=log,
                stderr=log,
            )
        try:
            with trio.fail_after(30):
                while await server.metric("bridge_calls_active") < CALLS:  # noqa: ASYNC110 -- a scrape
                    await trio.sleep(0.2)
            pids = _worker_pids(server.process.pid)
            lines = [
                f"dashboard with {CALLS} live calls (serve, 1 worker, SQLite store; "
                f"{WINDOW_S:.0f} s per phase)"
            ]
            cpus: list[float] = []
            per_viewer: list[tuple[int, float, list[dict[str, int]]]] = []
            for viewers in PHASES:
                counts = [{"messages": 0, "rows": 0, "bytes": 0} for _ in range(viewers)]
                cpu0 = sum(_cpu_s(p) for p in pids)
                t0 = time.monotonic()
                # One client for every viewer (a client per viewer would spend the window building SSL
                # contexts in this process), one connection each.
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
                cookies = {"bridge_session": cookie}
                async with (
                    httpx.AsyncClient(
                        base_url=server.base_url, cookies=cookies, timeout=None, limits=limits
                    ) as viewing,
                    trio.open_nursery() as nursery,
                ):
                    for c in counts:
                        nursery.start_soon(_viewer, viewing, c, trio.current_time() + WINDOW_S)
                    if not viewers:
                        await trio.sleep(WINDOW_S)
                elapsed = time.monotonic() - t0
                cpus.append((sum(_cpu_s(p) for p in pids) - cpu0) / elapsed * 100)
                per_viewer.append((viewers, elapsed, counts))
                live = await server.metric("bridge_calls_active")
                lines.append(
                    f"  phase {viewers:2d} viewer(s): server CPU {cpus[-1]:5.1f}% of a core, "
                    f"{live:.0f} calls live"
                )
                assert live == CALLS, "calls ended during the measurement: lengthen --hangup-after"
            for i, (viewers, elapsed, counts) in enumerate(per_viewer):
                if not viewers:
                    continue
                baseline = (cpus[i - 1] + cpus[i + 1]) / 2
                msgs = sum(c["messages"] for c in counts) / viewers / elapsed
                rows = sum(c["rows"] for c in counts) / viewers
                kbs = sum(c["bytes"] for c in counts) / viewers / elapsed / 1024
                lines.append(
                    f"  {viewers:2d} viewer(s): {(cpus[i] - baseline) / viewers:+.2f}% of a core per viewer "
                    f"(vs the neighbouring 0-viewer phases); per viewer {msgs:.2f} updates/s, "
                    f"{rows:.0f} rows received, {kbs:.2f} KiB/s"
                )
                short = [c for c in counts if c["messages"] < 1 or c["rows"] < CALLS]
                assert not short, (
                    f"{len(short)} of {viewers} viewers got no full table: {short[:3]}\n" + "\n".join(lines)
                )
            polls = await server.metric("bridge_dashboard_poll_seconds_count")
            poll_s = await server.metric("bridge_dashboard_poll_seconds_sum")
            lines.append(
                f"  store reads: {polls:.0f} polls, {poll_s / max(1.0, polls) * 1000:.1f} ms each on average"
            )
            report = "\n".join(lines)
            print(report)
            bench_report.append(report)
        finally:
            sim.kill()
            await sim.wait()
