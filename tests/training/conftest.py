"""Shared fixtures: a small pair dataset of real Wikipedia text, written with the project's writers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.io.writers import write_records
from fineinstructions.records import Pair

QUESTIONS = ("What is {title}?", "Summarize what is known about {title}.", "Give me a short overview of {title}.")


def make_pairs(n_documents: int = 30, per_document: int = 2) -> list[Pair]:
    """Pairs whose answers are excerpts of real Wikipedia leads (like the pipeline's kept pairs)."""
    pairs: list[Pair] = []
    for doc in wikipedia_documents():
        if len(pairs) >= n_documents * per_document:
            break
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc.text) if len(s) > 20]
        if len(doc.text) < 400 or len(sentences) < per_document + 1:
            continue
        for k in range(per_document):
            pairs.append(Pair(document_id=doc.document_id, template_id=f"t{k}", text=doc.text,
                              template=QUESTIONS[k % len(QUESTIONS)].replace("{title}", "<fi>topic</fi>"),
                              instantiated_instruction=QUESTIONS[k % len(QUESTIONS)].format(title=doc.title),
                              answer=" ".join(sentences[k:k + 2]), excerpt_coverage=1.0, judge_score=5))
    return pairs


@pytest.fixture(scope="session")
def pair_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-like folder with dataset/part-00000.parquet of 60 pairs over 30 documents."""
    root = tmp_path_factory.mktemp("run")
    write_records(root / "dataset" / "part-00000.parquet", make_pairs(), Pair)
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared, busy CPU more threads spin against each other and run many times slower.
    Session scope so it is set before the module-scoped training fixtures run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
