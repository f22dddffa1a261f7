"""The two token-matched training sets built from the same source documents.

Arm "pairs": each kept (instruction, answer) pair rendered with the chat template (user = instruction, assistant =
answer) and followed by the eos token. Arm "documents": the raw text of the same documents (each once), followed by
the eos token. Documents are held out by a hash of their id, so neither arm ever trains on a held-out document.

Both arms are shuffled with the seed, concatenated and cut into `seq_len` blocks. Matching: both arms train on exactly
the same number of blocks. Validation blocks for eval_loss are the *last* `eval_blocks` blocks of each arm's own
packing; the training blocks are the first `train_blocks` of each arm, with
`train_blocks = min(budget_blocks, blocks(a) - eval_blocks, blocks(b) - eval_blocks)`. So an arm with blocks to spare
takes its validation slice from them, and when an arm has none the same number of blocks is carved from both — the
match stays exact either way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.training.loop import PackedData

ARMS = ("pairs", "documents")
REQUIRED_COLUMNS = ("document_id", "text", "instantiated_instruction", "answer")
_READ_COLUMNS = REQUIRED_COLUMNS + ("template_id",)


class TrainDataError(FineInstructionsError):
    """The source holds no usable pairs (missing folder, no Parquet, missing columns, no rows)."""


class InsufficientData(FineInstructionsError):
    """An arm has fewer tokens than the requested budget."""


@dataclass(frozen=True)
class PairRow:
    """The columns of a kept pair that training uses."""

    document_id: str
    text: str
    instruction: str
    answer: str
    template_id: str = ""


@dataclass
class ArmData:
    """One arm's packed blocks with its counts (per epoch)."""

    name: str
    train: PackedData
    eval: PackedData | None
    examples: int
    documents: int
    tokens_available: int
    blocks_available: int

    def counts(self) -> dict[str, Any]:
        return {"examples": self.examples, "documents": self.documents, "tokens_available": self.tokens_available,
                "blocks_available": self.blocks_available, "train_blocks": len(self.train),
                "train_tokens": self.train.num_tokens, "train_loss_tokens": self.train.num_loss_tokens,
                "eval_blocks": len(self.eval) if self.eval is not None else 0}


@dataclass
class Split:
    """Training pairs and held-out pairs, split by document."""

    train: list[PairRow]
    heldout: list[PairRow]
    heldout_ids: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------- reading


def dataset_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet files of a run folder (its `dataset/`), a dataset folder, or one Parquet file — or of several."""
    if not isinstance(source, str | Path):
        files = [file for one in source for file in dataset_files(one)]
        if not files:
            raise TrainDataError("no source given: name at least one run folder, dataset folder or Parquet file")
        return files
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise TrainDataError(f"{path} is not a Parquet file of pairs")
        return [path]
    if not path.is_dir():
        raise TrainDataError(f"{path} does not exist (expected a run folder, a dataset folder or a Parquet file)")
    if RunFolder(path).dataset.is_dir():
        path = RunFolder(path).dataset
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise TrainDataError(f"{path} holds no Parquet files of pairs (is the run finished? a run folder keeps its "
                             "kept pairs in dataset/part-*.parquet)")
    return files


def read_pairs(source: str | Path | Sequence[str | Path]) -> list[PairRow]:
    """The kept pairs of `source` (one or several) with non-empty instruction, answer and document text."""
    rows: list[PairRow] = []
    for file in dataset_files(source):
        names = set(pq.read_schema(file).names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise TrainDataError(f"{file} lacks the column(s) {', '.join(missing)}; training needs "
                                 f"{', '.join(REQUIRED_COLUMNS)} (a dataset written by the pipeline has them)")
        table = pq.read_table(file, columns=[c for c in _READ_COLUMNS if c in names])
        for row in table.to_pylist():
            if row["instantiated_instruction"] and row["answer"] and row["text"] and row["document_id"] is not None:
                rows.append(PairRow(str(row["document_id"]), row["text"], row["instantiated_instruction"],
                                    row["answer"], row.get("template_id") or ""))
    if not rows:
        raise TrainDataError(f"{source} holds no pairs with an instruction, an answer and a document text")
    return rows


def data_sha(pairs: Sequence[PairRow]) -> str:
    """A short hash of the pairs' content (what the run trains on)."""
    digest = hashlib.sha256()
    for p in pairs:
        for value in (p.document_id, p.text, p.instruction, p.answer):
            digest.update(value.encode("utf-8", "surrogatepass"))
            digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _doc_hash(document_id: str) -> float:
    return int.from_bytes(hashlib.sha256(document_id.encode("utf-8")).digest()[:8], "big") / 2**64


def split_heldout(pairs: Sequence[PairRow], fraction: float = 0.1, documents: int | None = None) -> Split:
    """Hold out documents by a hash of their id: those whose hash is below `fraction`, or, when `documents` is set,
    the `documents` lowest hashes (the same ids for any seed, so evaluations stay comparable)."""
    if not 0 <= fraction < 1:
        raise TrainDataError(f"heldout fraction must be in [0, 1), got {fraction}")
    ids = sorted({p.document_id for p in pairs}, key=lambda d: (_doc_hash(d), d))
    if documents is not None:
        if documents < 0 or documents >= len(ids):
            raise TrainDataError(f"cannot hold out {documents} of {len(ids)} documents; at least one must remain "
                                 "for training")
        held = set(ids[:documents])
    else:
        held = {d for d in ids if _doc_hash(d) < fraction}
        if len(held) == len(ids):
            raise TrainDataError(f"all {len(ids)} documents fell into the held-out split; lower --heldout-fraction")
    return Split(train=[p for p in pairs if p.document_id not in held],
                 heldout=[p for p in pairs if p.document_id in held],
                 heldout_ids=[d for d in ids if d in held])


def unique_documents(pairs: Sequence[PairRow]) -> list[tuple[str, str]]:
    """(document_id, text) of each document once, in first-seen order."""
    seen: dict[str, str] = {}
    for p in pairs:
        seen.setdefault(p.document_id, p.text)
    return list(seen.items())


# -------------------------------------------------------------------------------------------------------- tokenizing


def _completion_suffix(tokenizer: PreTrainedTokenizerBase, full: str) -> str:
    eos = tokenizer.eos_token
    return "" if full.rstrip().endswith(eos) else eos


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[PairRow], mask_instructions: bool = False,
                 batch: int = 1024) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and loss mask of each pair: chat template (user = instruction, assistant = answer) + eos.

    The prompt (everything up to and including the generation prompt) and the rest are tokenized separately, so
    the boundary is exact; with `mask_instructions` the prompt tokens get loss_mask False.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        prompts, rests = [], []
        for p in chunk:
            user = [{"role": "user", "content": p.instruction}]
            prompt = str(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True))
            full = str(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": p.answer}],
                                                     tokenize=False))
            if not full.startswith(prompt):
                raise TrainDataError("the tokenizer's chat template does not render the generation prompt as a prefix "
                                     "of the full conversation; use another tokenizer or leave --tokenizer unset")
            prompts.append(prompt)
            rests.append(full[len(prompt):] + _completion_suffix(tokenizer, full))
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rest_ids = tokenizer(rests, add_special_tokens=False)["input_ids"]
        for a, b in zip(prompt_ids, rest_ids, strict=True):
            ids = np.asarray(a + b, dtype=np.int32)
            mask = np.ones(len(ids), dtype=bool)
            if mask_instructions:
                mask[:len(a)] = False
            out.append((ids, mask))
    return out


def encode_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                     batch: int = 1024) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids of each document followed by eos; every token is trained on."""
    eos = int(tokenizer.eos_token_id)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(texts), batch):
        for ids in tokenizer(list(texts[start:start + batch]), add_special_tokens=False)["input_ids"]:
            arr = np.asarray(ids + [eos], dtype=np.int32)
            out.append((arr, np.ones(len(arr), dtype=bool)))
    return out


# ----------------------------------------------------------------------------------------------------------- packing


def pack(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, seed: int) -> PackedData:
    """Shuffle examples with `seed`, concatenate them and chop into `seq_len` blocks (the remainder is dropped)."""
    if not examples:
        return PackedData(np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), bool))
    order = np.random.default_rng(seed).permutation(len(examples))
    ids = np.concatenate([examples[i][0] for i in order])
    mask = np.concatenate([examples[i][1] for i in order])
    n = len(ids) // seq_len
    return PackedData(ids[:n * seq_len].reshape(n, seq_len), mask[:n * seq_len].reshape(n, seq_len))


def eval_block_count(blocks: int, fraction: float, cap: int = 256) -> int:
    """Validation blocks per arm: `fraction` of the blocks, at least 1, at most `cap` (0 when fraction is 0)."""
    if fraction <= 0:
        return 0
    return max(1, min(cap, math.ceil(fraction * blocks)))


def match_arms(encoded: dict[str, list[tuple[np.ndarray, np.ndarray]]], seq_len: int, seed: int,
               tokens: int | None = None, eval_fraction: float = 0.02,
               documents: dict[str, int] | None = None) -> dict[str, ArmData]:
    """Pack every arm and cut all of them to the same number of training blocks (see the module docstring).

    `tokens` None: the budget is the smallest arm's token count; else exactly `tokens // seq_len` blocks, and
    InsufficientData when an arm has too few tokens for that plus its validation blocks.
    """
    totals = {name: int(sum(len(ids) for ids, _ in examples)) for name, examples in encoded.items()}
    packed = {name: pack(examples, seq_len, seed) for name, examples in encoded.items()}
    smallest = min(totals.values())
    budget_tokens = smallest if tokens is None else tokens
    budget_blocks = budget_tokens // seq_len
    n_eval = eval_block_count(budget_blocks, eval_fraction)
    counts = ", ".join(f"{name}: {totals[name]:,} tokens ({len(packed[name]):,} blocks of {seq_len})"
                       for name in encoded)
    if tokens is not None:
        if tokens < seq_len:
            raise InsufficientData(f"--tokens {tokens} is less than one block of seq_len {seq_len}")
        short = [name for name in encoded if len(packed[name]) < budget_blocks + n_eval]
        if short:
            fit = max(0, (min(len(p) for p in packed.values()) - n_eval)) * seq_len
            verb = "has" if len(short) == 1 else "have"
            raise InsufficientData(
                f"--tokens {tokens:,} needs {budget_blocks:,} training + {n_eval} validation blocks of {seq_len} "
                f"tokens per arm, but {' and '.join(short)} {verb} fewer ({counts}). Lower --tokens to at most "
                f"{fit:,}, leave it unset to use the smaller arm's count, or generate more pairs.")
    train_blocks = min([budget_blocks] + [len(p) - n_eval for p in packed.values()])
    if train_blocks < 1:
        raise InsufficientData(f"not enough tokens for one training block of {seq_len} plus {n_eval} validation "
                               f"block(s) per arm ({counts}). Use more pairs, a smaller --seq-len, or "
                               "--eval-fraction 0.")
    out = {}
    for name, data in packed.items():
        evaluation = data.slice(slice(len(data) - n_eval, len(data))) if n_eval else None
        out[name] = ArmData(name=name, train=data.slice(slice(0, train_blocks)), eval=evaluation,
                            examples=len(encoded[name]), documents=(documents or {}).get(name, 0),
                            tokens_available=totals[name], blocks_available=len(data))
    return out


def build_arms(tokenizer: PreTrainedTokenizerBase, train_pairs: Sequence[PairRow], seq_len: int, seed: int,
               tokens: int | None = None, mask_instructions: bool = False,
               eval_fraction: float = 0.02) -> dict[str, ArmData]:
    """Tokenize both arms from the same training pairs and return them token-matched."""
    docs = unique_documents(train_pairs)
    encoded = {"pairs": encode_pairs(tokenizer, train_pairs, mask_instructions),
               "documents": encode_documents(tokenizer, [text for _, text in docs])}
    n_docs = len(docs)
    return match_arms(encoded, seq_len, seed, tokens, eval_fraction, {"pairs": n_docs, "documents": n_docs})


def tokenizer_texts(train_pairs: Sequence[PairRow]) -> list[str]:
    """What the from-scratch tokenizer learns from: both arms' training text (documents once, instructions,
    answers)."""
    return [text for _, text in unique_documents(train_pairs)] + [p.instruction for p in train_pairs] + [
        p.answer for p in train_pairs]
