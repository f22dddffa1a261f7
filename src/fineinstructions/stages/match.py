"""Stage 4: each document -> its top-k candidate templates, by the whole document and by its parts."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.contracts.templates import template_variables
from fineinstructions.hashing import short_hash
from fineinstructions.records import Document, Match
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex
from fineinstructions.text.normalize import visible_word_count

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

log = logging.getLogger(__name__)
COMPLEXITY_MODES = ("bank", "weights", "off")
BANK_COMPLEXITY_CLASSES = 4  # "bank" sampling: templates of 1, 2, 3 and 4 or more variables
BANK_SAMPLE_ROWS = 20_000  # templates read (a seeded random sample) to measure the bank's distribution
VARIABLE_CACHE_ROWS = 1 << 20  # variable counts remembered per template row before the memo is cleared


def document_rng(seed: int, document_id: str) -> np.random.Generator:
    """The random generator of one document's draws: seeded by the run's seed and the document id only, so a
    document draws the same in any shard, rank, batch or resumed run."""
    digest = hashlib.sha256(f"{seed}\x00{document_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def bank_complexity(index: TemplateIndex | ShardedTemplateIndex, classes: int = BANK_COMPLEXITY_CLASSES,
                    sample: int = BANK_SAMPLE_ROWS) -> np.ndarray:
    """Share of the bank's queries per complexity class: entry c (1 .. classes) for templates of c variables,
    the last class also holding more; entry 0 is 0. Each template counts its popularity (the queries it stands
    for); a bank larger than `sample` is measured on `sample` rows drawn at random with a fixed seed (not evenly
    spaced: a bank's row order may have a period)."""
    share = np.zeros(classes + 1)
    n = index.ntotal
    if n:
        rows = (np.sort(np.random.default_rng(0).choice(n, sample, replace=False)) if n > sample
                else np.arange(n)).tolist()
        popularity = np.maximum(index.popularity_at(rows), 1.0)
        for template, weight in zip(index.templates_at(rows), popularity.tolist(), strict=True):
            share[min(max(len(template_variables(template.template)), 1), classes)] += weight
    if share.sum() <= 0:
        share[1:] = 1.0
    return share / share.sum()


class MatchStage(Stage[Document, Match]):
    """Query the index with one global and K Gaussian-pooled local vectors per document.

    All vectors of a batch go to the index in one search. Per document, candidates from every vector
    are merged (best score per template wins, and the row records which part matched: -1 is the whole
    document, i the i-th coverage window), held to `min_score`, weighted by template popularity, and
    chosen one at a time (`diversify`): with complexity sampling, each pick first draws a complexity
    class (number of `<fi>` variables) with the target's weights among the classes left in the pool,
    then takes that class's candidate of highest maximal marginal relevance, so near-identical templates
    do not crowd the top-k and the retrieval's lean towards simple templates does not set the mix. A
    template already used `max_template_uses` times in the corpus (counted from `prior_uses` on) is
    passed over: with that cap, shards run in order and the stage carries the uses of earlier shards
    (`after_shard`).
    """

    name = "match"
    input_type = Document
    output_type = Match

    def __init__(self, index: TemplateIndex | ShardedTemplateIndex, embedder: Embedder, top_k: int = 6,
                 coverage_chunks: int = 5, sigma: float = 0.05, alpha: float = 1.0, min_score: float = 0.0,
                 per_vector_k: int = 10, mmr_lambda: float = 0.7, max_template_uses: int | None = None,
                 popularity_weight: float = 0.0, max_windows: int = 64, min_document_words: int = 20,
                 max_document_chars: int = 200_000, prior_uses: Counter[str] | None = None,
                 complexity_sampling: str = "bank", complexity_weights: Sequence[float] | None = None,
                 seed: int = 0, hub_bias: np.ndarray | None = None, hub_damping: float = 0.0):
        if complexity_sampling not in COMPLEXITY_MODES:
            raise ValueError(f"complexity_sampling {complexity_sampling!r}: one of {', '.join(COMPLEXITY_MODES)}")
        if complexity_sampling == "weights" and (
                not complexity_weights or min(complexity_weights) < 0 or sum(complexity_weights) <= 0):
            raise ValueError("complexity_sampling 'weights' needs complexity_weights: non-negative, not all 0")
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
        self.complexity_sampling = complexity_sampling
        self.complexity_weights = list(complexity_weights or [])
        self.seed = seed
        if hub_bias is not None and len(hub_bias) != index.ntotal:
            raise ValueError(f"hub_bias holds {len(hub_bias)} values for an index of {index.ntotal} templates")
        self.hub_bias = hub_bias  # per template row (stages/hubness.py); None: no damping
        self.hub_damping = hub_damping
        self.committed_uses: Counter[str] = Counter(prior_uses or {})  # uses in the shards before this one
        self.uses: Counter[str] = Counter(self.committed_uses)  # ... and in this shard's batches so far
        self._warned_no_vectors = False
        self._target: np.ndarray | None = None
        self._variables: dict[int, int] = {}  # row id -> number of <fi> variables (a memo)

    @classmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> MatchStage:
        mc = config.match
        return cls(context.index, context.embedder, mc.top_k, mc.coverage_chunks, mc.sigma, mc.alpha, mc.min_score,
                   mc.per_vector_k, mc.mmr_lambda, mc.max_template_uses, mc.popularity_weight, mc.max_windows,
                   mc.min_document_words, mc.max_document_chars, complexity_sampling=mc.complexity_sampling,
                   complexity_weights=mc.complexity_weights, seed=config.run.seed,
                   hub_bias=context.hub_bias if mc.hub_damping else None, hub_damping=mc.hub_damping)

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

    @property
    def target(self) -> np.ndarray:
        """The target share of each complexity class (entry c: c variables, the last entry c or more; entry 0
        unused): the bank's own distribution ("bank", measured once) or `complexity_weights` normalised."""
        if self._target is None:
            if self.complexity_sampling == "weights":
                weights = np.array([0.0, *self.complexity_weights])
                self._target = weights / weights.sum()
            else:
                self._target = bank_complexity(self.index)
        return self._target

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
                chosen, reason = self.choose(scores[row : row + parts], ids[row : row + parts], doc.document_id)
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

    def choose(self, scores: np.ndarray, ids: np.ndarray,
               document_id: str = "") -> tuple[list[tuple[int, float, int]], str]:
        """(row id, score, part) of the chosen templates for one document's (parts x k) search results; the
        complexity draws are seeded by the run's seed and `document_id`."""
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
        if self.hub_bias is not None and self.hub_damping:
            relevance = relevance - self.hub_damping * self.hub_bias[np.asarray(candidates, dtype=np.int64)]
        classes, rng = None, None
        if self.complexity_sampling != "off" and len(candidates) > self.top_k:  # a choice to make
            classes = self.complexity_classes(candidates)
            rng = document_rng(self.seed, document_id)
        picked = self.diversify(candidates, relevance, classes, rng)
        return [(candidates[j], best[candidates[j]][0], best[candidates[j]][1]) for j in picked], ""

    def complexity_classes(self, candidates: list[int]) -> np.ndarray:
        """Each candidate's complexity class: its number of `<fi>` variables, at least 1, at most the target's
        last class (which holds that many or more)."""
        missing = [i for i in candidates if i not in self._variables]
        if missing:
            if len(self._variables) + len(missing) > VARIABLE_CACHE_ROWS:
                self._variables.clear()
            for i, template in zip(missing, self.index.templates_at(missing), strict=True):
                self._variables[i] = len(template_variables(template.template))
        counts = np.array([self._variables[i] for i in candidates], dtype=np.int64)
        return np.clip(counts, 1, len(self.target) - 1)

    def diversify(self, candidates: list[int], relevance: np.ndarray, classes: np.ndarray | None = None,
                  rng: np.random.Generator | None = None) -> list[int]:
        """Positions of up to top_k candidates, picked one at a time.

        Each pick takes the candidate of highest maximal marginal relevance, lambda * relevance - (1 - lambda) *
        (its highest similarity to the picks so far) (relevance alone for the first pick, with lambda 1, or when
        the index cannot return vectors). With `classes` (and `rng`), a pick first draws a class c with
        probability target[c] / sum of target over the classes that still hold an unpicked candidate, and
        chooses within class c; when those classes all weigh 0, the pick is not held to a class.
        """
        n = len(candidates)
        k = min(self.top_k, n)
        similarity = self._similarity(candidates) if self.mmr_lambda < 1.0 and n > 1 else None
        free = np.ones(n, dtype=bool)
        closest: np.ndarray | None = None  # each candidate's similarity to its nearest pick
        picked: list[int] = []
        while len(picked) < k:
            if closest is None:
                gain = np.array(relevance, dtype=np.float64)
            else:
                gain = self.mmr_lambda * relevance - (1 - self.mmr_lambda) * closest
            allowed = free if classes is None or rng is None else free & self._draw_class(classes, free, rng)
            choice = int(np.argmax(np.where(allowed, gain, -math.inf)))
            picked.append(choice)
            free[choice] = False
            if similarity is not None:
                closest = similarity[choice].copy() if closest is None else np.maximum(closest, similarity[choice])
        return picked

    def _draw_class(self, classes: np.ndarray, free: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The candidates of one class drawn by target weight among the classes of the `free` candidates (all
        candidates when a single class is left, or when the classes left all weigh 0: no draw then)."""
        present = np.unique(classes[free])
        weights = self.target[present]
        if len(present) == 1 or weights.sum() <= 0:
            return np.ones(len(classes), dtype=bool)
        cumulative = np.cumsum(weights) / weights.sum()
        drawn = present[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(present) - 1)]
        return classes == drawn

    def _similarity(self, candidates: list[int]) -> np.ndarray | None:
        """Cosine similarities between the candidates' vectors; None when the index cannot return them."""
        vectors = self.index.vectors_at(candidates)
        if vectors is None:
            if not self._warned_no_vectors:
                log.warning("index kind %s cannot return vectors: templates are chosen by relevance alone",
                            getattr(self.index, "spec", "?"))
                self._warned_no_vectors = True
            return None
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        similarity: np.ndarray = vectors @ vectors.T
        return similarity

    def metrics(self, result: StageResult[Match]) -> dict[str, float]:
        matches = result.records
        counts = Counter(min(len(template_variables(m.template)), BANK_COMPLEXITY_CLASSES) for m in matches)
        return {"match_score_sum": sum(m.score for m in matches),
                "matches_from_parts": float(sum(m.part >= 0 for m in matches)),
                **{f"matched_templates_{n}{'+' if n == BANK_COMPLEXITY_CLASSES else ''}_variables": float(c)
                   for n, c in sorted(counts.items())}}
