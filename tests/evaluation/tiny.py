"""Tiny randomly initialised Llama models with a from-scratch byte-level BPE tokenizer, for fast real-model tests."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
SPECIAL = ["<|endoftext|>", "<|user|>", "<|assistant|>"]
CORPUS = [
    "The capital of France is Paris. Paris is a large city on the river Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "How do plants make food? Plants use sunlight, water and carbon dioxide to make sugar.",
    "A triangle has three sides and three angles. The angles add up to one hundred and eighty degrees.",
    "Bees make honey from the nectar of flowers and store it in wax combs.",
]


def make_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a few sentences, with the project's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIAL[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_llama(folder: Path, seed: int = 0, prompt_format: str = "chat", trained_on: str = "pairs",
                    tokenizer=None) -> Path:
    """Save a 2-layer random Llama + the from-scratch tokenizer + fineinstructions-model.json in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or make_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    meta = {"trained_on": trained_on, "prompt_format": prompt_format, "tokens_seen": 0,
            "config_fingerprint": f"tiny-{seed}", "tokenizer_sha": "tiny"}
    (folder / "fineinstructions-model.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder
