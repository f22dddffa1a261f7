"""Model presets: sizes, vocabulary from the tokenizer, position limits."""

from __future__ import annotations

import pytest
import torch

from fineinstructions.training.models import PRESETS, ModelConfigError, build_model, count_parameters, preset_config

EXPECTED_MILLIONS = {"tiny": (3, 5), "small": (15, 25), "base": (90, 130), "1b": (950, 1200)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_sizes(name: str) -> None:
    with torch.device("meta"):  # no memory, no init time: only the shapes
        model = build_model(name, vocab_size=8192)
    low, high = EXPECTED_MILLIONS[name]
    assert low * 1e6 <= count_parameters(model) <= high * 1e6
    assert model.config.vocab_size == 8192
    assert model.config.tie_word_embeddings == (name != "1b")


def test_same_seed_same_weights_and_special_ids() -> None:
    a = build_model("tiny", vocab_size=300, seed=1, eos_token_id=0, pad_token_id=0)
    b = build_model("tiny", vocab_size=300, seed=1, eos_token_id=0, pad_token_id=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.generation_config.eos_token_id == 0 and a.config.pad_token_id == 0
    assert count_parameters(a) < sum(p.numel() for p in a.state_dict().values())  # tied embedding counted once


def test_bad_presets_and_lengths() -> None:
    with pytest.raises(ModelConfigError, match="unknown model size 'huge'"):
        preset_config("huge", 100)
    with pytest.raises(ModelConfigError, match="seq_len 4096 is longer than the tiny preset's 1024 positions"):
        preset_config("tiny", 100, seq_len=4096)
