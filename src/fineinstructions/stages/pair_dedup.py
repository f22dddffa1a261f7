"""Pair deduplication across the whole dataset: exact (same instruction and answer once case, spacing and
punctuation are normalised) and near (MinHash LSH over instruction + answer).

The same instruction asked of two documents with different answers is not a duplicate, nor are two
instructions answered by the same passage; a pair is a duplicate only when both sides (nearly) repeat an
earlier kept pair. Shards arrive in order and the first kept pair of a group wins, so the outcome does not
depend on where a run was interrupted: `PairDeduplicator.remember` rebuilds the state from committed
shards on resume. The filter stage uses it last, so only pairs that enter the dataset are remembered.
"""

from __future__ import annotations

from collections.abc import Iterable

from fineinstructions.records import Pair
from fineinstructions.text.dedup import NearDuplicateIndex
from fineinstructions.text.normalize import dedup_key


def pair_id(pair: Pair) -> str:
    return f"{pair.document_id}/{pair.template_id}"


def pair_key(pair: Pair) -> str:
    """Exact-duplicate key: instruction and answer with case, spacing and punctuation normalised."""
    return dedup_key(pair.instantiated_instruction) + "\n" + dedup_key(pair.answer)


def pair_text(pair: Pair) -> str:
    return f"{pair.instantiated_instruction}\n{pair.answer}"


class PairDeduplicator:
    """Kept pairs so far, as exact keys and MinHash signatures; shared by every shard of a run."""

    def __init__(self, near_duplicate_threshold: float | None = 0.8):
        self.exact: dict[str, str] = {}
        self.near = NearDuplicateIndex(near_duplicate_threshold) if near_duplicate_threshold else None

    def duplicate_of(self, pair: Pair) -> tuple[str, str] | None:
        """(reason, id of the earlier kept pair) when `pair` repeats one, else None."""
        original = self.exact.get(pair_key(pair))
        if original is not None:
            return None if original == pair_id(pair) else ("duplicate_pair", original)
        if self.near is not None:
            duplicate, _ = self.near.find(pair_text(pair))
            if duplicate is not None and duplicate != pair_id(pair):
                return "near_duplicate_pair", duplicate
        return None

    def add(self, pair: Pair) -> None:
        """Remember a pair that entered the dataset (idempotent)."""
        self.exact[pair_key(pair)] = pair_id(pair)
        if self.near is not None:
            self.near.add(pair_id(pair), self.near.signature(pair_text(pair)))

    def remember(self, pairs: Iterable[Pair]) -> None:
        """Add the pairs of committed dataset shards (on resume)."""
        for pair in pairs:
            self.add(pair)
