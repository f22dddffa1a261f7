"""Hub damping: a per-template bias that keeps a few "hub" templates from being every document's candidate.

In a shared embedding space some templates (broad, generic descriptions) sit close to almost every document
and crowd the candidates of documents they do not fit. CSLS (Conneau et al. 2018, "Word translation without
parallel data") corrects this with r(t), the mean similarity of template t to its k nearest documents: a hub
has a high r(t), and the match score s(d, t) - weight * r(t) ranks it below templates that are specifically
close to d.

r(t) is estimated here by *reverse search* over a reference sample of documents, so it needs nothing but the
index's own search (any index kind, sharded or not, 18M templates as well as 100): each reference document
retrieves its `depth` nearest templates; a template's r(t) is the mean of its k highest similarities among
those hits, each of its missing hits counted at the floor b, the mean similarity of the references' last
(depth-th) neighbours (the level below which a template was not seen). The bias is r(t) - b: 0 for a
template no reference document retrieved (most of a large bank), largest for the hubs. It is exact CSLS
(shifted by a constant) for every template whose k nearest references all retrieved it.
"""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.hashing import json_hash
from fineinstructions.io.atomic import atomic_path, write_text_atomic
from fineinstructions.records import Document

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig

log = logging.getLogger(__name__)


class HubIndex(Protocol):
    """What hub_bias needs of an index (TemplateIndex and ShardedTemplateIndex both have it)."""

    @property
    def ntotal(self) -> int: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def hub_bias(index: HubIndex, reference: np.ndarray, k: int = 10, depth: int = 100,
             batch_size: int = 1024) -> np.ndarray:
    """Per template row of `index`, its hub bias r(t) - b (float32, >= 0 up to rounding) estimated from the
    `reference` document vectors (module docstring)."""
    n = index.ntotal
    bias = np.zeros(n, dtype=np.float32)
    if n == 0 or len(reference) == 0:
        return bias
    depth = max(1, min(depth, n))
    k = max(1, min(k, len(reference)))
    rows: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    floors: list[np.ndarray] = []
    for start in range(0, len(reference), batch_size):
        scores, ids = index.search(np.ascontiguousarray(reference[start : start + batch_size], np.float32), depth)
        valid = ids >= 0
        rows.append(ids[valid])
        sims.append(scores[valid].astype(np.float64))
        floors.append(np.where(valid.any(axis=1), np.where(valid, scores, np.inf).min(axis=1), np.nan))
    floor = float(np.nanmean(np.concatenate(floors)))
    hit_rows, hit_sims = np.concatenate(rows), np.concatenate(sims)
    if not len(hit_rows):
        return bias
    # For each template, the sum of its k highest hit similarities (missing hits count at the floor).
    order = np.lexsort((-hit_sims, hit_rows))  # by template, highest similarity first
    hit_rows, hit_sims = hit_rows[order], hit_sims[order]
    starts = np.flatnonzero(np.r_[True, hit_rows[1:] != hit_rows[:-1]])
    rank = np.arange(len(hit_rows)) - np.repeat(starts, np.diff(np.r_[starts, len(hit_rows)]))
    top = rank < k
    templates = hit_rows[starts]
    sums = np.zeros(len(templates))
    counts = np.zeros(len(templates))
    group = np.repeat(np.arange(len(templates)), np.diff(np.r_[starts, len(hit_rows)]))
    np.add.at(sums, group[top], hit_sims[top])
    np.add.at(counts, group[top], 1)
    r = (sums + (k - counts) * floor) / k
    bias[templates] = np.maximum(r - floor, 0.0).astype(np.float32)
    return bias


# -- the bias of a run: reference documents, computed once by the driver, stored beside the index ----------------

BIAS_FILE = "hub_bias.npy"
BIAS_KEY_FILE = "hub_bias.key"


def reference_documents(config: PipelineConfig, embedder: Embedder | None = None) -> list[Document]:
    """The `match.hub_sample` reference documents: a seeded sample of the packaged Wikipedia leads ("wiki"), or
    the run's first documents in read order ("documents"; the demo's topical sample draws with `embedder`)."""
    mc = config.match
    if mc.hub_reference == "wiki":
        from fineinstructions.io.sources import wikipedia_documents

        leads = [d for d in wikipedia_documents() if len(d.text.split()) >= mc.min_document_words]
        return random.Random(config.run.seed).sample(leads, min(mc.hub_sample, len(leads)))
    from fineinstructions.io.read_stats import ReadStats
    from fineinstructions.pipeline import run_documents

    documents = run_documents(config, ReadStats(), embedder)
    return [d for d in itertools.islice(documents, mc.hub_sample) if len(d.text) <= mc.max_document_chars]


def bias_key(config: PipelineConfig, index_key: str) -> str:
    """What the bias depends on: the index, the reference and how its vectors are made."""
    mc = config.match
    source = config.documents.model_dump(mode="json") if mc.hub_reference == "documents" else None
    return json_hash([index_key, mc.hub_reference, mc.hub_sample, mc.hub_k, mc.hub_depth, mc.min_document_words,
                      config.run.seed, source])


def stored_or_computed_bias(config: PipelineConfig, index: HubIndex, embedder: Embedder, folder: Path,
                            index_key: str) -> np.ndarray:
    """The run's hub bias: read from `folder` (the index folder) when stored there for this `bias_key`, else
    computed from the reference documents' global vectors and stored (when the folder exists)."""
    key = bias_key(config, index_key)
    path, key_path = folder / BIAS_FILE, folder / BIAS_KEY_FILE
    if index_key and key_path.is_file() and key_path.read_text().strip() == key and path.is_file():
        bias: np.ndarray = np.load(path)
        if len(bias) == index.ntotal:
            return bias
    mc = config.match
    documents = reference_documents(config, embedder)
    reference = embedder.encode([d.text for d in documents]) if documents else np.zeros((0, 1), np.float32)
    bias = hub_bias(index, np.asarray(reference, np.float32), mc.hub_k, mc.hub_depth)
    log.info("hub bias from %d reference documents (%s): %d templates damped (max %.3f)", len(documents),
             mc.hub_reference, int((bias > 0).sum()), float(bias.max()) if len(bias) else 0.0)
    if index_key and folder.is_dir():
        key_path.unlink(missing_ok=True)  # never a key over a half-written array
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            np.save(handle, bias)
        write_text_atomic(key_path, key + "\n")
    return bias
