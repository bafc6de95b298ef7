"""Codec benchmarks: the compiled codec against its fallback, audioop, a NumPy table and soxr.

Run: ``pytest benchmarks`` (add ``-s`` to also see the table as soon as it is measured).  Every
cell is the median over many samples of the time per call; each sample times a batch of calls
sized to ~2 ms, with the garbage collector off, and the contenders of one row take turns sample by
sample, so a ratio compares numbers taken under the same load.  Sample count and time per row are
bounded.  The table goes to the terminal and to benchmarks/results/codec.md; the tests then assert
the targets as ratios (absolute times depend on the machine, ratios much less).
"""

from __future__ import annotations

import gc
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from _harness import cpu_name

import codec
from codec import _fallback
from codec._common import ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE

_compiled: ModuleType | None
try:
    _compiled = importlib.import_module("codec._mulaw")
except ImportError:  # no compiled module: its cases skip (and the build test fails where cc exists)
    _compiled = None

try:
    import audioop
except ImportError:  # Python >= 3.13 without audioop-lts
    audioop = None  # type: ignore[assignment]

try:
    import soxr  # type: ignore[import-untyped]
except ImportError:
    soxr = None

RESULTS = Path(__file__).parent / "results" / "codec.md"
SAMPLE_S = 0.002  # time per sample (a batch of calls)
MAX_SAMPLES = 41  # per contender per row
MAX_ROW_S = 2.5  # per row, all contenders together
COLUMNS = ("cython", "fallback", "audioop", "numpy", "soxr", "cython unfused")
FRAME_MS = 20


#: A contender: a function and the arguments it is timed with (called directly, no wrapper).
Contender = tuple[Callable[..., object], tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a step at one input size, and its contenders."""

    step: str
    size: str
    contenders: dict[str, Contender]


def _pcm(rate: int, seconds: float, seed: int) -> bytes:
    """Speech-level noise (about -10 dBFS RMS), PCM16LE."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 10000, round(rate * seconds)).round().clip(-32768, 32767).astype("<i2").tobytes()


def _ratecv(then_encode: bool) -> Callable[[bytes], object]:
    """audioop's streaming 24 -> 8 kHz (state kept between calls) [+ lin2ulaw]."""
    state: list[Any] = [None]

    def step(data: bytes) -> object:
        out, state[0] = audioop.ratecv(data, 2, 1, 24000, 8000, state[0])
        return audioop.lin2ulaw(out, 2) if then_encode else out

    return step


def _soxr(then_encode: bool) -> Callable[[bytes], object]:
    """soxr's streaming HQ 24 -> 8 kHz on int16 [+ audioop.lin2ulaw]."""
    stream = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality="HQ")

    def step(data: bytes) -> object:
        out = stream.resample_chunk(np.frombuffer(data, dtype=np.int16))
        return audioop.lin2ulaw(out, 2) if then_encode else out.tobytes()

    return step


def _unfused(module: ModuleType) -> Callable[[bytes], bytes]:
    """The downlink step as two calls: Resampler.process, then ulaw_encode."""
    process = module.Resampler(24000, 8000).process
    encode = module.ulaw_encode

    def step(data: bytes) -> bytes:
        return encode(process(data))  # type: ignore[no-any-return]

    return step


def _rows() -> list[Row]:
    dec_table = np.frombuffer(ULAW_DECODE_TABLE, dtype="<i2")
    enc_table = np.frombuffer(ULAW_ENCODE_TABLE, dtype=np.uint8)
    impls: dict[str, ModuleType] = {"fallback": _fallback}
    if _compiled is not None:
        impls = {"cython": _compiled, **impls}
    rows = []
    for size, seconds in ((f"{FRAME_MS} ms frame", FRAME_MS / 1000), ("1 s block", 1.0)):
        pcm8 = _pcm(8000, seconds, 1)
        pcm24 = _pcm(24000, seconds, 2)
        ulaw = _fallback.ulaw_encode(pcm8)

        decode: dict[str, Contender] = {name: (m.ulaw_decode, (ulaw,)) for name, m in impls.items()}
        encode: dict[str, Contender] = {name: (m.ulaw_encode, (pcm8,)) for name, m in impls.items()}
        resample: dict[str, Contender] = {
            name: (m.Resampler(24000, 8000).process, (pcm24,)) for name, m in impls.items()
        }
        fused: dict[str, Contender] = {
            name: (m.DownlinkEncoder().process, (pcm24,)) for name, m in impls.items()
        }

        def numpy_decode(u: bytes) -> bytes:
            return dec_table[np.frombuffer(u, dtype=np.uint8)].tobytes()

        def numpy_encode(p: bytes) -> bytes:
            return enc_table[(np.frombuffer(p, dtype="<i2") >> 2) & 0x3FFF].tobytes()  # type: ignore[no-any-return]

        decode["numpy"] = (numpy_decode, (ulaw,))
        encode["numpy"] = (numpy_encode, (pcm8,))
        if _compiled is not None:
            fused["cython unfused"] = (_unfused(_compiled), (pcm24,))
        if audioop is not None:
            decode["audioop"] = (audioop.ulaw2lin, (ulaw, 2))
            encode["audioop"] = (audioop.lin2ulaw, (pcm8, 2))
            resample["audioop"] = (_ratecv(then_encode=False), (pcm24,))
            fused["audioop"] = (_ratecv(then_encode=True), (pcm24,))
        if soxr is not None:
            resample["soxr"] = (_soxr(then_encode=False), (pcm24,))
            if audioop is not None:
                fused["soxr"] = (_soxr(then_encode=True), (pcm24,))
        rows += [
            Row("decode μ-law -> PCM16", size, decode),
            Row("encode PCM16 -> μ-law", size, encode),
            Row("resample 24 -> 8 kHz", size, resample),
            Row("fused 24 kHz PCM16 -> 8 kHz μ-law", size, fused),
        ]
    return rows


def _batch(contender: Contender, loops: int) -> float:
    """Seconds per call over one batch, GC off (as timeit does)."""
    fn, args = contender
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            fn(*args)
        return (time.perf_counter() - start) / loops
    finally:
        if gc_was_on:
            gc.enable()


def _measure(row: Row) -> dict[str, float]:
    """Median seconds per call of each contender, sampled in turns."""
    loops = {}
    for name, contender in row.contenders.items():
        _batch(contender, 1)  # warm up (first-call allocations)
        loops[name] = max(1, min(100_000, round(SAMPLE_S / _batch(contender, 5))))
    samples: dict[str, list[float]] = {name: [] for name in row.contenders}
    deadline = time.perf_counter() + MAX_ROW_S
    for _ in range(MAX_SAMPLES):
        for name, contender in row.contenders.items():
            samples[name].append(_batch(contender, loops[name]))
        if time.perf_counter() > deadline and len(samples[next(iter(samples))]) >= 5:
            break
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass(frozen=True, slots=True)
class Check:
    """A target: measured value against its bar."""

    what: str
    value: float | None
    bar: str
    ok: bool | None
    asserted: bool


def _ratio(
    times: dict[tuple[str, str, str], float], step: str, size: str, num: str, den: str
) -> float | None:
    a, b = times.get((step, size, num)), times.get((step, size, den))
    return None if a is None or b is None else a / b


def _checks(times: dict[tuple[str, str, str], float]) -> list[Check]:
    frame = f"{FRAME_MS} ms frame"
    enc, dec = "encode PCM16 -> μ-law", "decode μ-law -> PCM16"
    res, fus = "resample 24 -> 8 kHz", "fused 24 kHz PCM16 -> 8 kHz μ-law"
    checks = []

    def add(what: str, value: float | None, bar: str, ok: Callable[[float], bool], asserted: bool) -> None:
        checks.append(Check(what, value, bar, None if value is None else ok(value), asserted))

    add(
        "cython encode / audioop.lin2ulaw, frame",
        _ratio(times, enc, frame, "cython", "audioop"),
        "<= 0.2x",
        lambda v: v <= 0.2,
        True,
    )
    add(
        "cython decode / audioop.ulaw2lin, frame",
        _ratio(times, dec, frame, "cython", "audioop"),
        "<= 1.0x",
        lambda v: v <= 1.0,
        True,
    )
    add(
        "soxr HQ stream + lin2ulaw / cython fused, frame",
        _ratio(times, fus, frame, "soxr", "cython"),
        ">= 4x",
        lambda v: v >= 4.0,
        True,
    )
    for step in (res, fus):
        add(
            f"fallback / cython, {step}, frame",
            _ratio(times, step, frame, "fallback", "cython"),
            "<= 15x",
            lambda v: v <= 15.0,
            True,
        )
    for step in (enc, dec):
        add(
            f"fallback / cython, {step}, frame",
            _ratio(times, step, frame, "fallback", "cython"),
            "<= 15x (reported)",
            lambda v: v <= 15.0,
            False,
        )
    add(
        "soxr HQ stream + lin2ulaw / cython fused, 1 s block",
        _ratio(times, fus, "1 s block", "soxr", "cython"),
        ">= 4x (reported)",
        lambda v: v >= 4.0,
        False,
    )
    fused_us = times.get((fus, frame, "cython"))
    add(
        "cython fused step per 20 ms frame, µs",
        None if fused_us is None else fused_us * 1e6,
        "<= 1 µs (target, reported)",
        lambda v: v <= 1.0,
        False,
    )
    return checks


def _format(rows: list[Row], times: dict[tuple[str, str, str], float], checks: list[Check]) -> str:
    def cell(t: float | None) -> str:
        if t is None:
            return "–"
        return f"{t * 1e6:.3f}" if t < 1e-5 else f"{t * 1e6:.1f}"

    lines = [
        "Median time per call, µs (lower is better). "
        f"codec.IMPLEMENTATION={codec.IMPLEMENTATION}; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, {cpu_name()}.",
        "",
        "| step | input | " + " | ".join(COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for row in rows:
        values = [cell(times.get((row.step, row.size, c))) for c in COLUMNS]
        lines.append(f"| {row.step} | {row.size} | " + " | ".join(values) + " |")
    lines += [
        "",
        "cython/fallback: codec._mulaw / codec._fallback (Resampler, DownlinkEncoder, ulaw_*); "
        "audioop: ulaw2lin, lin2ulaw, ratecv (no anti-alias filter) [+ lin2ulaw]; numpy: 256/16384-entry "
        "table lookup; soxr: ResampleStream(24000, 8000, 'HQ', int16) [+ audioop.lin2ulaw]; "
        "cython unfused: Resampler.process then ulaw_encode.",
        "",
        "| target | measured | bar | met |",
        "| --- | ---: | --- | --- |",
    ]
    for check in checks:
        value = "n/a" if check.value is None else f"{check.value:.3g}"
        met = "n/a" if check.ok is None else ("yes" if check.ok else "NO")
        lines.append(f"| {check.what} | {value} | {check.bar} | {met} |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results(bench_report: list[str]) -> dict[str, Check]:
    """Measure everything once; print, report and save the table; return the checks by name."""
    rows = _rows()
    times: dict[tuple[str, str, str], float] = {}
    for row in rows:
        for name, seconds in _measure(row).items():
            times[(row.step, row.size, name)] = seconds
    checks = _checks(times)
    table = _format(rows, times, checks)
    print("\n" + table)
    bench_report.append(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Codec benchmarks\n\nWritten by `pytest benchmarks` (benchmarks/test_codec.py).\n\n" + table + "\n",
        encoding="utf-8",
    )
    return {check.what: check for check in checks}


def _assert_check(results: dict[str, Check], what: str) -> None:
    check = results[what]
    if check.value is None:
        pytest.skip(f"{what}: a contender is unavailable (audioop, soxr or the compiled module)")
    assert check.ok, f"{what}: measured {check.value:.3g}, bar {check.bar}"


def test_cython_encode_is_at_most_a_fifth_of_audioop(results: dict[str, Check]) -> None:
    _assert_check(results, "cython encode / audioop.lin2ulaw, frame")


def test_cython_decode_is_no_slower_than_audioop(results: dict[str, Check]) -> None:
    _assert_check(results, "cython decode / audioop.ulaw2lin, frame")


def test_fused_downlink_step_is_4x_faster_than_soxr_plus_audioop(results: dict[str, Check]) -> None:
    _assert_check(results, "soxr HQ stream + lin2ulaw / cython fused, frame")


@pytest.mark.parametrize("step", ["resample 24 -> 8 kHz", "fused 24 kHz PCM16 -> 8 kHz μ-law"])
def test_fallback_is_within_15x_of_cython_per_frame(results: dict[str, Check], step: str) -> None:
    _assert_check(results, f"fallback / cython, {step}, frame")
