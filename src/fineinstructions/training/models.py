"""Named decoder-only model sizes (Llama architecture) from a few million parameters for a CPU to ~1B for a GPU.

Parameter counts below are for the default 8192-token vocabulary; the vocabulary always comes from the tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from fineinstructions.errors import FineInstructionsError

PRESETS: dict[str, dict[str, Any]] = {
    # ~3.3M parameters: trains on a laptop CPU in minutes.
    "tiny": {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
             "intermediate_size": 512, "max_position_embeddings": 1024, "tie_word_embeddings": True},
    # ~20M parameters.
    "small": {"hidden_size": 384, "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 6,
              "intermediate_size": 1280, "max_position_embeddings": 1024, "tie_word_embeddings": True},
    # ~105M parameters (GPT-2 small scale).
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
             "intermediate_size": 2560, "max_position_embeddings": 2048, "tie_word_embeddings": True},
    # ~1.0B parameters (TinyLlama's shape: grouped-query attention, untied output layer).
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
           "intermediate_size": 5632, "max_position_embeddings": 2048, "tie_word_embeddings": False},
}


class ModelConfigError(FineInstructionsError):
    """Unknown preset, or settings the preset cannot take (e.g. seq_len beyond its positions)."""


def preset_config(name: str, vocab_size: int, seq_len: int | None = None, eos_token_id: int | None = None,
                  pad_token_id: int | None = None, bos_token_id: int | None = None) -> LlamaConfig:
    """The LlamaConfig of preset `name` for a tokenizer of `vocab_size` tokens."""
    if name not in PRESETS:
        raise ModelConfigError(f"unknown model size {name!r}; choose one of {', '.join(PRESETS)}")
    shape = PRESETS[name]
    if seq_len is not None and seq_len > shape["max_position_embeddings"]:
        raise ModelConfigError(f"seq_len {seq_len} is longer than the {name} preset's "
                               f"{shape['max_position_embeddings']} positions; lower --seq-len or pick a larger size")
    return LlamaConfig(vocab_size=vocab_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                       bos_token_id=bos_token_id, attention_bias=False, mlp_bias=False, rms_norm_eps=1e-5,
                       initializer_range=0.02, use_cache=True, **shape)


def build_model(name: str, vocab_size: int, seed: int = 0, seq_len: int | None = None,
                eos_token_id: int | None = None, pad_token_id: int | None = None,
                bos_token_id: int | None = None) -> LlamaForCausalLM:
    """A freshly initialised model of preset `name`; the same seed gives the same weights."""
    config = preset_config(name, vocab_size, seq_len, eos_token_id, pad_token_id, bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied input/output embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
