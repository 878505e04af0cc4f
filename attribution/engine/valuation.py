"""Data valuation for curators: the influence of each training row, and each contribution, on the held-out eval loss.

value_i = sum over eval examples e of tau_i(e) (the same scores as attribution; tau > 0 means the row made the
eval answer more likely). Positive value helped, negative value made the model worse on the eval set. (Counting only
scores above the attribution noise floor was tried: cleaner in a plain-torch experiment, not better on a real job.)

Flag rule ("harmful", version "poa-val-2", calibrated by a permutation null): a contribution of n rows with total
value V is compared with the totals of n rows drawn at random (without replacement) from all the model's rows,
`draws` random permutations (fixed seed). p = (1 + #(null totals <= V)) / (draws + 1); the contribution is flagged
when V < 0 and p <= alpha (default 0.05): a random set of rows of its size pulls the eval loss up this much in at
most 5% of draws, so about 5% of contributions that are no worse than random are flagged too. A flag asks a curator
to look, so a missed saboteur costs more than an extra review. Its power is shown on a trained saboteur in
tests/attribution/test_engine_attribute.py. On the tiny end-to-end job of tests/attribution_app/test_valuation.py
(6 held-out rows, a contributor contradicting 3 of them) it is not: over 14 seeds the contradicting contribution had
the lowest value in 6 and p <= 0.05 in 3, as often as an honest contribution, so a flag there is no evidence and a
curator's confirmation is what counts. Measured with the raw sums, per-eval standardised sums, ranks, and the most
harmful row as statistics: none separated it on that job.
`z` is V standardised against that null (for display and ordering). poa-val-1 used a normal approximation with the rows'
median and MAD over raw summed scores, which missed a contradicting contribution in a real (tiny) training job: the
raw values of unrelated rows were as large as the harmful rows' (shared noise), and far from normal.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from attribution.engine.combine import owner_of
from attribution.engine.index import DEFAULT_METHOD, AttributionIndex
from attribution.engine.lora import EngineError

VALUATION_VERSION = "poa-val-2"
DEFAULT_ALPHA = 0.05
NULL_DRAWS = 2000

NULL_BLOCK = 2**18  # values permuted at a time for the null draws: 2 MB of float64
QUERY_CHUNK = 64  # held-out rows scored against the index at a time: a (64 x rows) block, whatever their number


@dataclass(frozen=True)
class ContributionValue:
    contribution_id: Hashable  # the contribution, or the contributor when row_meta names no contributions
    contributor_id: Hashable
    value: float  # sum of its rows' values
    rows: int
    z: float  # (value - mean of the null) / its standard deviation
    p: float  # permutation p-value: share of random same-size row sets with a total this low or lower
    harmful: bool


@dataclass
class ValuationReport:
    version: str
    method: str
    row_values: dict[int, float]
    contributions: list[ContributionValue]  # most harmful first
    alpha: float
    draws: int


def data_valuation(
    index: AttributionIndex,
    model: nn.Module,
    eval_examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    row_meta: Mapping,
    *,
    method: str = DEFAULT_METHOD,
    alpha: float = DEFAULT_ALPHA,
    draws: int = NULL_DRAWS,
    seed: int = 0,
) -> ValuationReport:
    """eval_examples: (prompt_ids, answer_ids) of the held-out set."""
    if not eval_examples:
        raise EngineError("Data valuation needs at least one held-out eval example.")
    values = np.zeros(index.size, dtype=np.float64)
    for start in range(0, len(eval_examples), QUERY_CHUNK):  # (queries x rows) scores would grow as rows squared
        chunk = eval_examples[start : start + QUERY_CHUNK]
        phis = np.stack([index.query_features(model, prompt, answer) for prompt, answer in chunk])
        values += index.scores(phis, method).sum(axis=0, dtype=np.float64)
    return valuation_from_values(index.row_ids, values, row_meta, method=method, alpha=alpha, draws=draws, seed=seed)


def null_totals(values: np.ndarray, sizes: set[int], draws: int, seed: int) -> dict[int, np.ndarray]:
    """{n: (draws,) totals of n rows drawn without replacement}: each random permutation gives, by its running sum,
    one draw for every size at once. Permutations are made NULL_BLOCK values at a time (at least one permutation): a
    few MB whatever the number of rows, and the same draws as one permutation after another (the generator is used
    in the same order)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 3])))
    wanted = sorted(sizes)
    out = {n: np.empty(draws) for n in wanted}
    positions = np.asarray(wanted) - 1
    block = max(1, NULL_BLOCK // max(1, len(values)))
    for start in range(0, draws, block):
        chunk = min(block, draws - start)
        perms = rng.permuted(np.broadcast_to(values, (chunk, len(values))), axis=1)
        running = np.cumsum(perms[:, : wanted[-1]], axis=1)[:, positions]
        for column, n in enumerate(wanted):
            out[n][start : start + chunk] = running[:, column]
    return out


def valuation_from_values(
    row_ids: np.ndarray,
    values: np.ndarray,
    row_meta: Mapping,
    *,
    method: str,
    alpha: float = DEFAULT_ALPHA,
    draws: int = NULL_DRAWS,
    seed: int = 0,
) -> ValuationReport:
    if not 0 < alpha < 1:
        raise EngineError(f"alpha must lie strictly between 0 and 1, got {alpha}.")
    if draws < 1:
        raise EngineError(f"draws must be at least 1, got {draws}.")
    values = np.asarray(values, dtype=np.float64)
    groups: dict = {}
    for row_id, value in zip(row_ids.tolist(), values.tolist(), strict=True):
        owner = owner_of(row_meta, row_id)
        key = owner.contribution_id if owner.contribution_id is not None else owner.contributor_id
        group = groups.setdefault(key, [owner.contributor_id, []])
        group[1].append(value)
    null = null_totals(values, {len(vals) for _, vals in groups.values()}, draws, seed)
    contributions = []
    for key, (contributor, vals) in groups.items():
        total = float(np.sum(vals))
        totals = null[len(vals)]
        spread = float(np.std(totals))
        z = (total - float(np.mean(totals))) / spread if spread > 0 else 0.0
        p = (1 + int(np.sum(totals <= total))) / (draws + 1)
        contributions.append(
            ContributionValue(key, contributor, total, len(vals), float(z), float(p), total < 0 and p <= alpha)
        )
    contributions.sort(key=lambda c: (c.z, c.value))
    return ValuationReport(
        version=VALUATION_VERSION,
        method=method,
        row_values={int(r): float(v) for r, v in zip(row_ids.tolist(), values.tolist(), strict=True)},
        contributions=contributions,
        alpha=alpha,
        draws=draws,
    )
