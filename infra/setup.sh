#!/usr/bin/env bash
# Create .venv and install SLMOps with its dev extras. Idempotent: a second
# run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.slmops-installed"

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the dependency list changed since the last install.
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    echo "==> $VENV is up to date (delete $STAMP to force a reinstall)"
else
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first: a CPU build when the index offers one; an unpinned torch
    # would pull a multi-GB CUDA build.
    echo "==> installing torch==2.13.0"
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
    echo "==> installing slmops[dev]"
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    touch "$STAMP"
fi

# Telemetry off for DVC in this repository (the env vars for MLflow, Prefect
# and Hugging Face are set by the Makefile and the CLI).
"$VENV/bin/python" -m dvc config --local core.analytics false >/dev/null 2>&1 || true
echo "==> ready: source $VENV/bin/activate  (or use make demo / make test)"
