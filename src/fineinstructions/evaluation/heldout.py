"""The instructions both models answer: a training run's held-out pairs, or any instruction file or benchmark.

By default `TRAIN_DIR/heldout.jsonl` (rows `{"instruction", "reference", "document_id", "text"}` from
documents that neither arm trained on). Any file `read_rows` reads works too (.jsonl/.json/.parquet, a
folder, or `hf:NAME` for a Hugging Face dataset, by Hub name online or local folder offline), with the
instruction and the optional reference answer named by field paths. A field path may step into lists and
nested objects with dots, e.g. `history.0.user` or `target.0`.

Public benchmarks, when online (field names as published; check a benchmark's card before relying on them):

- AlpacaEval: `--instructions hf:tatsu-lab/alpaca_eval --hf-config alpaca_eval --split eval
  --instruction-field instruction --reference-field output` (805 instructions; `output` is the GPT-4
  reference answer, so the ROUGE-L and log-likelihood figures are "closeness to the reference").
- MT-Bench-101 (github.com/mtbench101/mt-bench-101, `data/subjective/mtbench101.jsonl`, rows with a
  `history` list of `{"user", "bot"}` turns): download the file, then `--instructions mtbench101.jsonl
  --instruction-field history.0.user --reference-field history.0.bot` (first turns only: the models here
  are single-turn).
- MT-Bench: `--instructions hf:HuggingFaceH4/mt_bench_prompts --instruction-field prompt.0
  --reference-field reference.0` (references exist for math, reasoning and coding only).
- MixEval: `--instructions hf:MixEval/MixEval --hf-config MixEval --split free_form --instruction-field prompt
  --reference-field target.0` (free-form split; MixEval's own grader is a model parser, which this
  evaluation replaces by ROUGE-L/F1 and the pairwise judge).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fineinstructions.errors import FineInstructionsError
from fineinstructions.hashing import short_hash
from fineinstructions.io.readers import InputError, ReadStats, read_rows

log = logging.getLogger(__name__)

HELDOUT_FILE = "heldout.jsonl"


class EvaluationInputError(FineInstructionsError):
    """Evaluation input that cannot be used: a missing or empty instruction set, a missing field, a bad model."""


@dataclass(frozen=True)
class EvalItem:
    """One instruction to answer, with its reference answer when the set has one."""

    item_id: str
    instruction: str
    reference: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class InstructionSet:
    """The items and how they were read (source, fields, rows skipped by reason)."""

    items: list[EvalItem]
    source: str
    instruction_field: str
    reference_field: str | None
    rows_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "instruction_field": self.instruction_field,
                "reference_field": self.reference_field, "rows_read": self.rows_read, "items": len(self.items),
                "with_reference": sum(i.reference is not None for i in self.items), "skipped": dict(self.skipped)}


def field_value(row: dict[str, Any], path: str) -> Any:
    """The value at a dotted field path (`a.b`, `history.0.user`), or None when any step is missing."""
    if path in row:
        return row[path]
    value: Any = row
    for step in path.split("."):
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, (list, tuple)) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            return None
        if value is None:
            return None
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):  # e.g. a list of acceptable answers: the first one
        return _text(value[0]) if value else None
    text = str(value).strip()
    return text or None


def item_id(instruction: str) -> str:
    """A stable id of an instruction (so a subsample keeps its ids, and caches survive reordering)."""
    return short_hash(instruction)


def load_instructions(source: str | Path, instruction_field: str = "instruction",
                      reference_field: str | None = "reference", limit: int | None = None, seed: int = 0,
                      split: str = "train", hf_config: str | None = None,
                      reference_required: bool = False) -> InstructionSet:
    """Read an instruction set; `limit` keeps a seeded random sample of that many items (in file order).

    Rows without the instruction field are skipped and counted; rows whose reference is missing keep
    `reference=None`. Repeated instructions are kept once. Raises EvaluationInputError when the input cannot
    be read, no row has the instruction field (the message lists the fields it has), or nothing is left.
    """
    source = str(source)
    if limit is not None and limit < 1:
        raise EvaluationInputError(f"--limit must be at least 1, got {limit}")
    stats = ReadStats()
    try:
        rows = list(read_rows(source, split=split, stats=stats, hf_config=hf_config))
    except InputError as err:
        raise EvaluationInputError(f"cannot read instructions from {source}: {err}") from err
    if not rows:
        raise EvaluationInputError(f"the instruction set {source} is empty")
    skipped: Counter[str] = Counter(stats.skipped)
    items: list[EvalItem] = []
    seen: set[str] = set()
    for row in rows:
        instruction = _text(field_value(row, instruction_field))
        if instruction is None:
            skipped["missing_instruction"] += 1
            continue
        if instruction in seen:
            skipped["duplicate_instruction"] += 1
            continue
        seen.add(instruction)
        reference = _text(field_value(row, reference_field)) if reference_field else None
        if reference_required and reference is None:
            skipped["missing_reference"] += 1
            continue
        extra = {k: row[k] for k in ("document_id",) if k in row}
        items.append(EvalItem(item_id(instruction), instruction, reference, extra))
    if not items:
        fields = sorted({k for row in rows[:50] for k in row})
        if skipped["missing_instruction"] == len(rows):
            raise EvaluationInputError(
                f"no row of {source} has the instruction field {instruction_field!r}; its fields are: "
                f"{', '.join(fields) or 'none'} (choose one with --instruction-field)")
        raise EvaluationInputError(f"no usable instruction in {source} (skipped: {dict(skipped)})")
    if skipped:
        log.warning("instruction set %s: skipped %s", source, dict(+skipped))
    if limit is not None and limit < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    return InstructionSet(items, source, instruction_field, reference_field, len(rows), +skipped)


def heldout_path(train_dir: str | Path) -> Path:
    """TRAIN_DIR/heldout.jsonl, or a clear error when the training run has none."""
    path = Path(train_dir) / HELDOUT_FILE
    if not path.is_file():
        raise EvaluationInputError(f"{train_dir} has no {HELDOUT_FILE}: is it a `fineinstructions train` folder? "
                                   "(or pass --instructions FILE)")
    return path
