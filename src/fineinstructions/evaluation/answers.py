"""Each model answers every instruction (its own prompt format) and scores the reference answers.

A model's results go to `EVAL_DIR/answers/<name>.json` in one atomic write when it is done, with a
fingerprint of everything that decides them (weights, instructions, generation settings); a rerun whose
fingerprint matches skips the model without loading it. Inside a model, every answered batch is also
committed to the evaluation's request cache, so a run killed mid-model resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fineinstructions.backends.base import Generation, SamplingParams
from fineinstructions.backends.cache import CachedBackend, RequestCache
from fineinstructions.evaluation.heldout import EvalItem, EvaluationInputError
from fineinstructions.hashing import json_hash, short_hash
from fineinstructions.io.atomic import write_json_atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
Progress = Callable[[str, int, int], None]  # (model name, done, total)


@dataclass(frozen=True)
class ModelSpec:
    """A model under evaluation: a short name (used in file names and tables) and a folder or Hub name."""

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`NAME=PATH` (a folder or Hub name)."""
        name, sep, path = text.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise EvaluationInputError(f"a model is given as NAME=PATH, got {text!r}")
        if not _NAME.fullmatch(name):
            raise EvaluationInputError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (<= 64)")
        return cls(name, path)


@dataclass
class ModelAnswers:
    """One model's answers and reference log-likelihoods, with what identifies the model."""

    name: str
    path: str
    fingerprint: str
    prompt_format: str
    tokenizer_sha: str
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "fingerprint": self.fingerprint,
                "prompt_format": self.prompt_format, "tokenizer_sha": self.tokenizer_sha, "meta": self.meta,
                "seconds": self.seconds, "rows": self.rows}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ModelAnswers:
        return cls(value["name"], value["path"], value["fingerprint"], value["prompt_format"],
                   value["tokenizer_sha"], value.get("meta") or {}, value["rows"], value.get("seconds", 0.0), True)


def weights_signature(path: str) -> str:
    """Names, sizes and modification times of a folder's weight and config files (a Hub name: the name)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return path
    parts = []
    for file in sorted(folder.iterdir()):
        if file.is_file() and (file.suffix in WEIGHT_SUFFIXES or file.name.endswith(".json")):
            stat = file.stat()
            parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return short_hash("\n".join(parts))


def tokenizer_sha(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary (the same ids for the same strings means comparable token counts)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return short_hash(json.dumps(vocab, ensure_ascii=False))


def answers_fingerprint(spec: ModelSpec, items: Sequence[EvalItem], sampling: SamplingParams, prompt_format: str,
                        score_references: bool) -> str:
    payload = {"path": str(Path(spec.path).expanduser().resolve()) if Path(spec.path).expanduser().is_dir()
               else spec.path, "weights": weights_signature(spec.path),
               "items": [(i.item_id, i.reference) for i in items], "sampling": sampling.fingerprint(),
               "prompt_format": prompt_format, "score_references": score_references, "version": 1}
    return json_hash(payload)


def answers_path(out_dir: Path, name: str) -> Path:
    return out_dir / "answers" / f"{name}.json"


def load_finished(out_dir: Path, name: str, fingerprint: str) -> ModelAnswers | None:
    """The stored answers of a model when they were made with the same fingerprint, else None."""
    path = answers_path(out_dir, name)
    if not path.is_file():
        return None
    try:
        stored = ModelAnswers.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable %s", path)
        return None
    return stored if stored.fingerprint == fingerprint else None


def answer_with_model(spec: ModelSpec, items: Sequence[EvalItem], out_dir: Path, sampling: SamplingParams, *,
                      prompt_format: str = "auto", batch_size: int = 8, device: str = "auto", dtype: str = "auto",
                      cache: RequestCache | None = None, score_references: bool = True,
                      threads: int | None = None, progress: Progress | None = None) -> ModelAnswers:
    """Answers of one model to every item (and the log-likelihood of each reference), reusing finished work."""
    from fineinstructions.backends.transformers_engine import TransformersBackend

    # The fingerprint needs the resolved prompt format, which only the loaded tokenizer knows for "auto":
    # a stored result records it, so try the stored format first and load the model only on a miss.
    stored_path = answers_path(out_dir, spec.name)
    if stored_path.is_file() and prompt_format == "auto":
        try:
            recorded = json.loads(stored_path.read_text(encoding="utf-8")).get("prompt_format", "auto")
        except (OSError, ValueError, AttributeError):
            recorded = "auto"
        finished = load_finished(out_dir, spec.name, answers_fingerprint(spec, items, sampling, recorded,
                                                                         score_references))
        if finished is not None:
            return finished
    start = time.perf_counter()
    backend = TransformersBackend(spec.path, prompt_format=prompt_format, device=device, dtype=dtype,
                                  batch_size=batch_size, n_threads=threads)
    try:
        fingerprint = answers_fingerprint(spec, items, sampling, backend.prompt_format, score_references)
        finished = load_finished(out_dir, spec.name, fingerprint)
        if finished is not None:
            return finished
        conversations = [[{"role": "user", "content": item.instruction}] for item in items]
        engine = (CachedBackend(backend, cache, f"evaluate-answers:{weights_signature(spec.path)}")
                  if cache is not None else backend)
        generations: list[Generation] = []
        chunk = batch_size * 4  # committed to the cache after each chunk
        for begin in range(0, len(items), chunk):
            generations += engine.generate(conversations[begin : begin + chunk], sampling)
            if progress:
                progress(spec.name, len(generations), len(items))
        likelihoods: dict[str, tuple[float, int]] = {}
        scored = [i for i, item in enumerate(items) if item.reference is not None]
        if score_references and scored:
            values = backend.log_likelihood([conversations[i] for i in scored],
                                            [items[i].reference or "" for i in scored])
            likelihoods = {items[i].item_id: v for i, v in zip(scored, values, strict=True)}
        rows = []
        for item, generation in zip(items, generations, strict=True):
            row: dict[str, Any] = {"model": spec.name, "item_id": item.item_id, "instruction": item.instruction,
                                   "reference": item.reference, "answer": generation.text,
                                   "prompt_tokens": generation.prompt_tokens,
                                   "completion_tokens": generation.completion_tokens,
                                   "finish_reason": generation.finish_reason, "error": generation.error}
            if item.item_id in likelihoods:
                logprob, tokens = likelihoods[item.item_id]
                row |= {"reference_logprob": logprob, "reference_tokens": tokens,
                        "reference_chars": len(item.reference or "")}
            rows.append(row)
        result = ModelAnswers(spec.name, spec.path, fingerprint, backend.prompt_format,
                              tokenizer_sha(backend.tokenizer), backend.meta, rows, time.perf_counter() - start)
        write_json_atomic(answers_path(out_dir, spec.name), result.to_json())
        return result
    finally:
        backend.close()
