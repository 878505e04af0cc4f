"""Near-duplicate detection with MinHash LSH (datasketch). Exact duplicates are found by row hash elsewhere."""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = 3) -> set[bytes]:
    """Word n-grams of the lower-cased text (single words for very short texts)."""
    words = _WORD.findall(text.lower())
    if len(words) < size:
        return {w.encode() for w in words} or {text.encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


class NearDuplicateIndex:
    """Rows are added in order; `check_and_add` answers which earlier row (if any) a new row resembles.

    Keys are any hashable label the caller chooses (here: ("record", id) for rows already in the datanet and
    ("line", n) for rows of the upload). The estimate is checked against `threshold` (Jaccard similarity of
    word 3-gram sets) before a row is reported, so LSH candidates below the threshold are not flagged."""

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 64):
        self.threshold = threshold
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sigs: dict = {}

    def _minhash(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.num_perm)
        m.update_batch(list(shingles(text)))
        return m

    def add(self, key, text: str) -> None:
        m = self._minhash(text)
        if key not in self.sigs:
            self.lsh.insert(key, m)
            self.sigs[key] = m

    def check_and_add(self, key, text: str):
        """Returns (resembled key, estimated similarity) or None; then adds the row to the index."""
        m = self._minhash(text)
        best = None
        for other in self.lsh.query(m):
            score = m.jaccard(self.sigs[other])
            if score >= self.threshold and (best is None or score > best[1]):
                best = (other, round(float(score), 3))
        if key not in self.sigs:
            self.lsh.insert(key, m)
            self.sigs[key] = m
        return best
