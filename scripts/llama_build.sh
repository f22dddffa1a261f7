# Build, cache and install llama-cpp-python for this CPU; sourced by scripts/setup.sh.
#
# Two flag sets:
#   native    -march=native, minus AMX: fastest on this CPU. Its cache key includes this CPU's SIMD features.
#   portable  no -march=native: x86-64-v3 (AVX2/FMA/F16C) when this CPU has AVX2, else baseline x86-64;
#             the compiler's defaults on other architectures. Also without AMX.
# Needs: PIP (array), VENV, CACHE, LLAMA_VERSION. Sets: LLAMA_WHEEL_DIR.
# FI_CPUINFO (default /proc/cpuinfo) and LLAMA_SMOKE (default: scripts/llama_smoke.py in the venv) exist for
# the tests (tests/test_setup.py).
CPUINFO=${FI_CPUINFO:-/proc/cpuinfo}

# The CPU features a native build compiles in: the SIMD and matrix extensions llama.cpp dispatches on.
cpu_features() {
  local flags=""
  if [ -r "$CPUINFO" ]; then
    flags=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' "$CPUINFO" | cut -d: -f2) || true
  elif command -v sysctl >/dev/null 2>&1; then
    flags=$(sysctl -n machdep.cpu.features machdep.cpu.leaf7_features hw.optional 2>/dev/null | tr 'A-Z.' 'a-z_' || true)
  fi
  echo "$(uname -m)" $(tr ' ' '\n' <<<"$flags" | grep -E \
    '^(sse4_2|ssse3|avx|avx2|fma|f16c|bmi2|avx_vnni|avx512[a-z0-9_]*|amx[a-z0-9_]*|asimd[a-z]*|sve[0-9]*|i8mm|dotprod|fphp|bf16|sme[0-9]*|vsx|rvv)$' \
    | sort -u)
}

# Sets LLAMA_CMAKE_ARGS, LLAMA_CFLAGS and LLAMA_KEY for a flag set.
llama_flags() {
  local kind=$1 arch no_amx=""
  arch=$(uname -m)
  case "$arch" in
    x86_64|amd64) no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
  esac
  LLAMA_CFLAGS="$no_amx"
  local amx_off="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  if [ "$kind" = native ]; then
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON $amx_off"
    LLAMA_KEY_INPUT="$LLAMA_VERSION native $LLAMA_CMAKE_ARGS $LLAMA_CFLAGS $(cpu_features)"
  else
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF $amx_off"
    if [ -n "$no_amx" ]; then
      if grep -qw avx2 "$CPUINFO" 2>/dev/null; then
        LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
      else
        LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
      fi
    fi
    LLAMA_KEY_INPUT="$LLAMA_VERSION portable $arch $LLAMA_CMAKE_ARGS $LLAMA_CFLAGS"
  fi
  LLAMA_KEY="$kind-$(printf '%s' "$LLAMA_KEY_INPUT" | sha256sum | cut -c1-12)"
}

# Build (unless cached) and install the wheel of one flag set.
llama_install() {
  llama_flags "$1"
  LLAMA_WHEEL_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY"
  if ! ls "$LLAMA_WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "[setup] building llama-cpp-python $LLAMA_VERSION ($1 flags, no AMX; one time, ~7 minutes on 2 cores)"
    local tmp="$LLAMA_WHEEL_DIR.tmp-$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    printf '%s\n' "$LLAMA_KEY_INPUT" > "$tmp/build-flags.txt"
    if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CFLAGS="$LLAMA_CFLAGS" CXXFLAGS="$LLAMA_CFLAGS" \
        "${PIP[@]}" wheel --no-deps --no-cache-dir -w "$tmp" "llama-cpp-python==$LLAMA_VERSION" >"$tmp/build.log" 2>&1; then
      echo "[setup] error: building llama-cpp-python failed; last lines of $tmp/build.log:" >&2
      tail -n 30 "$tmp/build.log" >&2
      return 1
    fi
    rm -rf "$LLAMA_WHEEL_DIR" && mv "$tmp" "$LLAMA_WHEEL_DIR"
  fi
  # Its pure-Python dependencies come with the package install that follows.
  "${PIP[@]}" install -q --no-deps --force-reinstall "$LLAMA_WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
}

# One short generation with the 135M model in a child process. Fails only when the child dies by a
# signal (a crash in the engine); any other error stops setup with its message.
llama_smoke() {
  local rc=0
  if [ -n "${LLAMA_SMOKE:-}" ]; then
    bash -c "$LLAMA_SMOKE" || rc=$?
  else
    "$VENV/bin/python" scripts/llama_smoke.py || rc=$?
  fi
  if [ "$rc" -ge 128 ]; then
    return 1
  elif [ "$rc" -ne 0 ]; then
    echo "[setup] error: the llama.cpp check failed (exit $rc), not by a crash; see the message above" >&2
    exit "$rc"
  fi
}

# Check the installed build; if it crashes, rebuild and install the portable flag set, and check once more.
llama_verify() {
  if llama_smoke; then
    return 0
  fi
  echo "[setup] the native llama.cpp build crashed in its first generation; rebuilding with portable flags"
  llama_install portable
  if ! llama_smoke; then
    echo "[setup] error: the portable llama.cpp build crashed too; see $LLAMA_WHEEL_DIR/build.log" >&2
    return 1
  fi
}
