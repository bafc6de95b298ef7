"""Benchmark plumbing: reports collected during the run are printed in pytest's terminal summary.

Benchmarks only run when named (``pytest benchmarks``); pyproject's testpaths is ``tests``.
A benchmark prints its table itself (seen with ``-s``) and also hands it to ``bench_report`` so that
it shows at the end of a normal run, where pytest would otherwise have captured it.
"""

from __future__ import annotations

import os
import sys

# Time one core's work: the codec is single-threaded per call.  A multi-threaded BLAS in the NumPy
# fallback would otherwise fight the other processes on a small box for cores and leave spinning
# worker threads behind that slow down whichever contender runs next.  (Only effective if NumPy is
# not imported yet; the report says which BLAS threading was in force.)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
NUMPY_IMPORTED_EARLY = "numpy" in sys.modules

import pytest  # noqa: E402

_REPORTS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def bench_report(pytestconfig: pytest.Config) -> list[str]:
    """Append text blocks here to have them printed in the terminal summary."""
    return pytestconfig.stash.setdefault(_REPORTS, [])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "instructions: instruction counts under valgrind callgrind (`pytest benchmarks -m instructions`)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    """Say which BLAS threading the numbers were taken with."""
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    early = (
        " (NumPy was imported before this conftest: setting had no effect)" if NUMPY_IMPORTED_EARLY else ""
    )
    return f"benchmarks: OPENBLAS_NUM_THREADS={threads}{early}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print every collected benchmark report after the test results."""
    for text in config.stash.get(_REPORTS, []):
        terminalreporter.write_sep("=", "benchmark report")
        terminalreporter.write_line(text)
