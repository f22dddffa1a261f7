"""Stage 4: each document -> its top-k candidate templates, by the whole document and by its parts."""

from __future__ import annotations

from collections.abc import Sequence

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.records import Document, Match
from fineinstructions.stages.base import Rejected, Stage, StageResult
from fineinstructions.stages.index import TemplateIndex

MIN_DOCUMENT_WORDS = 20
MAX_DOCUMENT_CHARS = 200_000


class MatchStage(Stage):
    """Query the index with one global and K Gaussian-pooled local vectors per document.

    Candidates from all vectors are merged (best score per template wins, and the row records which
    part matched), thresholded by `min_score`, and the top `top_k` are kept.
    """

    name = "match"
    input_type = Document
    output_type = Match

    def __init__(self, index: TemplateIndex, embedder: Embedder, top_k: int = 3, coverage_chunks: int = 10,
                 sigma: float = 0.05, alpha: float = 1.0, min_score: float = 0.0, per_vector_k: int = 10):
        self.index = index
        self.embedder = embedder
        self.top_k = top_k
        self.coverage_chunks = coverage_chunks
        self.sigma = sigma
        self.alpha = alpha
        self.min_score = min_score
        self.per_vector_k = max(per_vector_k, top_k)

    def process(self, batch: Sequence[Document]) -> StageResult:  # type: ignore[override]
        rejected: list[Rejected] = []
        documents: list[Document] = []
        for doc in batch:
            words = len(doc.text.split())
            if words == 0:
                rejected.append(Rejected(doc.model_dump(), "empty_document"))
            elif words < MIN_DOCUMENT_WORDS:
                rejected.append(Rejected(doc.model_dump(), "document_too_short"))
            elif len(doc.text) > MAX_DOCUMENT_CHARS:
                rejected.append(Rejected(doc.model_dump(), "document_too_long"))
            else:
                documents.append(doc)
        if not documents:
            return StageResult([], rejected)
        pooled = self.embedder.encode_with_coverage(
            [d.text for d in documents], self.coverage_chunks, self.sigma, self.alpha)
        matches: list[Match] = []
        for doc, vectors in zip(documents, pooled, strict=True):
            scores, ids = self.index.search(vectors, self.per_vector_k)
            best: dict[int, tuple[float, int]] = {}
            for part, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
                for score, idx in zip(row_scores, row_ids, strict=True):
                    if idx < 0 or score < self.min_score:
                        continue
                    if idx not in best or score > best[idx][0]:
                        best[idx] = (float(score), part - 1)  # part -1 is the global vector
            ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[: self.top_k]
            if not ranked:
                rejected.append(Rejected(doc.model_dump(), "no_template_above_min_score"))
            for rank, (idx, (score, part)) in enumerate(ranked):
                template = self.index.templates[idx]
                matches.append(Match(
                    document_id=doc.document_id, template_id=template.template_id, score=score, rank=rank,
                    part=part, text=doc.text, title=doc.title, template=template.template,
                    compatible_document_description=template.compatible_document_description,
                ))
        return StageResult(matches, rejected)
