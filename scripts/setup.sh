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
EXTRAS=${EXTRAS:-dev}
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
echo "$WANT" > "$STAMP"
echo "[setup] ready: $VENV"
