"""The token-matched training sets ("arms") built from the same source documents.

An arm is made of one kind of text:

- "pairs": kept FineInstructions pairs, each rendered stand-alone as the paper trains them,
  `Instruction: {instruction}\n\nAnswer: {answer}` (`pair_format` "instruction"), or with the tokenizer's chat
  template (user = instruction, assistant = answer; "chat"), followed by the eos token;
- "texts": the texts of a baseline recipe's run (WRAP rephrasings, Nemotron-CC QA, Instruction Pre-Training), each
  in its recipe's own layout, followed by the eos token;
- "documents": raw documents followed by the eos token: the documents a run read (from its config.yaml), or,
  for a folder of pairs alone, the documents those pairs came from (each once).

Documents are held out by a hash of their id across every arm, so no arm ever trains on a held-out document.

Every arm is shuffled with the seed, concatenated and cut into `seq_len` blocks. Matching: all arms train on exactly
the same number of blocks. Validation blocks for eval_loss are the *last* `eval_blocks` blocks of each arm's own
packing; the training blocks are the first `train_blocks` of each arm, with
`train_blocks = min(budget_blocks, blocks(arm) - eval_blocks for every arm)`. So an arm with blocks to spare
takes its validation slice from them, and when an arm has none the same number of blocks is carved from all — the
match stays exact either way.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.training.loop import PackedData

log = logging.getLogger(__name__)

ARMS = ("pairs", "documents")  # the two arms a training run from pairs alone builds
ARM_KINDS = ("pairs", "texts", "documents")
PAIR_FORMATS = ("instruction", "chat")
REQUIRED_COLUMNS = ("document_id", "text", "instantiated_instruction", "answer")
_READ_COLUMNS = REQUIRED_COLUMNS + ("template_id",)
TEXT_COLUMNS = ("document_id", "text")
_ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SEED_SUFFIX = re.compile(r"-seed\d+$")
_RESERVED_NAMES = frozenset({"tokenizer", "manifest.json", "heldout.jsonl", "checkpoints"})  # TRAIN_DIR's own


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


@dataclass(frozen=True)
class TextRow:
    """A text an arm trains on as it is (a recipe's text or a raw document), with the document it came from."""

    document_id: str
    text: str


@dataclass(frozen=True)
class ArmSpec:
    """One arm of a training run: its name, the kind of text it trains on and where that text is read from."""

    name: str
    kind: str
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _ARM_NAME.fullmatch(self.name) or _SEED_SUFFIX.search(self.name) or self.name in _RESERVED_NAMES:
            raise TrainDataError(f"arm name {self.name!r} must be letters, digits, '.', '_' or '-' (<= 64), not end "
                                 f"in -seed<N> (the models' seed suffix) and not be one of "
                                 f"{', '.join(sorted(_RESERVED_NAMES))}")
        if self.kind not in ARM_KINDS:
            raise TrainDataError(f"arm {self.name!r}: kind must be one of {', '.join(ARM_KINDS)}, got {self.kind!r}")
        if not self.sources:
            raise TrainDataError(f"arm {self.name!r} names no source")

    @classmethod
    def parse(cls, text: str) -> ArmSpec:
        """`NAME=KIND:PATH[,PATH...]`, e.g. `wrap=texts:runs/x/wrap` or `documents=documents:runs/x/fi`."""
        name, sep, rest = text.partition("=")
        kind, colon, paths = rest.partition(":")
        sources = tuple(p.strip() for p in paths.split(",") if p.strip())
        if not sep or not colon or not sources:
            raise TrainDataError(f"an arm is given as NAME=KIND:PATH[,PATH...] (KIND one of {', '.join(ARM_KINDS)}), "
                                 f"got {text!r}")
        return cls(name.strip(), kind.strip(), sources)


ArmRows = list[PairRow] | list[TextRow]


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
    # A run's parts are dataset/rank-NNNNN/part-NNNNNN.parquet; an older run's or a plain folder's lie at the top.
    files = sorted(path.glob("*.parquet")) + sorted(path.glob("rank-*/*.parquet"))
    if not files:
        raise TrainDataError(f"{path} holds no Parquet files of pairs (is the run finished? a run folder keeps its "
                             "kept pairs in dataset/part-*.parquet)")
    return files


def _dataset_rows(source: str | Path | Sequence[str | Path], required: Sequence[str], read: Sequence[str],
                  what: str, hint: str) -> Iterator[dict[str, Any]]:
    """The rows (`read` columns present) of every Parquet file of `source`; a file lacking `required` columns is
    refused, saying `what` needs them and where they are found (`hint`)."""
    for file in dataset_files(source):
        names = set(pq.read_schema(file).names)
        missing = [c for c in required if c not in names]
        if missing:
            raise TrainDataError(f"{file} lacks the column(s) {', '.join(missing)}; {what} needs "
                                 f"{', '.join(required)} ({hint})")
        yield from pq.read_table(file, columns=[c for c in read if c in names]).to_pylist()


def read_pairs(source: str | Path | Sequence[str | Path]) -> list[PairRow]:
    """The kept pairs of `source` (one or several) with non-empty instruction, answer and document text."""
    rows = [PairRow(str(row["document_id"]), row["text"], row["instantiated_instruction"], row["answer"],
                    row.get("template_id") or "")
            for row in _dataset_rows(source, REQUIRED_COLUMNS, _READ_COLUMNS,
                                     "training on pairs", "a dataset written by the pipeline has them")
            if row["instantiated_instruction"] and row["answer"] and row["text"] and row["document_id"] is not None]
    if not rows:
        raise TrainDataError(f"{source} holds no pairs with an instruction, an answer and a document text")
    return rows


def read_texts(source: str | Path | Sequence[str | Path]) -> list[TextRow]:
    """The texts of a recipe run's dataset (or any Parquet with `document_id` and `text`), non-empty ones only."""
    rows = [TextRow(str(row["document_id"]), row["text"])
            for row in _dataset_rows(source, TEXT_COLUMNS, TEXT_COLUMNS,
                                     "a texts arm", "a recipe run's dataset has them")
            if row["text"] and row["document_id"] is not None]
    if not rows:
        raise TrainDataError(f"{source} holds no texts")
    return rows


def read_documents(source: str | Path | Sequence[str | Path]) -> list[TextRow]:
    """The raw documents behind `source`: for a run folder with a config.yaml, every document the run read (its
    `documents` section re-read); for a JSONL/JSON file, or a Parquet file without pairs, its documents (`id` and
    `text`); for a folder or file of pairs alone, the documents of those pairs, each once."""
    if not isinstance(source, str | Path):
        seen: dict[str, str] = {}
        for one in source:
            for row in read_documents(one):
                seen.setdefault(row.document_id, row.text)
        return [TextRow(d, t) for d, t in seen.items()]
    path = Path(source).expanduser()
    folder = RunFolder(path)
    if folder.config_file.is_file():
        return _run_documents(folder)
    if path.is_file() and (path.suffix in (".jsonl", ".json") or (
            path.suffix == ".parquet" and "instantiated_instruction" not in pq.read_schema(path).names)):
        from fineinstructions.config import SourceConfig

        return _source_documents(SourceConfig(kind="path", path=str(path), text_field="text", id_field="id"),
                                 f"{path} holds no documents (rows with `id` and `text`)")
    return pair_documents(read_pairs(source))


def pair_documents(pairs: Sequence[PairRow]) -> list[TextRow]:
    """The documents the pairs came from, each once, in first-seen order."""
    return [TextRow(d, t) for d, t in unique_documents(pairs)]


def _run_documents(folder: RunFolder) -> list[TextRow]:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.pipeline import demo_pairing

    config = PipelineConfig.from_yaml(folder.config_file)
    if demo_pairing(config):
        log.warning("%s chose its documents near its queries; the documents arm takes the documents of its pairs",
                    folder.root)
        return pair_documents(read_pairs(folder.root))
    return _source_documents(config.documents, f"{folder.root}: its documents source yielded no documents")


def _source_documents(source: Any, empty: str) -> list[TextRow]:
    """The non-empty documents of a pipeline documents source (`config.SourceConfig`); `empty`: the error when
    there are none."""
    from fineinstructions.io.read_stats import ReadStats
    from fineinstructions.pipeline import load_documents

    rows = [TextRow(doc.document_id, doc.text) for doc in load_documents(source, ReadStats()) if doc.text.strip()]
    if not rows:
        raise TrainDataError(empty)
    return rows


def read_arm(spec: ArmSpec) -> ArmRows:
    """The rows of one arm, read from its sources."""
    if spec.kind == "pairs":
        return read_pairs(spec.sources)
    if spec.kind == "texts":
        return read_texts(spec.sources)
    return read_documents(spec.sources)


def arms_sha(arms: dict[str, ArmRows]) -> str:
    """A short hash of every arm's content (what the run trains on)."""
    digest = hashlib.sha256()
    for name in sorted(arms):  # the arms' order (which one is the anchor) does not change what is trained
        rows = arms[name]
        digest.update(f"{name}\x01".encode())
        for row in rows:
            values = (row.document_id, row.text, row.instruction, row.answer) if isinstance(row, PairRow) else (
                row.document_id, row.text)
            for value in values:
                digest.update(value.encode("utf-8", "surrogatepass"))
                digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _doc_hash(document_id: str) -> float:
    return int.from_bytes(hashlib.sha256(document_id.encode("utf-8")).digest()[:8], "big") / 2**64


def split_heldout(pairs: Sequence[PairRow], fraction: float = 0.1, documents: int | None = None) -> Split:
    """Hold out documents by a hash of their id: those whose hash is below `fraction`, or, when `documents` is set,
    the `documents` lowest hashes (the same ids for any seed, so evaluations stay comparable)."""
    held = heldout_ids({p.document_id for p in pairs}, fraction, documents)
    return Split(train=[p for p in pairs if p.document_id not in held],
                 heldout=[p for p in pairs if p.document_id in held],
                 heldout_ids=sorted(held, key=lambda d: (_doc_hash(d), d)))


def heldout_ids(document_ids: set[str], fraction: float = 0.1, documents: int | None = None) -> set[str]:
    """The held-out documents among `document_ids` (see `split_heldout`)."""
    if not 0 <= fraction < 1:
        raise TrainDataError(f"heldout fraction must be in [0, 1), got {fraction}")
    ids = sorted(document_ids, key=lambda d: (_doc_hash(d), d))
    if documents is not None:
        if documents < 0 or documents >= len(ids):
            raise TrainDataError(f"cannot hold out {documents} of {len(ids)} documents; at least one must remain "
                                 "for training")
        return set(ids[:documents])
    held = {d for d in ids if _doc_hash(d) < fraction}
    if held and len(held) == len(ids):
        raise TrainDataError(f"all {len(ids)} documents fell into the held-out split; lower --heldout-fraction")
    return held


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
                 batch: int = 1024, pair_format: str = "chat") -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and loss mask of each pair + eos: `Instruction: {instruction}\n\nAnswer: {answer}` ("instruction",
    the paper's) or the chat template (user = instruction, assistant = answer; "chat").

    The prompt (up to "Answer:", or the chat's generation prompt) and the rest are tokenized separately, so the
    boundary is exact; with `mask_instructions` the prompt tokens get loss_mask False.
    """
    from fineinstructions.backends.transformers_engine import INSTRUCTION_PROMPT

    if pair_format not in PAIR_FORMATS:
        raise TrainDataError(f"pair format must be one of {', '.join(PAIR_FORMATS)}, got {pair_format!r}")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        prompts, rests = [], []
        for p in chunk:
            if pair_format == "instruction":
                prompts.append(INSTRUCTION_PROMPT.format(instruction=p.instruction))
                rests.append(f" {p.answer}{tokenizer.eos_token}")
                continue
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
               eval_fraction: float = 0.02, pair_format: str = "chat") -> dict[str, ArmData]:
    """Tokenize both arms of a run from pairs alone (the pairs, their documents) and return them token-matched."""
    arms: dict[str, ArmRows] = {"pairs": list(train_pairs), "documents": pair_documents(train_pairs)}
    encoded = encode_arms(tokenizer, arms, mask_instructions, pair_format)
    return match_arms(encoded, seq_len, seed, tokens, eval_fraction, arm_documents(arms))


def encode_arms(tokenizer: PreTrainedTokenizerBase, arms: dict[str, ArmRows], mask_instructions: bool = False,
                pair_format: str = "instruction") -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Token ids and loss masks of every arm's examples: pairs in `pair_format`, texts and documents as they are."""
    encoded = {}
    for name, rows in arms.items():
        pairs = [r for r in rows if isinstance(r, PairRow)]
        encoded[name] = (encode_pairs(tokenizer, pairs, mask_instructions, pair_format=pair_format) if pairs
                         else encode_documents(tokenizer, [r.text for r in rows]))
    return encoded


def arm_documents(arms: dict[str, ArmRows]) -> dict[str, int]:
    """How many distinct source documents each arm's rows come from."""
    return {name: len({r.document_id for r in rows}) for name, rows in arms.items()}


def tokenizer_texts(train_pairs: Sequence[PairRow]) -> list[str]:
    """What the from-scratch tokenizer learns from in a run from pairs alone (see `arm_tokenizer_texts`)."""
    return arm_tokenizer_texts({"pairs": list(train_pairs)})


def arm_tokenizer_texts(arms: dict[str, ArmRows]) -> list[str]:
    """What the from-scratch tokenizer learns from: every arm's text (instructions, answers, recipe texts), each
    distinct text once (so a document read by a pairs arm and a documents arm counts once)."""
    texts: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        if key not in seen:
            seen.add(key)
            texts.append(text)

    for rows in arms.values():
        for row in rows:
            if isinstance(row, PairRow):
                texts += [row.instruction, row.answer]
                add(row.text)
            else:
                add(row.text)
    return texts
