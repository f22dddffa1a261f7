"""Near-duplicate detection with MinHash LSH (datasketch) over word shingles."""

from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from fineinstructions.text.normalize import words


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of the normalised text (the whole text for shorter ones)."""
    tokens = words(text)
    if len(tokens) <= n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class NearDuplicateIndex:
    """Remembers texts and answers, for each new one, which earlier text it nearly duplicates.

    Two texts are near duplicates when the estimated Jaccard similarity of their word shingles is at
    least `threshold`; candidates from LSH are confirmed with the MinHash estimate.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, shingle: int = 3, seed: int = 1):
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle = shingle
        self.seed = seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.hashes: dict[str, MinHash] = {}

    def signature(self, text: str) -> MinHash:
        minhash = MinHash(num_perm=self.num_perm, seed=self.seed)
        for shingle in shingles(text, self.shingle):
            minhash.update(shingle.encode("utf-8"))
        return minhash

    def find(self, text: str) -> tuple[str | None, MinHash]:
        """The key of an earlier near duplicate of `text` (or None), and the text's signature."""
        signature = self.signature(text)
        best, best_similarity = None, 0.0
        for key in self.lsh.query(signature):
            similarity = signature.jaccard(self.hashes[key])
            if similarity >= self.threshold and similarity > best_similarity:
                best, best_similarity = key, similarity
        return best, signature

    def add(self, key: str, signature: MinHash) -> None:
        if key not in self.hashes:
            self.lsh.insert(key, signature)
            self.hashes[key] = signature

    def check_and_add(self, key: str, text: str) -> str | None:
        """Return the earlier near duplicate's key, or add this text and return None."""
        duplicate, signature = self.find(text)
        if duplicate is None:
            self.add(key, signature)
        return duplicate
