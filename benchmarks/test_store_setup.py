"""What the shared store adds to a call's set-up, per backend: the webhook's ``reserve`` plus the stream's
``admit`` (token use and lease claim in one step), timed from a Trio loop as the app calls them.

Run: ``pytest benchmarks/test_store_setup.py -s``. Memory is one process; SQLite is the embedded store of
``serve --workers N`` (WAL, one short transaction in a worker thread per operation); Redis is a real local
``redis-server`` (loopback; a network hop to a remote Redis adds its round trips: two per call set-up).
Each backend also runs with a second process hammering the same store, as another worker would.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import pytest
import trio
from _harness import md_table, percentile, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "bridge"))
from fleet_helpers import running_redis  # noqa: E402

from bridge._store import open_store  # noqa: E402

CALLS = 400


async def _measure(redis_url: str | None, runtime_dir: str | None, tag: str) -> list[float]:
    samples: list[float] = []
    async with open_store(redis_url, runtime_dir) as store:
        for i in range(CALLS):
            sid = f"CA{tag}{i:030d}"
            t0 = time.perf_counter()
            assert await store.reserve(sid, limit=100_000)
            assert await store.admit(sid, subject=sid, token_expiry=time.time() + 60, limit=100_000) is None
            samples.append(time.perf_counter() - t0)
            await store.release(sid)
    return samples


def _other_worker(redis_url: str | None, runtime_dir: str | None, stop_after_s: float) -> None:
    async def run() -> None:
        async with open_store(redis_url, runtime_dir) as store:
            deadline = time.monotonic() + stop_after_s
            i = 0
            while time.monotonic() < deadline:
                sid = f"CAother{i:028d}"
                await store.reserve(sid, limit=100_000)
                await store.admit(sid, subject=sid, token_expiry=time.time() + 60, limit=100_000)
                await store.release(sid)
                i += 1
                await trio.sleep(0.002)  # a busy worker: ~300 call set-ups a second

    trio.run(run)


def _row(name: str, samples: list[float]) -> list[str]:
    ms = [s * 1000 for s in samples]
    return [name, f"{percentile(ms, 50):.2f}", f"{percentile(ms, 99):.2f}", f"{max(ms):.2f}"]


def test_store_setup_cost(tmp_path, bench_report):
    rows = []
    with running_redis() as redis:
        cases = [("memory", None, None), ("sqlite", None, str(tmp_path)), ("redis", redis.url, None)]
        for name, url, directory in cases:
            rows.append(_row(name, trio.run(_measure, url, directory, "a")))
            if name == "memory":
                continue
            other = multiprocessing.get_context("spawn").Process(
                target=_other_worker, args=(url, directory, 30.0), daemon=True
            )
            other.start()
            try:
                time.sleep(1.0)
                rows.append(_row(f"{name}, 2nd process busy on it", trio.run(_measure, url, directory, "b")))
            finally:
                other.terminate()
                other.join(5)
    table = md_table(["store", "p50 ms", "p99 ms", "max ms"], rows)
    text = (
        f"Call set-up cost of the store (reserve + admit, {CALLS} calls each, one after another)\n\n{table}\n"
        "\nRun: pytest benchmarks/test_store_setup.py -s\n"
    )
    print("\n" + text)
    bench_report.append(text)
    write_result("store_setup.md", "Store set-up cost", text)
    # Generous bars: the store must never be what makes a call slow to set up.
    for row in rows:
        assert float(row[2]) < 50.0, row


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
