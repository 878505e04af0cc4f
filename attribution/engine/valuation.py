"""Data valuation for curators: the influence of each training row, and each contribution, on the held-out eval loss.

value_i = sum over eval examples e of tau_i(e) (the same scores as attribution; tau > 0 means the row made the
eval answer more likely). Positive value helped, negative value made the model worse on the eval set.

Flag rule ("harmful", version "poa-val-1"): rows' values have a robust centre m (median) and scale s
(1.4826 * MAD). A contribution with n rows and mean row value v is flagged when its total value is negative and
z = (v - m) / (s / sqrt(n)) <= -harmful_z (default 3): its rows pull the eval loss up more than noise in
n unrelated rows would.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from attribution.engine.combine import owner_of
from attribution.engine.index import DEFAULT_METHOD, AttributionIndex
from attribution.engine.lora import EngineError

VALUATION_VERSION = "poa-val-1"
DEFAULT_HARMFUL_Z = 3.0


@dataclass(frozen=True)
class ContributionValue:
    contribution_id: Hashable  # the contribution, or the contributor when row_meta names no contributions
    contributor_id: Hashable
    value: float  # sum of its rows' values
    rows: int
    z: float
    harmful: bool


@dataclass
class ValuationReport:
    version: str
    method: str
    row_values: dict[int, float]
    contributions: list[ContributionValue]  # most harmful first
    harmful_z: float


def data_valuation(
    index: AttributionIndex,
    model: nn.Module,
    eval_examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    row_meta: Mapping,
    *,
    method: str = DEFAULT_METHOD,
    harmful_z: float = DEFAULT_HARMFUL_Z,
) -> ValuationReport:
    """eval_examples: (prompt_ids, answer_ids) of the held-out set."""
    if not eval_examples:
        raise EngineError("Data valuation needs at least one held-out eval example.")
    phis = np.stack([index.query_features(model, prompt, answer) for prompt, answer in eval_examples])
    values = index.scores(phis, method).sum(axis=0)
    return valuation_from_values(index.row_ids, values, row_meta, method=method, harmful_z=harmful_z)


def valuation_from_values(
    row_ids: np.ndarray, values: np.ndarray, row_meta: Mapping, *, method: str, harmful_z: float = DEFAULT_HARMFUL_Z
) -> ValuationReport:
    centre = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - centre))) or float(np.std(values)) or 1.0
    groups: dict = {}
    for row_id, value in zip(row_ids.tolist(), values.tolist(), strict=True):
        owner = owner_of(row_meta, row_id)
        key = owner.contribution_id if owner.contribution_id is not None else owner.contributor_id
        group = groups.setdefault(key, [owner.contributor_id, []])
        group[1].append(value)
    contributions = []
    for key, (contributor, vals) in groups.items():
        n = len(vals)
        z = (float(np.mean(vals)) - centre) / (scale / np.sqrt(n))
        total = float(np.sum(vals))
        contributions.append(ContributionValue(key, contributor, total, n, float(z), total < 0 and z <= -harmful_z))
    contributions.sort(key=lambda c: c.z)
    return ValuationReport(
        version=VALUATION_VERSION,
        method=method,
        row_values={int(r): float(v) for r, v in zip(row_ids.tolist(), values.tolist(), strict=True)},
        contributions=contributions,
        harmful_z=harmful_z,
    )
