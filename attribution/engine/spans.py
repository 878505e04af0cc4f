"""Exact span matching: which training rows an answer repeats verbatim.

What is indexed: the ANSWER tokens of each training row (labels != -100), each contiguous answer segment as its own
document. Those are the only tokens the fine-tune taught the model to produce; prompt tokens were never trained
on, and indexing them would credit chat-template boilerplate and questions that the model merely read. On the query
side only the generated answer is traced, never the prompt (a prompt pasted back is not learned content).

The index is a suffix array (NumPy prefix doubling) over the concatenated segments, each followed by its own
unique negative separator so that no match crosses a segment boundary. For an answer, the matching statistic
L[i] (longest prefix of answer[i:] found anywhere) comes from one binary search per position; the maximal spans
with L >= min_len are reported with every row that contains them. A span's weight is its rarity: the sum over its
tokens of -log p_unigram(token), p estimated on the indexed tokens with add-one smoothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attribution.engine.lora import IGNORE_INDEX, EngineError

SPAN_FORMAT = "poa-spans-1"
DEFAULT_MIN_SPAN = 8


def suffix_array(seq: np.ndarray) -> np.ndarray:
    """Suffix array by prefix doubling, O(n log^2 n) in vectorised NumPy."""
    n = len(seq)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.unique(seq, return_inverse=True)[1].astype(np.int64)
    step = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - step] = rank[step:] if step < n else second[:0]
        order = np.lexsort((second, rank))
        changed = np.r_[True, (rank[order][1:] != rank[order][:-1]) | (second[order][1:] != second[order][:-1])]
        new_rank = np.empty(n, dtype=np.int64)
        new_rank[order] = np.cumsum(changed) - 1
        rank = new_rank
        if rank.max() == n - 1:
            return order.astype(np.int64)
        step *= 2


@dataclass(frozen=True)
class Span:
    start: int  # answer token positions [start, end)
    end: int
    row_ids: tuple[int, ...]  # every indexed row containing answer[start:end]
    weight: float  # rarity: sum of -log p_unigram over the span's tokens


@dataclass(frozen=True)
class SpanMatch:
    spans: list[Span]
    token_span: np.ndarray  # (len(answer),) index into spans of the longest span covering each token, -1 if none
    token_weight: np.ndarray  # (len(answer),) -log p_unigram per token

    @property
    def coverage(self) -> float:
        """Fraction of answer tokens covered verbatim by a span."""
        return float((self.token_span >= 0).mean()) if len(self.token_span) else 0.0


class SpanIndex:
    def __init__(
        self,
        tokens: np.ndarray,
        sa: np.ndarray,
        segment_starts: np.ndarray,
        segment_rows: np.ndarray,
        row_ids: np.ndarray,
        vocab: np.ndarray,
        counts: np.ndarray,
    ):
        self.tokens = tokens  # int64 with negative separators
        self.sa = sa
        self.segment_starts = segment_starts  # start position of each segment in `tokens`
        self.segment_rows = segment_rows  # row index (into row_ids) of each segment
        self.row_ids = row_ids
        self.vocab = vocab  # sorted token ids seen
        self.counts = counts  # their counts
        total = float(counts.sum())
        self._log_denominator = np.log(total + len(vocab) + 1)

    @classmethod
    def build(cls, rows: Sequence[tuple[int, Sequence[int], Sequence[int]]]) -> SpanIndex:
        """rows: (row_id, input_ids, labels); the answer tokens are the labels that are not -100."""
        pieces, starts, seg_rows, row_ids = [], [], [], []
        position = 0
        for row_index, (row_id, _ids, labels) in enumerate(rows):
            row_ids.append(int(row_id))
            labels = np.asarray(labels, dtype=np.int64)
            answer = labels != IGNORE_INDEX
            if not answer.any():
                continue
            edges = np.flatnonzero(np.diff(np.r_[0, answer.astype(np.int8), 0]))
            for begin, end in zip(edges[::2], edges[1::2], strict=True):
                segment = labels[begin:end]
                starts.append(position)
                seg_rows.append(row_index)
                pieces.append(segment)
                pieces.append(np.array([-(len(starts))], dtype=np.int64))  # unique separator
                position += len(segment) + 1
        if len(set(row_ids)) != len(row_ids):
            raise EngineError("Row ids must be unique.")
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        answer_tokens = tokens[tokens >= 0]
        vocab, counts = np.unique(answer_tokens, return_counts=True)
        return cls(
            tokens=tokens,
            sa=suffix_array(tokens),
            segment_starts=np.asarray(starts, dtype=np.int64),
            segment_rows=np.asarray(seg_rows, dtype=np.int64),
            row_ids=np.asarray(row_ids, dtype=np.int64),
            vocab=vocab.astype(np.int64),
            counts=counts.astype(np.int64),
        )

    # -- lookups ------------------------------------------------------------------------------------------------
    def token_weights(self, tokens: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        counts = np.zeros(len(tokens), dtype=np.float64)
        if len(self.vocab):
            where = np.minimum(np.searchsorted(self.vocab, tokens), len(self.vocab) - 1)
            counts = np.where(self.vocab[where] == tokens, self.counts[where], 0).astype(np.float64)
        return self._log_denominator - np.log(counts + 1.0)

    def _compare(self, suffix: int, pattern: np.ndarray) -> tuple[int, int]:
        """(lcp, order): order 0 if the suffix starts with the pattern, -1 if it sorts before it, 1 after."""
        window = self.tokens[suffix : suffix + len(pattern)]
        differ = np.flatnonzero(window != pattern[: len(window)])
        if len(differ) == 0:
            return (len(window), 0) if len(window) == len(pattern) else (len(window), -1)
        first = int(differ[0])
        return first, (-1 if window[first] < pattern[first] else 1)

    def _lower_bound(self, pattern: np.ndarray, *, after_prefix: bool) -> int:
        """First SA slot whose suffix is >= pattern (after_prefix=False) or > every suffix starting with it."""
        lo, hi = 0, len(self.sa)
        while lo < hi:
            mid = (lo + hi) // 2
            _, order = self._compare(int(self.sa[mid]), pattern)
            if order < 0 or (after_prefix and order == 0):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _longest_match(self, pattern: np.ndarray) -> int:
        slot = self._lower_bound(pattern, after_prefix=False)
        best = 0
        for neighbour in (slot - 1, slot):
            if 0 <= neighbour < len(self.sa):
                best = max(best, self._compare(int(self.sa[neighbour]), pattern)[0])
        return best

    def rows_containing(self, pattern: Sequence[int]) -> tuple[int, ...]:
        pattern = np.asarray(pattern, dtype=np.int64)
        lo = self._lower_bound(pattern, after_prefix=False)
        hi = self._lower_bound(pattern, after_prefix=True)
        positions = self.sa[lo:hi]
        segments = np.searchsorted(self.segment_starts, positions, side="right") - 1
        rows = np.unique(self.segment_rows[segments])
        return tuple(int(r) for r in self.row_ids[rows])

    def match(self, answer_ids: Sequence[int], min_len: int = DEFAULT_MIN_SPAN) -> SpanMatch:
        """Maximal verbatim spans of >= min_len answer tokens, and which span covers each answer token."""
        if min_len < 1:
            raise EngineError(f"The minimum span length must be at least 1, got {min_len}.")
        answer = np.asarray(answer_ids, dtype=np.int64)
        n = len(answer)
        lengths = np.zeros(n, dtype=np.int64)
        for i in range(n):
            if i > 0 and lengths[i - 1] > 1:  # matching statistics shrink by at most one per step
                floor = lengths[i - 1] - 1
                if floor >= n - i:
                    lengths[i] = n - i
                    continue
            lengths[i] = self._longest_match(answer[i:]) if len(self.sa) else 0
        weights = self.token_weights(answer)
        spans: list[Span] = []
        token_span = np.full(n, -1, dtype=np.int64)
        best_len = np.zeros(n, dtype=np.int64)
        for i in range(n):
            length = int(lengths[i])
            if length < min_len or (i > 0 and lengths[i - 1] - 1 >= length):
                continue  # too short, or inside the span that starts one token earlier
            end = i + length
            spans.append(Span(i, end, self.rows_containing(answer[i:end]), float(weights[i:end].sum())))
            longer = best_len[i:end] < length
            token_span[i:end][longer] = len(spans) - 1
            best_len[i:end][longer] = length
        return SpanMatch(spans=spans, token_span=token_span, token_weight=weights)

    # -- storage ------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.savez(
                handle,
                meta=np.array(json.dumps({"format": SPAN_FORMAT})),
                tokens=self.tokens,
                sa=self.sa,
                segment_starts=self.segment_starts,
                segment_rows=self.segment_rows,
                row_ids=self.row_ids,
                vocab=self.vocab,
                counts=self.counts,
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> SpanIndex:
        path = Path(path)
        if not path.exists():
            raise EngineError(f"No span index at {path}.")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != SPAN_FORMAT:
                raise EngineError(f"{path} has span format {meta.get('format')!r}; this engine reads {SPAN_FORMAT!r}.")
            return cls(
                **{key: data[key] for key in ("tokens", "sa", "segment_starts", "segment_rows", "row_ids")},
                vocab=data["vocab"],
                counts=data["counts"],
            )
