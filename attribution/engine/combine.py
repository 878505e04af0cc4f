"""Proof of Attribution for one answer: gradient influence and verbatim spans combined into contributor shares.

The rule, version "poa-3" (METHOD_VERSION; change the version whenever any step below changes):

1. Gradient scores. tau_i = score of every indexed row (default method "fisher": block-diagonal damped Fisher per
   LoRA matrix); tau > 0 means training on row i made this answer more likely.
2. Noise floor, calibrated by measurement when the index is built (`index.calibrate_floor`). Each score is put on
   a scale-free relevance scale rho_i = tau_i / (|phi_q| |phi_i|) in the method's metric (for "fisher":
   |x| = sqrt(x^T (F + lambda I)^-1 x); rho is a cosine in [-1, 1]). NULL_QUERIES permutation-null queries (a
   training prompt, then an answer of random tokens drawn from all rows' answers: the datanet's vocabulary, no
   row's content) are scored against every row, and so are the fluent calibration queries (calibration.py: the
   tuned model's own greedy answers to everyday prompts, the kind of unrelated answer the model really gives).
   The floor c is the higher of the two (1 - alpha) quantiles, over each set, of the largest rho any row gets
   (alpha = null_alpha, default 0.05). So an unrelated answer, random or fluent, credits any row at all with
   probability about alpha, whatever the number of rows. (Rule "poa-2", for an index of format poa-index-2: the
   same with the permutation nulls alone.)
   A row's credit is its influence above the floor: credit_i = tau_i (rho_i - c) / rho_i where rho_i > c, else 0.
   The attributed fraction a is 1 when some row clears the floor, else 0 (the whole gradient part unattributed).
   Contributor c gets a * credit_c / sum(credit).
3. Span credit. Maximal verbatim spans of >= min_span answer tokens (see spans.py); each answer token covered by a
   span is credited to the longest covering span with weight -log p_unigram(token); a span's weight is split
   equally over the distinct contributors having a row that contains it (and within a contributor equally over
   those rows). Span shares are normalised to 1 over contributors.
4. Mix. With f = fraction of answer tokens covered verbatim: share_c = f * span_c + (1 - f) * gradient_c, and
   unattributed = (1 - f) * (1 - a). Shares plus unattributed sum to 1.
5. Rows. The same mix per row: row_share_i = f * span_i + (1 - f) * gradient_i, where span_i is row i's part of
   the span credit (its contributor's part of each span, split equally over that contributor's rows holding it)
   and gradient_i = a * credit_i / sum(credit). A contributor's rows' shares sum to the contributor's share. The
   result keeps the ROW_SHARES_KEPT largest (`row_shares`); what is spread thinner than that is not tied to a row.

`AttributionResult.params` stores the method version and every parameter (index seed, k, widths, kappa, the noise
floor and its alpha and number of null queries, score method, min_span, top_k), so a result can be recomputed
from the same model, rows and index.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
from torch import nn

from attribution.engine.index import DEFAULT_METHOD, AttributionIndex
from attribution.engine.lora import EngineError
from attribution.engine.screen import screened_scores
from attribution.engine.spans import DEFAULT_MIN_SPAN, SpanIndex, SpanMatch

METHOD_VERSION = "poa-3"  # poa-2: the floor from permutation nulls alone; poa-1: median + 3 MAD, mixture mass
# The rules this engine still computes: an index of format "poa-index-2" (no fluent calibration) is attributed by
# rule "poa-2" exactly as when it was built, so its answers stay verifiable; poa-1 is refused (recorded as such).
METHOD_VERSIONS = ("poa-2", METHOD_VERSION)


def method_version_of(index: AttributionIndex) -> str:
    """The rule an index is attributed under: "poa-2" for an index built before fluent calibration."""
    return "poa-2" if index.format == "poa-index-2" else METHOD_VERSION


DEFAULT_TOP_K = 10
MAX_ROWS_PER_SPAN = 20  # rows listed per span in the result (credit still goes to every containing row)
ROW_SHARES_KEPT = 100  # rows whose share of an answer is kept (rule step 5), largest first


class RowOwner(NamedTuple):
    contributor_id: Hashable
    contribution_id: Hashable | None = None


def owner_of(row_meta: Mapping, row_id: int) -> RowOwner:
    """row_meta values are a RowOwner, a (contributor_id, contribution_id) pair or a bare contributor id."""
    try:
        value = row_meta[row_id]
    except KeyError:
        raise EngineError(f"Row {row_id} is in the index but not in row_meta (its contributor is unknown).") from None
    if isinstance(value, RowOwner):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return RowOwner(*value)
    return RowOwner(value)


@dataclass
class AttributionResult:
    method_version: str
    contributor_shares: dict  # contributor_id -> share; with `unattributed` sums to 1
    unattributed: float
    top_rows: list[tuple[int, float]]  # (row_id, tau) by decreasing tau, positive only
    spans: list[tuple[int, int, int]]  # (start, end, row_id) in answer token positions
    contribution_shares: dict = field(default_factory=dict)  # contribution_id -> share, when row_meta names them
    span_coverage: float = 0.0  # f: fraction of answer tokens covered verbatim
    gradient_attributed: float = 0.0  # a: attributed fraction of the gradient part
    params: dict = field(default_factory=dict)
    row_shares: dict = field(default_factory=dict)  # row_id -> share of the answer (rule step 5), largest kept

    def to_dict(self) -> dict:
        """JSON-ready (ids become strings as JSON object keys)."""
        data = asdict(self)
        data["contributor_shares"] = {str(k): v for k, v in self.contributor_shares.items()}
        data["contribution_shares"] = {str(k): v for k, v in self.contribution_shares.items()}
        data["top_rows"] = [[int(r), float(s)] for r, s in self.top_rows]
        data["spans"] = [[int(a), int(b), int(r)] for a, b, r in self.spans]
        data["row_shares"] = {str(k): v for k, v in self.row_shares.items()}
        return data


def gradient_credit(
    index: AttributionIndex, scores: np.ndarray, phi_q: np.ndarray, method: str
) -> tuple[np.ndarray, float]:
    """Per-row credit above the calibrated noise floor (rule step 2) and the attributed fraction a."""
    floor = index.null_floor.get(method)
    if floor is None:
        raise EngineError(f"The index has no noise calibration for score method {method!r}.")
    scores = np.asarray(scores, dtype=np.float64)
    rho = index.relevance(scores, phi_q, method).astype(np.float64)
    above = rho > max(floor, 0.0)
    credit = np.zeros_like(scores)
    credit[above] = scores[above] * (rho[above] - floor) / rho[above]
    return credit, 1.0 if credit.sum() > 0 else 0.0


def span_credit(match: SpanMatch, row_meta: Mapping) -> tuple[dict, dict[int, float]]:
    """Rule step 3: contributor -> span share (sums to 1 when there are spans) and row_id -> credit."""
    by_contributor: dict = {}
    by_row: dict[int, float] = {}
    for span_no, span in enumerate(match.spans):
        weight = float(match.token_weight[match.token_span == span_no].sum())
        if weight <= 0:
            continue
        rows_of: dict = {}
        for row_id in span.row_ids:
            rows_of.setdefault(owner_of(row_meta, row_id).contributor_id, []).append(row_id)
        for contributor, rows in rows_of.items():
            part = weight / len(rows_of)
            by_contributor[contributor] = by_contributor.get(contributor, 0.0) + part
            for row_id in rows:
                by_row[row_id] = by_row.get(row_id, 0.0) + part / len(rows)
    total = sum(by_contributor.values())
    if total > 0:
        by_contributor = {c: v / total for c, v in by_contributor.items()}
    return by_contributor, by_row


def attribute(
    index: AttributionIndex,
    span_index: SpanIndex | None,
    model: nn.Module,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    row_meta: Mapping,
    *,
    method: str = DEFAULT_METHOD,
    min_span: int = DEFAULT_MIN_SPAN,
    top_k: int = DEFAULT_TOP_K,
) -> AttributionResult:
    """Attribute one generated answer (rule "poa-2" above). row_meta: row_id -> contributor id, or RowOwner."""
    phi_q = index.query_features(model, prompt_ids, answer_ids)
    return attribute_features(
        index, span_index, phi_q, answer_ids, row_meta, method=method, min_span=min_span, top_k=top_k
    )


def attribute_features(
    index: AttributionIndex,
    span_index: SpanIndex | None,
    phi_q: np.ndarray,
    answer_ids: Sequence[int],
    row_meta: Mapping,
    *,
    method: str = DEFAULT_METHOD,
    min_span: int = DEFAULT_MIN_SPAN,
    top_k: int = DEFAULT_TOP_K,
) -> AttributionResult:
    """`attribute` after the forward+backward: the scoring, aggregation and span part alone."""
    floor = index.null_floor.get(method)
    if floor is None:  # gradient_credit says why
        scores = index.scores(phi_q, method)
    else:  # the float path's scores wherever they decide a share or the top rows (screen.py)
        scores, _ = screened_scores(index, phi_q, method, floor, top_k)
    credit, attributed = gradient_credit(index, scores, phi_q, method)

    gradient_contributors: dict = {}
    gradient_contributions: dict = {}
    gradient_rows: dict[int, float] = {}
    total_credit = float(credit.sum())
    if total_credit > 0 and attributed > 0:
        for row in np.flatnonzero(credit):
            part = attributed * float(credit[row]) / total_credit
            gradient_rows[int(index.row_ids[row])] = part
            owner = owner_of(row_meta, int(index.row_ids[row]))
            gradient_contributors[owner.contributor_id] = gradient_contributors.get(owner.contributor_id, 0.0) + part
            if owner.contribution_id is not None:
                key = owner.contribution_id
                gradient_contributions[key] = gradient_contributions.get(key, 0.0) + part

    spans: list[tuple[int, int, int]] = []
    coverage = 0.0
    span_contributors: dict = {}
    span_contributions: dict = {}
    span_row_shares: dict[int, float] = {}
    if span_index is not None and len(answer_ids):
        match = span_index.match(answer_ids, min_span)
        coverage = match.coverage
        span_contributors, span_rows = span_credit(match, row_meta)
        row_total = sum(span_rows.values())
        for row_id, value in span_rows.items():
            if row_total > 0:
                span_row_shares[row_id] = value / row_total
            contribution = owner_of(row_meta, row_id).contribution_id
            if contribution is not None and row_total > 0:
                span_contributions[contribution] = span_contributions.get(contribution, 0.0) + value / row_total
        for span in match.spans:
            spans.extend((span.start, span.end, row_id) for row_id in span.row_ids[:MAX_ROWS_PER_SPAN])

    def mix(span_part: dict, gradient_part: dict) -> dict:
        keys = list(dict.fromkeys([*span_part, *gradient_part]))
        mixed = {key: coverage * span_part.get(key, 0.0) + (1 - coverage) * gradient_part.get(key, 0.0) for key in keys}
        return {key: value for key, value in sorted(mixed.items(), key=lambda kv: -kv[1]) if value > 0}

    contributor_shares = mix(span_contributors, gradient_contributors)
    row_shares = mix(span_row_shares, gradient_rows)
    kept = sorted(row_shares.items(), key=lambda kv: (-kv[1], kv[0]))[:ROW_SHARES_KEPT]
    unattributed = max(0.0, 1.0 - sum(contributor_shares.values()))
    candidates = np.argpartition(-scores, top_k)[:top_k] if 0 < top_k < len(scores) else np.arange(len(scores))
    order = candidates[np.lexsort((candidates, -scores[candidates]))][:top_k]  # by score, ties by row position
    top_rows = [(int(index.row_ids[i]), float(scores[i])) for i in order if scores[i] > 0]
    version = method_version_of(index)
    return AttributionResult(
        method_version=version,
        contributor_shares=contributor_shares,
        unattributed=unattributed,
        top_rows=top_rows,
        spans=spans,
        contribution_shares=mix(span_contributions, gradient_contributions),
        span_coverage=coverage,
        gradient_attributed=attributed,
        row_shares=dict(kept),
        params={
            "method_version": version,
            "score_method": method,
            "min_span": min_span,
            "top_k": top_k,
            "index": index.params(),
        },
    )
