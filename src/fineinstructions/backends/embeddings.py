"""Sentence embeddings for templates and documents, with Gaussian coverage pooling
(docs/method.md, "Matching: coverage pooling")."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fineinstructions.backends.models import resolve_embedder
from fineinstructions.errors import ConfigError
from fineinstructions.hashing import short_hash


def resolve_device(device: str | None) -> str:
    """`auto` (or None): the first CUDA GPU when there is one, else Apple's MPS, else the CPU."""
    if device not in (None, "", "auto"):
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class Embedder:
    """A sentence-transformers model (the packaged all-MiniLM-L6-v2 by default) on `device` (auto: a GPU
    when there is one), encoding `batch_size` texts per forward pass; `revision` pins a Hub model."""

    def __init__(self, model: str = "all-minilm-l6-v2", device: str | None = "auto", batch_size: int = 32,
                 revision: str | None = None):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # our own progress bars report the work

        self.model_id = model
        self.revision = revision
        self.device = resolve_device(device)
        self.model = SentenceTransformer(resolve_embedder(model), device=self.device, revision=revision)
        self.batch_size = batch_size
        dimension = (self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                     else self.model.get_sentence_embedding_dimension())
        if dimension is None:
            raise ConfigError(f"embedding model {model!r} does not say its embedding dimension")
        self.dimension = int(dimension)

    @property
    def fingerprint(self) -> str:
        """Identifies the embedding space, so an index is never queried with another model's vectors."""
        key = f"{self.model_id}|{self.dimension}|{self.model.max_seq_length}"
        if self.revision is not None:
            key += f"|{self.revision}"
        return short_hash(key)

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
        self, texts: Sequence[str], chunks: int = 10, sigma: float = 0.05, alpha: float = 1.0,
        max_windows: int = 64,
    ) -> list[np.ndarray]:
        """For each text, one global and `chunks` local vectors from a single forward pass.

        Row 0 is the global mean-pooled vector; row i+1 pools the tokens with Gaussian weights centred
        at (i + 0.5) / chunks on the [0, 1] axis of token positions, mixed with the global by `alpha`.
        A text longer than the model's window is cut into consecutive windows that are embedded
        separately; every token keeps its position in the whole text, so the windows share one axis.
        Beyond `max_windows` windows, evenly spaced windows stand for the text (its ends included).
        """
        if not texts:
            return []
        windows = self.token_windows(texts, max_windows)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))  # similar lengths batch together
        pooled: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            group = [windows[i] for i in order[start : start + self.batch_size]]
            for window, tokens in zip(group, self._token_embeddings([w.ids for w in group]), strict=True):
                pooled[window.text].append((window.positions, tokens))
        result: list[np.ndarray] = []
        for parts in pooled:
            positions = np.concatenate([p for p, _ in parts])
            tokens = np.concatenate([t for _, t in parts])
            result.append(coverage_pool(tokens, chunks, sigma, alpha, positions))
        return result

    def token_windows(self, texts: Sequence[str], max_windows: int = 64) -> list[TokenWindow]:
        """Cut each text's tokens into model-sized windows, each token placed on the text's [0, 1] axis."""
        tokenizer = self.model.tokenizer
        body = self.window_tokens
        prefix, suffix = self._special_ids
        encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        windows: list[TokenWindow] = []
        for slot, ids in enumerate(encoded):
            n = len(ids)
            if n == 0:
                windows.append(TokenWindow(slot, prefix + suffix, np.full(len(prefix) + len(suffix), 0.5)))
                continue
            starts = list(range(0, n, body))
            if len(starts) > max_windows:
                starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
            for begin in starts:
                piece = ids[begin : begin + body]
                body_pos = np.arange(begin, begin + len(piece)) / (n - 1) if n > 1 else np.array([0.5])
                # special tokens sit where their window starts and ends
                positions = np.concatenate([np.full(len(prefix), body_pos[0]), body_pos,
                                            np.full(len(suffix), body_pos[-1])])
                windows.append(TokenWindow(slot, prefix + piece + suffix, positions))
        return windows

    @property
    def window_tokens(self) -> int:
        """Text tokens per window: the model's sequence length less its special tokens."""
        prefix, suffix = self._special_ids
        return max(1, int(self.model.max_seq_length or 512) - len(prefix) - len(suffix))

    @functools.cached_property
    def _special_ids(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (e.g. [CLS] and [SEP])."""
        tokenizer = self.model.tokenizer
        probe = "probe"
        bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe, add_special_tokens=True)["input_ids"]
        for cut in range(len(full) - len(bare) + 1):
            if full[cut : cut + len(bare)] == bare:
                return list(full[:cut]), list(full[cut + len(bare) :])
        return [], []

    def _token_embeddings(self, batch: Sequence[list[int]]) -> list[np.ndarray]:
        """Token embeddings (n_tokens, d) for pre-tokenized sequences, one padded forward pass."""
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.model.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        features: dict[str, object] = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self.model.tokenizer.model_input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        features = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in features.items()}
        features.update(self._extra_features)
        with torch.inference_mode():
            out = self.model(features)
        tokens = out["token_embeddings"].float().cpu().numpy()
        return [tokens[row, : len(ids)] for row, ids in enumerate(batch)]

    @functools.cached_property
    def _extra_features(self) -> dict[str, object]:
        """Non-tensor entries the model's own preprocessing adds (e.g. the modality)."""
        probe = self.model.preprocess(["probe"]) if hasattr(self.model, "preprocess") else {}
        return {k: v for k, v in probe.items() if not hasattr(v, "shape")}


@dataclass
class TokenWindow:
    """One model-sized piece of a text: its token ids (special tokens included) and their positions."""

    text: int
    ids: list[int]
    positions: np.ndarray


def coverage_pool(tokens: np.ndarray, chunks: int, sigma: float, alpha: float,
                  positions: np.ndarray | None = None) -> np.ndarray:
    """Global + Gaussian-weighted local poolings of token embeddings (n_tokens, d) -> (1 + chunks, d).

    `positions` places each token on [0, 1] (default: evenly spaced in order).
    """
    n = tokens.shape[0]
    global_vec = tokens.mean(axis=0)
    rows = [global_vec]
    if chunks > 0:
        if positions is None:
            positions = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
        centres = (np.arange(chunks) + 0.5) / chunks
        weights = np.exp(-((positions[None, :] - centres[:, None]) ** 2) / (2 * sigma**2))
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        local = weights @ tokens
        rows.extend(alpha * local + (1 - alpha) * global_vec)
    out = np.stack(rows).astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
