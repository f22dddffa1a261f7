"""Real llama.cpp generation with the packaged 135M model."""

from __future__ import annotations

import pytest

from fineinstructions.backends.base import SamplingParams

pytestmark = pytest.mark.model


def test_batch_in_order_with_token_counts(llama_backend):
    conversations = [
        [{"role": "user", "content": "Say the word apple."}],
        [{"role": "user", "content": "Count from one to three."}],
    ]
    out = llama_backend.generate(conversations, SamplingParams(max_tokens=16))
    assert len(out) == 2
    assert all(g.ok and g.text and g.completion_tokens > 0 and g.prompt_tokens > 5 for g in out)
    assert all(g.completion_tokens <= 16 for g in out)
    assert llama_backend.stats.requests >= 2


def test_length_finish_reason_and_token_counter(llama_backend):
    out = llama_backend.generate([[{"role": "user", "content": "Write a long story about a dragon."}]],
                                 SamplingParams(max_tokens=5))[0]
    assert out.finish_reason == "length" and out.completion_tokens == 5
    assert llama_backend.count_tokens(["hello world", ""]) [1] == 0
    assert llama_backend.count_tokens(["hello world"])[0] >= 2


def test_prompt_too_long_for_context_is_a_counted_error_not_a_crash(test_gguf):
    from fineinstructions.backends.llamacpp import LlamaCppBackend

    small = LlamaCppBackend(str(test_gguf), n_ctx=256)
    try:
        out = small.generate([[{"role": "user", "content": "word " * 2000}]], SamplingParams(max_tokens=4))
        assert not out[0].ok and "engine_error" in out[0].error
        assert small.stats.failures == 1
    finally:
        small.close()
