"""Supervised data for the student: chat-rendered prompt masked out, completion + eos trained on."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fineinstructions.distill.examples import DistillError, Example
from fineinstructions.distill.sft import StudentError, build_sft_data, prepare_tokenizer, tokenize_example

MESSAGES = [{"role": "user", "content": "How do I install numpy on windows 10"}]
COMPLETION = '{"template": "How do I install <fi>package</fi>?", "compatible_document_description": "Docs."}'


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from fineinstructions.backends.convert import resolve_hf_folder

    return AutoTokenizer.from_pretrained(resolve_hf_folder("smollm2-135m-instruct"))


def example(completion: str = COMPLETION, content: str = MESSAGES[0]["content"]) -> Example:
    return Example(messages=[{"role": "user", "content": content}], completion=completion, stage="templatize",
                   prompt_version="templatize-query_templatizer", teacher_model="t")


def test_prompt_tokens_are_masked_and_completion_plus_eos_are_not(tokenizer):
    tokenized = tokenize_example(tokenizer, MESSAGES, COMPLETION)
    ids, mask = tokenized.input_ids, tokenized.loss_mask
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m]) == rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == COMPLETION
    # The mask is one block: prompt first, then the completion to the end.
    assert mask == [False] * tokenized.prompt_tokens + [True] * tokenized.completion_tokens


def test_long_examples_are_dropped_and_counted_never_cut(tokenizer):
    short, long_ = example(), example(completion=COMPLETION + " " + "word " * 600)
    data, stats = build_sft_data(tokenizer, [short, long_, short], max_seq_len=256)
    assert stats.too_long == 1 and stats.kept == 2 and len(data) == 2
    width = len(tokenize_example(tokenizer, MESSAGES, COMPLETION).input_ids)
    assert data.seq_len == width  # padded to the longest example kept, not to max_seq_len
    assert data.loss_mask[:, -1].all() and data.input_ids[0, -1] == tokenizer.eos_token_id
    with pytest.raises(DistillError, match="longer than max_seq_len=16"):
        build_sft_data(tokenizer, [short], max_seq_len=16)


def test_padding_is_masked_and_packing_fills_rows(tokenizer):
    examples = [example(), example(completion='{"template": "x <fi>y</fi>", "compatible_document_description": "z"}')]
    data, stats = build_sft_data(tokenizer, examples, max_seq_len=512)
    lengths = [len(tokenize_example(tokenizer, e.messages, e.completion).input_ids) for e in examples]
    assert not data.loss_mask[1, lengths[1]:].any()  # right padding is never a target
    assert stats.tokens == sum(lengths) and stats.rows == 2
    packed, packed_stats = build_sft_data(tokenizer, examples * 3, max_seq_len=512, pack=True)
    assert len(packed) == 1 and packed.seq_len == 512 and packed_stats.kept == 6
    assert int(packed.loss_mask.sum()) == 3 * int(data.loss_mask.sum())
    assert np.count_nonzero(packed.input_ids[0] == tokenizer.eos_token_id) >= 6


def test_a_student_without_chat_template_or_eos_gets_a_clear_error(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(StudentError, match="no chat template.*--chat-template"):
        prepare_tokenizer(bare)
    prepare_tokenizer(bare, "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
                            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    assert tokenize_example(bare, MESSAGES, "ok").input_ids[:3] == bare("<|user|>\n", add_special_tokens=False)[
        "input_ids"][:3]
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(StudentError, match="no eos token"):
        prepare_tokenizer(no_eos)
    broken = copy.deepcopy(tokenizer)
    with pytest.raises(StudentError, match="cannot render"):
        prepare_tokenizer(broken, "{{ messages[0].nope() }}")
