"""Sentence embeddings for templates and documents, with Gaussian coverage pooling
(docs/method.md, "Matching: coverage pooling").

`make_embedder` builds the embedder a config names: a sentence-transformers model (`Embedder`), or
`hashing-sim[:DIM]` (`HashingEmbedder`), a deterministic bag of hashed words for simulations and tests.
"""

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
        body = self.window_tokens
        prefix, suffix = self._special_ids
        encoded = self._token_ids(texts)
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

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, without special tokens and uncut."""
        tokenizer = self.model.tokenizer
        return tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

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


# -- a hashing embedder for simulations and tests -------------------------------------------------------

HASHING_SIM = "hashing-sim"
_PRIME = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_PRIME_INVERSE = pow(_PRIME, -1, 1 << 64)
_WORD_BYTES = np.zeros(256, dtype=bool)  # ASCII letters and digits after lower-casing, and every non-ASCII byte
_WORD_BYTES[ord("0") : ord("9") + 1] = True
_WORD_BYTES[ord("a") : ord("z") + 1] = True
_WORD_BYTES[0x80:] = True
_EMPTY_TEXT = 0x5EED_0F_E4_7E_11  # the one token of a text without words
_GROUP_BYTES = 1 << 20  # texts are hashed in groups of about this many bytes (small temporaries)
_GROUP_TEXTS = 2048  # and embedded this many at a time


def mix64(values: np.ndarray) -> np.ndarray:
    """A well-spread uint64 per uint64 (the splitmix64 finaliser), vectorised."""
    x = np.asarray(values, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def hash_segments(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit hashes of the byte strings data[starts[i]:ends[i]] (uint8 data), with no Python loop per string.

    A polynomial hash modulo 2**64 from prefix sums (each segment's sum shifted back by the inverse power
    of its start), mixed with the segment's length. Temporaries: about 32 bytes per byte of `data`.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    n = len(data)
    with np.errstate(over="ignore"):
        powers = np.full(n + 1, _PRIME, dtype=np.uint64)
        powers[0] = 1
        np.cumprod(powers, out=powers)
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[:-1], out=prefix[1:])
        del powers
        inverse = np.full(n + 1, _PRIME_INVERSE, dtype=np.uint64)
        inverse[0] = 1
        np.cumprod(inverse, out=inverse)
        raw = (prefix[ends] - prefix[starts]) * inverse[starts]
    return mix64(raw ^ mix64((ends - starts).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))


def hash_strings(strings: Sequence[str]) -> np.ndarray:
    """64-bit hashes of strings (their UTF-8 bytes), deterministic across processes and machines."""
    if len(strings) == 0:
        return np.zeros(0, dtype=np.uint64)
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    return hash_segments(np.frombuffer(b"".join(encoded), dtype=np.uint8), ends - lengths, ends)


def _word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash of each word, text number of each word), in reading order; a text without words has one
    token standing for the empty text. Words are runs of letters and digits (any non-ASCII character
    counts as a letter), compared lower-cased."""
    hashes: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    first = 0
    while first < len(texts):
        last, size = first, 0
        while last < len(texts) and (last == first or size + len(texts[last]) <= _GROUP_BYTES):
            size += len(texts[last]) + 1
            last += 1
        group = [t.lower().encode("utf-8", "surrogatepass") for t in texts[first:last]]
        data = np.frombuffer(b"\0".join(group), dtype=np.uint8)
        text_starts = np.cumsum([0] + [len(b) + 1 for b in group[:-1]])
        word = _WORD_BYTES[data]
        edges = np.diff(np.concatenate(([False], word, [False])).astype(np.int8))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        hashes.append(hash_segments(data, starts, ends))
        owners.append(np.searchsorted(text_starts, starts, side="right") - 1 + first)
        first = last
    words = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    empty = np.flatnonzero(np.bincount(owner, minlength=len(texts)) == 0)
    if len(empty):
        order = np.argsort(np.concatenate([owner, empty]), kind="stable")
        words = np.concatenate([words, np.full(len(empty), _EMPTY_TEXT, np.uint64)])[order]
        owner = np.concatenate([owner, empty])[order]
    return words, owner


class HashingEmbedder(Embedder):
    """Bag of hashed words for simulations and tests (never a default): each word adds a signed unit to
    one of `dimension` buckets, each pair of neighbouring words half a unit to another; L2-normalised.

    Deterministic across processes and fast (no model, numpy only); texts that share words are close.
    It is an `Embedder` whose tokens are word hashes, so coverage pooling runs the same code path
    (`encode_with_coverage`): a token's embedding is its word's unit plus its bigram with the word
    before, and the mean of a single-window text's tokens points where `encode` does.
    """

    bigram_weight = 0.5
    words_per_window = 256

    def __init__(self, dimension: int = 384, batch_size: int = 32, model: str | None = None):
        # no model to load: Embedder.__init__ (which loads one) is deliberately not called
        if dimension < 2:
            raise ConfigError(f"a hashing embedder needs at least 2 dimensions, not {dimension}")
        self.model_id = model or f"{HASHING_SIM}:{dimension}"
        self.dimension = int(dimension)
        self.batch_size = batch_size
        self.revision = None
        self.device = "cpu"

    @property
    def fingerprint(self) -> str:
        return short_hash(f"{HASHING_SIM}|{self.dimension}|v1")

    def _features(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bucket, sign) of each feature hash."""
        bucket = ((hashes >> np.uint64(32)) % np.uint64(self.dimension)).astype(np.int64)
        sign = 1.0 - 2.0 * (hashes & np.uint64(1)).astype(np.float32)
        return bucket, sign

    @staticmethod
    def _bigrams(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return mix64(previous * np.uint64(0x9E3779B97F4A7C15) ^ current)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length hashed bag-of-words vectors, shape (n, d), float32."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), _GROUP_TEXTS):  # small groups: fresh large temporaries are slow
            out[start : start + _GROUP_TEXTS] = self._encode_group(texts[start : start + _GROUP_TEXTS])
        return out

    def _encode_group(self, texts: Sequence[str]) -> np.ndarray:
        n, d = len(texts), self.dimension
        words, owner = _word_hashes(texts)
        pair = owner[1:] == owner[:-1]
        bigrams = self._bigrams(words[:-1][pair], words[1:][pair])
        bucket, sign = self._features(words)
        pair_bucket, pair_sign = self._features(bigrams)
        cells = np.concatenate([owner * d + bucket, owner[1:][pair] * d + pair_bucket])
        weights = np.concatenate([sign, self.bigram_weight * pair_sign])
        vectors = np.bincount(cells, weights=weights, minlength=n * d).reshape(n, d).astype(np.float32)
        vectors[~vectors.any(axis=1), 0] = 1.0  # features that cancel out exactly: an arbitrary unit vector
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        words, owner = _word_hashes(texts)
        bounds = np.cumsum(np.bincount(owner, minlength=len(texts)))[:-1]
        return [part.tolist() for part in np.split(words, bounds)]

    @property
    def window_tokens(self) -> int:
        return self.words_per_window

    @functools.cached_property
    def _special_ids(self) -> tuple[list[int], list[int]]:
        return [], []

    def _token_embeddings(self, batch: Sequence[list[int]]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for ids in batch:
            words = np.asarray(ids, dtype=np.uint64)
            tokens = np.zeros((len(words), self.dimension), dtype=np.float32)
            rows = np.arange(len(words))
            bucket, sign = self._features(words)
            tokens[rows, bucket] += sign
            if len(words) > 1:
                pair_bucket, pair_sign = self._features(self._bigrams(words[:-1], words[1:]))
                tokens[rows[1:], pair_bucket] += self.bigram_weight * pair_sign
            out.append(tokens)
        return out


def make_embedder(model: str, device: str | None = "auto", batch_size: int = 32,
                  revision: str | None = None) -> Embedder:
    """The embedder `model` names: `hashing-sim` or `hashing-sim:DIM` (the hashing embedder, 384 dimensions
    unless given), else a sentence-transformers model on `device`."""
    if model == HASHING_SIM or model.startswith(f"{HASHING_SIM}:"):
        _, _, size = model.partition(":")
        if size and not size.isdigit():
            raise ConfigError(f"{model!r}: the hashing embedder is named {HASHING_SIM} or {HASHING_SIM}:DIM")
        return HashingEmbedder(int(size) if size else 384, batch_size, model)
    return Embedder(model, device=device, batch_size=batch_size, revision=revision)
