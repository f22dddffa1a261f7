"""Supervised fine-tuning data for a student: the prompt rendered by the student's chat template, the
teacher's completion and the end-of-sequence token, with the loss on the completion only.

The prompt and the completion are tokenized separately, the way the student meets them when it is served
(the prompt is encoded, then the answer is generated token by token), so no token straddles the boundary.
An example longer than `max_seq_len` is dropped and counted, never cut inside its answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fineinstructions.distill.examples import DistillError, Example
from fineinstructions.errors import FineInstructionsError
from fineinstructions.hashing import short_hash
from fineinstructions.training.loop import PackedData

MODEL_META = "fineinstructions-model.json"


class StudentError(DistillError):
    """A student model or tokenizer that cannot be fine-tuned as asked (no chat template, no eos, not found)."""


@dataclass
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[bool]  # True: a completion token (or the final eos), trained on

    @property
    def prompt_tokens(self) -> int:
        return self.loss_mask.index(True) if True in self.loss_mask else len(self.loss_mask)

    @property
    def completion_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass
class SFTStats:
    examples: int = 0
    kept: int = 0
    too_long: int = 0
    rows: int = 0
    seq_len: int = 0
    tokens: int = 0  # real (not padding) tokens
    completion_tokens: int = 0
    longest: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def prepare_tokenizer(tokenizer: Any, chat_template: str | None = None) -> None:
    """Check (and, with `chat_template`, set) what fine-tuning needs: a chat template and an eos token.

    `chat_template` is a Jinja template or a path to a file holding one. Raises StudentError otherwise.
    """
    if chat_template:
        path = Path(chat_template).expanduser()
        tokenizer.chat_template = path.read_text(encoding="utf-8") if path.is_file() else chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise StudentError("the student's tokenizer has no chat template, so its prompts cannot be rendered as "
                           "chat; pass --chat-template (a Jinja template or a file holding one)")
    if tokenizer.eos_token_id is None:
        raise StudentError("the student's tokenizer has no eos token: the student could not learn where an answer "
                           "ends; use a tokenizer with an eos token")
    try:
        render_prompt(tokenizer, [{"role": "user", "content": "test"}])
    except Exception as err:  # a Jinja error of any kind: report it, not a traceback from inside the template
        raise StudentError(f"the student's chat template cannot render a conversation: {err}") from err


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text the student continues: its chat template with the generation prompt appended."""
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))


def tokenize_example(tokenizer: Any, messages: Sequence[dict[str, str]], completion: str) -> TokenizedExample:
    """Prompt tokens (masked out), then completion tokens and eos (trained on)."""
    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer = tokenizer(completion.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return TokenizedExample(list(prompt) + list(answer), [False] * len(prompt) + [True] * len(answer))


def build_sft_data(tokenizer: Any, examples: Sequence[Example], max_seq_len: int,
                   pack: bool = False) -> tuple[PackedData, SFTStats]:
    """Tokenize examples into training rows; drop (and count) those longer than `max_seq_len`.

    Padded (default): one example per row, right-padded with masked-out tokens to the longest example kept,
    so attention never crosses examples. Packed: examples concatenated first-fit into rows of `max_seq_len`
    (fewer padding tokens, but an example attends to the ones before it in its row).
    """
    if max_seq_len < 8:
        raise DistillError(f"max_seq_len must be at least 8, got {max_seq_len}")
    stats = SFTStats(examples=len(examples))
    kept: list[TokenizedExample] = []
    for example in examples:
        tokenized = tokenize_example(tokenizer, example.messages, example.completion)
        if len(tokenized.input_ids) > max_seq_len:
            stats.too_long += 1
            continue
        kept.append(tokenized)
    if not kept:
        raise DistillError(f"all {len(examples)} examples are longer than max_seq_len={max_seq_len} tokens "
                           f"under the student's tokenizer; raise --max-seq-len or use a shorter student prompt")
    stats.kept = len(kept)
    stats.tokens = sum(len(t.input_ids) for t in kept)
    stats.completion_tokens = sum(t.completion_tokens for t in kept)
    stats.longest = max(len(t.input_ids) for t in kept)
    rows = _pack(kept, max_seq_len) if pack else [[t] for t in kept]
    seq_len = max_seq_len if pack else stats.longest
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = np.full((len(rows), seq_len), pad, dtype=np.int32)
    loss_mask = np.zeros((len(rows), seq_len), dtype=bool)
    for r, row in enumerate(rows):
        ids = [i for t in row for i in t.input_ids]
        mask = [m for t in row for m in t.loss_mask]
        input_ids[r, : len(ids)] = ids
        loss_mask[r, : len(mask)] = mask
    stats.rows, stats.seq_len = len(rows), seq_len
    return PackedData(input_ids, loss_mask), stats


def _pack(examples: list[TokenizedExample], width: int) -> list[list[TokenizedExample]]:
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for example in examples:
        size = len(example.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            rows.append([example])
            room.append(width - size)
        else:
            rows[slot].append(example)
            room[slot] -= size
    return rows


# -- student model ------------------------------------------------------------------------------------------


@dataclass
class Student:
    model: Any
    tokenizer: Any
    path: str  # the resolved folder, or the Hub name
    dtype: str  # of the weights as published (its config), the dtype the final folder is saved in by default


def load_student(name_or_path: str, chat_template: str | None = None) -> Student:
    """A student in float32 for training: a model folder, a registry model (its GGUF converted once into a
    folder) or a Hugging Face Hub name (downloaded when online)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from fineinstructions.backends.transformers_engine import resolve_model_path

    try:
        resolved = resolve_model_path(name_or_path)
        config = AutoConfig.from_pretrained(resolved)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (FineInstructionsError, RuntimeError, OSError, ValueError) as err:  # not a model, not found, ...
        raise StudentError(f"cannot load student {name_or_path!r}: {err}") from err
    prepare_tokenizer(tokenizer, chat_template)
    configured = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = str(configured).replace("torch.", "") if configured else "float32"
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise StudentError(f"student {name_or_path!r} is not a causal language model transformers can load: "
                           f"{err}") from err
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    return Student(model, tokenizer, resolved, dtype if dtype in ("float32", "bfloat16", "float16") else "float32")


def tokenizer_sha(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary, special tokens and chat template."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.eos_token, tokenizer.pad_token,
                          getattr(tokenizer, "chat_template", None)], ensure_ascii=False, default=str)
    return short_hash(payload)


def save_model_folder(model: Any, tokenizer: Any, target: Path, meta: dict[str, Any], dtype: str = "float32") -> Path:
    """Write model (weights in `dtype`) + tokenizer + fineinstructions-model.json into `target` atomically."""
    import torch

    from fineinstructions.io.atomic import atomic_dir
    from fineinstructions.training.loop import save_pretrained_quietly

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise DistillError(f"unknown save dtype {dtype!r}")
    original = next(model.parameters()).dtype
    with atomic_dir(target) as tmp:
        tmp.chmod(0o755)
        model.to(torch_dtype)
        try:
            save_pretrained_quietly(model, tmp)
        finally:
            model.to(original)
        tokenizer.save_pretrained(tmp)
        (tmp / MODEL_META).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return target
