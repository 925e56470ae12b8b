#!/usr/bin/env bash
# Create .venv and install adactrl into it. Idempotent: a finished install leaves a stamp.
# On machines without an NVIDIA GPU, torch is pinned to the CPU build first so that the
# project's `torch>=2.5` requirement is already met and no multi-GB CUDA wheel is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.adactrl-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install --quiet "torch>=2.5"
    else
        "$VENV/bin/python" -m pip install --quiet "torch==${ADACTRL_CPU_TORCH:-2.13.0}"
    fi
fi
"$VENV/bin/python" -m pip install --quiet -e ".[dev,serve]"
touch "$STAMP"
