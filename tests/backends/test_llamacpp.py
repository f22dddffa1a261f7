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


def test_prompt_lookup_handles_prompts_longer_than_a_batch_and_keeps_greedy_output(test_gguf, llama_backend):
    """llama-cpp-python's draft path fails on prompts over one batch (512 tokens) unless its logits buffer
    is sized for it; greedy speculative decoding must then give exactly the plain output."""
    from fineinstructions.backends.llamacpp import LlamaCppBackend

    text = " ".join(f"Sentence {i} says that the river number {i} flows into the sea." for i in range(60))
    conversation = [{"role": "user", "content": f"{text}\n\nCopy the first two sentences exactly."}]
    lookup = LlamaCppBackend(str(test_gguf), prompt_lookup_tokens=4)
    try:
        sampling = SamplingParams(max_tokens=40)
        drafted = lookup.generate([conversation, conversation], sampling)
        plain = llama_backend.generate([conversation], sampling)[0]
        assert drafted[0].prompt_tokens > 512
        assert all(g.ok for g in drafted), drafted[0].error
        assert drafted[0].text == drafted[1].text == plain.text
    finally:
        lookup.close()


def test_grammar_constrains_excerpt_ends_to_five_words(llama_backend):
    import re

    from fineinstructions.prompts import load_prompt

    prompt = load_prompt("instantiate", "v2")
    document = ("The okapi is a giraffid native to the Democratic Republic of the Congo. It has striped legs like "
                "a zebra, but it is most closely related to the giraffe. It eats leaves, fruit and fungi.")
    conversation = prompt.conversation(document=document, template="What is <fi>name of an animal</fi>?")
    text = llama_backend.generate([conversation], SamplingParams(max_tokens=80, grammar=prompt.grammar))[0].text
    assert text == "null" or text.startswith("<values>")
    for body in re.findall(r"<excerpt>(.*?)</excerpt>", text, re.S):
        assert all(len(end.split()) <= 5 for end in body.split("<...>")), body
