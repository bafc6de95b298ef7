"""What recording a call costs, per second of call: CPU and bytes written.

Run: ``pytest benchmarks/test_recording.py -s``. A call is fed the way the runner feeds the recording: one
160-byte caller frame every 20 ms of call, one 800-byte piece of heard agent audio every 100 ms of call for
half of the call (the agent talks half the time), through :class:`~bridge._records.CallObserver` into a real
file in a temporary directory (page cache; the writes are flushed to the OS every second of call, as in a
call). CPU is process time over many seconds of call, median of several runs. The table goes to the terminal
and to benchmarks/results/recording.md.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from _harness import cpu_name

from bridge import _twilio
from bridge._recording import BYTES_PER_MINUTE, HEADER_BYTES
from bridge._records import CallObserver

RESULTS = Path(__file__).parent / "results" / "recording.md"
CALL_S = 600  # seconds of call per run
RUNS = 5


def one_call(directory: Path, n: int) -> tuple[float, int]:
    """Record ``CALL_S`` of call; returns (CPU seconds, bytes on disk)."""
    observer = CallObserver(recordings_dir=str(directory))
    start = _start(n)
    observer.started(start)
    caller = bytes(range(160))
    heard = bytes(range(200, 255)) * 14 + bytes(range(30))
    frames = CALL_S * 50
    t0 = time.process_time()
    for k in range(frames):
        observer.caller_audio(caller)
        if k % 5 == 4 and (k // 500) % 2 == 0:  # talking in alternate 10 s stretches
            observer.heard(heard[:800])
    observer.ended(None)
    cpu = time.process_time() - t0
    size = (directory / f"{start.call_sid}.wav").stat().st_size
    return cpu, size


def _start(n: int) -> Any:
    message = _twilio.start_message(
        stream_sid="MZ" + "0" * 32,
        call_sid="CA" + f"{n:032x}",
        account_sid="AC" + "0" * 32,
        custom_parameters={},
        sequence_number=1,
    )
    event = _twilio.parse_event(message)
    assert isinstance(event, _twilio.Start)
    return event


def test_recording_cost_per_call_second(tmp_path: Path, bench_report: list[str]) -> None:
    results = [one_call(tmp_path, n) for n in range(RUNS)]
    cpu_us = statistics.median(cpu for cpu, _ in results) / CALL_S * 1e6
    size = results[0][1]
    per_s = (size - HEADER_BYTES) / CALL_S
    lines = [
        "## Recording cost per call-second",
        "",
        f"CPU: {cpu_name()}. {RUNS} runs of {CALL_S} s of call each; median.",
        "",
        "| what | per call-second | per minute of call |",
        "| --- | --- | --- |",
        f"| CPU (observer + writer + file writes) | {cpu_us:.1f} µs | {cpu_us * 60 / 1000:.2f} ms |",
        f"| bytes written | {per_s:.0f} B | {per_s * 60 / 1e6:.2f} MB |",
        "",
        f"Share of one core per recorded call: {cpu_us / 1e6 * 100:.4f} %.",
        "",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    bench_report.append(table)
    RESULTS.write_text(table)
    # Exact: μ-law stereo at 8 kHz is 16,000 bytes per second (0.96 MB per minute), header aside.
    assert per_s == BYTES_PER_MINUTE / 60
    # Generous bound (a shared 2-core box): recording must stay far below the call's own cost.
    assert cpu_us < 2000
