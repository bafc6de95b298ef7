#!/usr/bin/env bash
# The peer comparison's own virtual environment: pipecat and what its bot needs, never the product's.
#
#   bash benchmarks/peers/setup_venv.sh            # creates benchmarks/peers/.venv (git-ignored)
#   PEERS_VENV=/some/dir bash benchmarks/peers/setup_venv.sh
#
# The product never imports pipecat: only benchmarks/peers/pipecat_bot.py runs in this venv, in its own
# process. Versions are pinned so that a figure in benchmarks/results/peers.md names what it measured.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PEERS_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

PIPECAT_VERSION="1.14.0"
UVICORN_VERSION="0.54.0"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# websocket: the FastAPI WebSocket transport; openai: the Realtime service's client. uvicorn: the server
# pipecat's telephony examples run under (its "runner" extra would add a web UI we do not use).
"$venv/bin/python" -m pip install --quiet \
    "pipecat-ai[websocket,openai]==$PIPECAT_VERSION" \
    "uvicorn==$UVICORN_VERSION"
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
for name in ("pipecat-ai", "fastapi", "uvicorn", "websockets", "soxr"):
    print(f"{name}=={version(name)}")
PY
