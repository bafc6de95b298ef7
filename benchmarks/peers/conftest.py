"""The peer comparison runs only when asked for: ``pytest benchmarks/peers`` (or ``-m peers``).

A plain ``pytest benchmarks`` collects it and skips it at once, saying how to run it, so the everyday
benchmarks never wait for pipecat nor need its virtual environment; ``.ci/run`` runs ``tests/`` only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SKIP_REASON = (
    "peer comparison: run it by name, `pytest benchmarks/peers -s` "
    "(after `bash benchmarks/peers/setup_venv.sh`)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "peers: the side-by-side comparison with pipecat (`pytest benchmarks/peers`)"
    )


def _named(config: pytest.Config) -> bool:
    """This directory, or a file in it, is on the command line; or ``-m`` selects ``peers``."""
    if "peers" in (config.getoption("markexpr", "") or ""):
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _named(config):
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)
