"""Sentence embeddings for templates and documents, with Gaussian coverage pooling (DESIGN.md §2)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fineinstructions.backends.models import resolve_embedder


class Embedder:
    """A sentence-transformers model (the packaged all-MiniLM-L6-v2 by default), on CPU unless told."""

    def __init__(self, model: str = "all-minilm-l6-v2", device: str | None = None, batch_size: int = 32):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # our own progress bars report the work

        self.model_id = model
        self.model = SentenceTransformer(resolve_embedder(model), device=device or "cpu")
        self.batch_size = batch_size
        self.dimension = int(self.model.get_embedding_dimension()
                             if hasattr(self.model, "get_embedding_dimension")
                             else self.model.get_sentence_embedding_dimension())

    @property
    def fingerprint(self) -> str:
        """Identifies the embedding space, so an index is never queried with another model's vectors."""
        key = f"{self.model_id}|{self.dimension}|{self.model.max_seq_length}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings, shape (n, d), float32."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_with_coverage(
        self, texts: Sequence[str], chunks: int = 10, sigma: float = 0.05, alpha: float = 1.0
    ) -> list[np.ndarray]:
        """For each text, one global and `chunks` local vectors from a single forward pass.

        Row 0 is the global mean-pooled vector; row i+1 pools the tokens with Gaussian weights centred
        at (i + 0.5) / chunks on the [0, 1] axis of token positions, mixed with the global by `alpha`.
        """
        if not texts:
            return []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
        token_sets = self.model.encode(
            [texts[i] for i in order], batch_size=self.batch_size, output_value="token_embeddings",
            convert_to_numpy=False, show_progress_bar=False,
        )
        result: list[np.ndarray] = [np.zeros(0)] * len(texts)
        for slot, tokens in zip(order, token_sets, strict=True):
            result[slot] = coverage_pool(tokens.float().cpu().numpy(), chunks, sigma, alpha)
        return result


def coverage_pool(tokens: np.ndarray, chunks: int, sigma: float, alpha: float) -> np.ndarray:
    """Global + Gaussian-weighted local poolings of token embeddings (n_tokens, d) -> (1 + chunks, d)."""
    n = tokens.shape[0]
    global_vec = tokens.mean(axis=0)
    rows = [global_vec]
    if chunks > 0:
        positions = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
        centres = (np.arange(chunks) + 0.5) / chunks
        weights = np.exp(-((positions[None, :] - centres[:, None]) ** 2) / (2 * sigma**2))
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        local = weights @ tokens
        rows.extend(alpha * local + (1 - alpha) * global_vec)
    out = np.stack(rows).astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
