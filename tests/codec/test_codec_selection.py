"""Implementation selection, the compiled build, and byte-identical output of both implementations."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import codec
from codec import _fallback

ROOT = Path(__file__).resolve().parents[2]
FORCED = os.environ.get("SPEAKR_BRIDGE_PURE_PYTHON", "").strip().lower() in {"1", "true", "yes", "on"}
API = ("IMPLEMENTATION", "DownlinkEncoder", "Resampler", "ulaw_decode", "ulaw_encode")


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the fallback is expected")
def test_compiled_module_is_built_where_a_compiler_exists() -> None:
    # Like aiohttp's test_c_parser_loaded: a silent fallback to the slow codec must fail CI.
    # (Forcing the fallback with SPEAKR_BRIDGE_PURE_PYTHON does not excuse a missing build.)
    module = importlib.import_module("codec._mulaw")
    assert module.IMPLEMENTATION == "cython"


def test_package_exports_the_implementation_the_environment_asks_for() -> None:
    if FORCED:
        expected: ModuleType = _fallback
    else:
        try:
            expected = importlib.import_module("codec._mulaw")
        except ImportError:
            expected = _fallback
    assert codec.IMPLEMENTATION == expected.IMPLEMENTATION
    for name in API:
        assert getattr(codec, name) is getattr(expected, name)
    assert codec.IMPLEMENTATION_REASON


def _implementation_in_subprocess(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SPEAKR_BRIDGE_PURE_PYTHON"}
    if env_value is not None:
        env["SPEAKR_BRIDGE_PURE_PYTHON"] = env_value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", "import codec; print(codec.IMPLEMENTATION)"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_environment_variable_forces_the_fallback() -> None:
    assert _implementation_in_subprocess("1") == "python"


def test_compiled_module_is_preferred_when_not_forced() -> None:
    try:
        importlib.import_module("codec._mulaw")
    except ImportError:
        pytest.skip("codec._mulaw is not built")
    assert _implementation_in_subprocess(None) == "cython"
    assert _implementation_in_subprocess("0") == "cython"


def test_both_implementations_have_the_same_api(compiled: ModuleType, fallback: ModuleType) -> None:
    for name in API:
        assert hasattr(compiled, name) and hasattr(fallback, name)
    for cls in ("Resampler", "DownlinkEncoder"):
        for method in ("process", "flush", "reset", "in_rate", "out_rate", "delay_s"):
            assert hasattr(getattr(compiled, cls), method) and hasattr(getattr(fallback, cls), method)


def _random_pieces(rng: np.random.Generator, data: bytes) -> list[bytes]:
    cuts = np.sort(rng.integers(0, len(data) + 1, size=int(rng.integers(0, 40))))
    bounds = [0, *cuts.tolist(), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _signals(rng: np.random.Generator) -> list[bytes]:
    n = int(rng.integers(0, 30000))
    noise = rng.integers(-32768, 32768, n, dtype=np.int16)
    square = np.where(np.arange(n) // int(rng.integers(1, 40)) % 2, 32767, -32768)
    quiet = rng.normal(0, 300, n).round().clip(-32768, 32767)
    return [a.astype("<i2").tobytes() for a in (noise, square, quiet)]


@pytest.mark.parametrize("seed", range(6))
def test_both_implementations_give_identical_bytes_for_every_api(
    compiled: ModuleType, fallback: ModuleType, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
    assert compiled.ulaw_decode(codes) == fallback.ulaw_decode(codes)
    rates = [
        (24000, 8000),
        (16000, 8000),
        (48000, 8000),
        (8000, 24000),
        (8000, 16000),
        (8000, 48000),
        (24000, 16000),
        (16000, 24000),
        (44100, 8000),
        (8000, 8000),
    ]
    for pcm in _signals(rng):
        assert compiled.ulaw_encode(pcm) == fallback.ulaw_encode(pcm)
        pieces = _random_pieces(rng, pcm + bytes(int(rng.integers(0, 2))))  # maybe an odd byte
        for in_rate, out_rate in rates:
            a, b = compiled.Resampler(in_rate, out_rate), fallback.Resampler(in_rate, out_rate)
            assert [a.process(p) for p in pieces] == [b.process(p) for p in pieces]
            assert a.flush() == b.flush()
        a, b = compiled.DownlinkEncoder(), fallback.DownlinkEncoder()
        assert [a.process(p) for p in pieces] == [b.process(p) for p in pieces]
        assert a.flush() == b.flush()
