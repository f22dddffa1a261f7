"""Stage 4: each document -> its top-k candidate templates, by the whole document and by its parts."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.hashing import short_hash
from fineinstructions.records import Document, Match
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex
from fineinstructions.text.normalize import visible_word_count

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

log = logging.getLogger(__name__)


class MatchStage(Stage[Document, Match]):
    """Query the index with one global and K Gaussian-pooled local vectors per document.

    All vectors of a batch go to the index in one search. Per document, candidates from every vector
    are merged (best score per template wins, and the row records which part matched: -1 is the whole
    document, i the i-th coverage window), held to `min_score`, weighted by template popularity, and
    chosen by maximal marginal relevance so near-identical templates do not crowd the top-k. A template
    already used `max_template_uses` times in the corpus (counted from `prior_uses` on) is passed over:
    with that cap, shards run in order and the stage carries the uses of earlier shards (`after_shard`).
    """

    name = "match"
    input_type = Document
    output_type = Match

    def __init__(self, index: TemplateIndex | ShardedTemplateIndex, embedder: Embedder, top_k: int = 6,
                 coverage_chunks: int = 10, sigma: float = 0.05, alpha: float = 1.0, min_score: float = 0.0,
                 per_vector_k: int = 10, mmr_lambda: float = 0.7, max_template_uses: int | None = None,
                 popularity_weight: float = 0.0, max_windows: int = 64, min_document_words: int = 20,
                 max_document_chars: int = 200_000, prior_uses: Counter[str] | None = None):
        self.index = index
        self.embedder = embedder
        self.top_k = top_k
        self.coverage_chunks = coverage_chunks
        self.sigma = sigma
        self.alpha = alpha
        self.min_score = min_score
        self.per_vector_k = max(per_vector_k, top_k)
        self.mmr_lambda = mmr_lambda
        self.max_template_uses = max_template_uses
        self.popularity_weight = popularity_weight
        self.max_windows = max_windows
        self.min_document_words = min_document_words
        self.max_document_chars = max_document_chars
        self.committed_uses: Counter[str] = Counter(prior_uses or {})  # uses in the shards before this one
        self.uses: Counter[str] = Counter(self.committed_uses)  # ... and in this shard's batches so far
        self._warned_no_vectors = False

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> MatchStage:
        mc = config.match
        return cls(context.index, context.embedder, mc.top_k, mc.coverage_chunks, mc.sigma, mc.alpha, mc.min_score,
                   mc.per_vector_k, mc.mmr_lambda, mc.max_template_uses, mc.popularity_weight, mc.max_windows,
                   mc.min_document_words, mc.max_document_chars)

    @classmethod
    def sequential(cls, config: PipelineConfig) -> bool:
        return config.match.max_template_uses is not None

    def state_digest(self) -> str:
        """The template uses of earlier shards (the index is named by the caller's `depends`)."""
        if self.max_template_uses is None:
            return ""
        return short_hash(json.dumps(sorted(self.committed_uses.items())))

    def after_shard(self, outputs: Sequence[Match]) -> None:
        self.committed_uses.update(m.template_id for m in outputs)
        self.uses = Counter(self.committed_uses)

    def document_error(self, doc: Document) -> str | None:
        """Why a document cannot be matched, or None. Length is checked first: a huge text costs nothing."""
        if len(doc.text) > self.max_document_chars:
            return f"document_too_long: {len(doc.text)} chars > {self.max_document_chars}"
        if not doc.text.strip():
            return "empty_document"
        visible = visible_word_count(doc.text)
        if visible == 0:
            return "markup_only"
        if visible < self.min_document_words:
            return f"document_too_short: {visible} words"
        return None

    def process(self, batch: Sequence[Document]) -> StageResult[Match]:
        rejected: list[Rejected] = []
        documents: list[Document] = []
        for doc in batch:
            error = self.document_error(doc)
            if error:
                dropped = doc.model_dump()
                if error.startswith("document_too_long"):
                    dropped["text"] = doc.text[:1000]  # the reject log keeps a preview, not 10 MB
                rejected.append(Rejected(dropped, error))
            else:
                documents.append(doc)
        if not documents:
            return StageResult([], rejected)
        pooled = self.embedder.encode_with_coverage(
            [d.text for d in documents], self.coverage_chunks, self.sigma, self.alpha, self.max_windows)
        scores, ids = self.index.search(np.concatenate(pooled), self.per_vector_k)
        matches: list[Match] = []
        row = 0
        # Choosing is many tiny matrix products (MMR over ~60 candidates): one BLAS thread does them in
        # microseconds, where a pool of threads waits milliseconds on cores that other work holds.
        with threadpool_limits(1, user_api="blas"):
            for doc, vectors in zip(documents, pooled, strict=True):
                parts = len(vectors)
                chosen, reason = self.choose(scores[row : row + parts], ids[row : row + parts])
                row += parts
                if not chosen:
                    rejected.append(Rejected(doc.model_dump(), reason))
                    continue
                templates = self.index.templates_at([idx for idx, _, _ in chosen])
                for rank, ((_, score, part), template) in enumerate(zip(chosen, templates, strict=True)):
                    self.uses[template.template_id] += 1  # the next document's choice sees this use (the cap)
                    matches.append(Match(
                        document_id=doc.document_id, template_id=template.template_id, score=score, rank=rank,
                        part=part, text=doc.text, title=doc.title, template=template.template,
                        compatible_document_description=template.compatible_document_description,
                    ))
        return StageResult(matches, rejected)

    def choose(self, scores: np.ndarray, ids: np.ndarray) -> tuple[list[tuple[int, float, int]], str]:
        """(row id, score, part) of the chosen templates for one document's (parts x k) search results."""
        best: dict[int, tuple[float, int]] = {}
        for part, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
            for score, idx in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                if idx >= 0 and score >= self.min_score and (idx not in best or score > best[idx][0]):
                    best[idx] = (score, part - 1)  # part -1 is the global vector
        if not best:
            return [], "no_template_above_min_score"
        candidates = sorted(best, key=lambda i: -best[i][0])
        if self.max_template_uses is not None:
            names = self.index.template_ids_at(candidates)
            candidates = [i for i, name in zip(candidates, names, strict=True)
                          if self.uses[name] < self.max_template_uses]
            if not candidates:
                return [], "templates_at_use_cap"
        relevance = np.array([best[i][0] for i in candidates])
        if self.popularity_weight:
            relevance = relevance + self.popularity_weight * np.log(np.maximum(self.index.popularity_at(candidates), 1))
        picked = self.diversify(candidates, relevance)
        return [(candidates[j], best[candidates[j]][0], best[candidates[j]][1]) for j in picked], ""

    def diversify(self, candidates: list[int], relevance: np.ndarray) -> list[int]:
        """Positions of up to top_k candidates by maximal marginal relevance (relevance order if lambda is 1)."""
        k = min(self.top_k, len(candidates))
        order = list(np.argsort(-relevance, kind="stable"))
        if self.mmr_lambda >= 1.0 or len(candidates) <= 1:
            return order[:k]
        vectors = self.index.vectors_at(candidates)
        if vectors is None:
            if not self._warned_no_vectors:
                log.warning("index kind %s cannot return vectors: templates are chosen by relevance alone",
                            getattr(self.index, "spec", "?"))
                self._warned_no_vectors = True
            return order[:k]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        similarity = vectors @ vectors.T
        picked = [order[0]]
        closest = similarity[order[0]].copy()  # each candidate's similarity to its nearest pick
        while len(picked) < k:
            gain = self.mmr_lambda * relevance - (1 - self.mmr_lambda) * closest
            gain[picked] = -math.inf
            choice = int(np.argmax(gain))
            picked.append(choice)
            closest = np.maximum(closest, similarity[choice])
        return picked

    def metrics(self, result: StageResult[Match]) -> dict[str, float]:
        matches = result.records
        return {"match_score_sum": sum(m.score for m in matches),
                "matches_from_parts": float(sum(m.part >= 0 for m in matches))}
