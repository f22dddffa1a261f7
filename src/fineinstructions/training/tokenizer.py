"""The tokenizer shared by both training arms: a small byte-level BPE trained from scratch, or an existing one.

The from-scratch tokenizer has the special tokens `<|endoftext|>` (eos and pad), `<|user|>` and `<|assistant|>` and a
chat template that renders each message as `<|{role}|>\\n{content}\\n` with `<|assistant|>\\n` as the generation
prompt. It is saved as a `PreTrainedTokenizerFast` folder, so `AutoTokenizer.from_pretrained` and
`apply_chat_template` work on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.atomic import atomic_dir

EOS = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS = (EOS, USER, ASSISTANT)

# Written with string literals: HF renders templates with trim_blocks, which would eat newlines after tags.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class TokenizerError(FineInstructionsError):
    """The tokenizer cannot be used for training (no eos token, cannot be loaded, nothing to train on)."""


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8192,
                        min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` with our special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise TokenizerError(f"vocab_size {vocab_size} is too small for a byte-level BPE (need at least 260)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    seen = {"n": 0}

    def counted() -> Iterable[str]:
        for text in texts:
            if text:
                seen["n"] += 1
                yield text

    tokenizer.train_from_iterator(counted(), trainer=trainer)
    if seen["n"] == 0:
        raise TokenizerError("no text to train the tokenizer on")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=[USER, ASSISTANT], model_max_length=1_000_000,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """An existing tokenizer: a local folder, a registry model name (converted once), or a Hub name.

    A tokenizer without a chat template gets ours; one without an eos token is refused.
    """
    path = Path(name_or_path).expanduser()
    source: str | Path = path
    if not path.is_dir():
        from fineinstructions.backends.models import REGISTRY

        if name_or_path in REGISTRY:
            from fineinstructions.backends.convert import resolve_hf_folder

            source = resolve_hf_folder(name_or_path)
        else:
            source = name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise TokenizerError(f"cannot load tokenizer {name_or_path!r}: {err}") from err
    return check_tokenizer(tokenizer, name_or_path)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str = "tokenizer") -> PreTrainedTokenizerBase:
    """Refuse a tokenizer with no eos token; give one without a chat template ours; pad falls back to eos."""
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise TokenizerError(f"{name} has no eos token: documents and answers must end with one. Use a tokenizer "
                             "that defines eos_token, or leave --tokenizer unset to train one")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save atomically (temporary folder, then rename)."""
    with atomic_dir(folder) as tmp:
        tokenizer.save_pretrained(tmp)


def tokenizer_sha(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of what decides the token ids: vocabulary, merges, special tokens and chat template."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        digest.update(json.dumps(model.get("merges", []), ensure_ascii=False).encode())
    digest.update(json.dumps([tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token,
                              sorted(tokenizer.all_special_tokens)]).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return digest.hexdigest()[:16]
