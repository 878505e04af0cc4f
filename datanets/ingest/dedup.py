"""Near-duplicate detection with MinHash LSH (datasketch), and copies of other contributors' earlier rows. Exact
duplicates are found by row hash elsewhere."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

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

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 64, shingle_size: int = 3):
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sigs: dict = {}

    def _minhash(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.num_perm)
        m.update_batch(list(shingles(text, self.shingle_size)))
        return m

    def add(self, key, text: str) -> None:
        m = self._minhash(text)
        if key not in self.sigs:
            self.lsh.insert(key, m)
            self.sigs[key] = m

    def check_and_add(self, key, text: str):
        """Returns (resembled key, estimated similarity) or None; then adds the row to the index."""
        found = self.similar_and_add(key, text)
        return found[0] if found else None

    def similar_and_add(self, key, text: str) -> list[tuple]:
        """Every (earlier key, estimated similarity) at or above the threshold, most similar first (ties: the
        earlier-sorting key); then adds the row to the index."""
        m = self._minhash(text)
        found = self._similar(m)
        if key not in self.sigs:
            self.lsh.insert(key, m)
            self.sigs[key] = m
        return found

    def similar(self, text: str) -> list[tuple]:
        """As similar_and_add, without adding the row."""
        return self._similar(self._minhash(text))

    def _similar(self, m: MinHash) -> list[tuple]:
        found = []
        for other in self.lsh.query(m):
            score = m.jaccard(self.sigs[other])
            if score >= self.threshold:
                found.append((other, round(float(score), 3)))
        found.sort(key=lambda item: (-item[1], repr(item[0])))
        return found


_NOT_WORD = re.compile(r"[\W_]+")


def normalised_text(text: str) -> str:
    """The text with case, accents' composed forms, spacing and punctuation ignored: two rows that differ only in
    those are the same row."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


# Copies: word pairs (a changed word touches two shingles, not three) at a lower bar than near-duplicates, so that
# light edits of a row (a word or two changed, added or removed) are still found.
COPY_THRESHOLD = 0.7
COPY_SHINGLE_SIZE = 2
ANSWER_THRESHOLD = 0.5


def _copy_index() -> NearDuplicateIndex:
    return NearDuplicateIndex(threshold=COPY_THRESHOLD, shingle_size=COPY_SHINGLE_SIZE)


@dataclass
class CopySources:
    """The datanet's earlier rows that a new row may copy: {record id: contributor id}, their normalised texts and
    answers, and a MinHash index of their word pairs. `find` names the earliest row of another contributor with the
    same normalised text, or else the most similar row of another contributor (estimated Jaccard similarity of word
    pairs >= COPY_THRESHOLD) whose answer is also nearly the same (the words of the two answers, Jaccard >=
    ANSWER_THRESHOLD): the same question with another answer contradicts a row, it does not copy it."""

    owners: dict[int, int] = field(default_factory=dict)
    by_text: dict[str, int] = field(default_factory=dict)
    answers: dict[int, str] = field(default_factory=dict)
    index: NearDuplicateIndex = field(default_factory=_copy_index)

    def add(self, record_id: int, contributor_id: int, text: str, answer: str | None = None) -> None:
        self.owners[record_id] = contributor_id
        key = normalised_text(text)
        if key not in self.by_text or record_id < self.by_text[key]:
            self.by_text[key] = record_id
        self.answers[record_id] = normalised_text(text if answer is None else answer)
        self.index.add(("record", record_id), text)

    def find(self, text: str, contributor_id: int | None, answer: str | None = None) -> dict | None:
        """{"record_id", "contributor_id", "how": "same text" | "nearly the same", "similarity"} or None."""
        same = self.by_text.get(normalised_text(text))
        if same is not None and self.owners[same] != contributor_id:
            return {"record_id": same, "contributor_id": self.owners[same], "how": "same text", "similarity": 1.0}
        words = set(normalised_text(text if answer is None else answer).split())
        for (where, ref), score in self.index.similar(text):
            if where != "record" or ref not in self.owners or self.owners[ref] == contributor_id:
                continue
            theirs = set(self.answers[ref].split())
            if words | theirs and len(words & theirs) / len(words | theirs) >= ANSWER_THRESHOLD:
                return {"record_id": ref, "contributor_id": self.owners[ref], "how": "nearly the same",
                        "similarity": score}  # fmt: skip
        return None
