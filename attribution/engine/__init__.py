"""Proof of Attribution engine: plain PyTorch/NumPy, no Django. The Django side calls only what is listed here.

Inputs
------
- `model`: a peft LoRA model (plain LoRA on linear layers; DoRA / embedding LoRA are refused with EngineError)
  at its final adapter, on CPU or GPU.
- training rows: `(row_id: int, input_ids: list[int], labels: list[int])`, labels -100 on non-answer tokens
  (exactly what the fine-tune trained on).
- `row_meta`: `{row_id: contributor_id}` or `{row_id: RowOwner(contributor_id, contribution_id)}`.

At the end of a training job (its own progress stage)
-----------------------------------------------------
    index = build_index(model, rows, k=4096, seed=0, projection="lowrank", kappa=DEFAULT_KAPPA,
                        batch_size=16, max_tokens=16 * max_length,     # padded tokens per pass (rows + the
                        pad_id=tokenizer.pad_token_id,                 # 32 calibration queries, by length)
                        on_progress=lambda done, total: ...)
    index.save(folder / "attribution.safetensors")          # N x k int8 features + per-row scale and norms, row
                                                            # ids, per-matrix (F_m + lambda_m I)^-1, seed, k_m,
                                                            # version (format poa-index-4; ~k + 20 bytes a row)
    spans = SpanIndex.build(rows); spans.save(folder / "spans.npz")

Per inference (a `default`-queue task)
--------------------------------------
    index = AttributionIndex.load(path); spans = SpanIndex.load(path2)   # features mapped from the file, not read
    result = attribute(index, spans, model, prompt_ids, answer_ids, row_meta)   # -> AttributionResult
    result.method_version          # "poa-3" (METHOD_VERSION; "poa-2" for an index built before it): store it
    result.contributor_shares      # {contributor_id: share}; + result.unattributed == 1 (within float rounding)
    result.contribution_shares     # {contribution_id: share} when row_meta names contributions
    result.top_rows                # [(row_id, tau)] best first, tau > 0 only (at most top_k=10)
    result.row_shares              # {row_id: share of the answer}: the credited rows (the 100 largest); a
                                   # contributor's rows sum to their share when none is left out
    result.spans                   # [(start, end, row_id)]: answer token positions [start, end) found verbatim
    result.span_coverage, result.gradient_attributed, result.params   # what a recomputation needs
    result.to_dict()               # JSON-ready
Only the answer is traced; pass the prompt separately. tau > 0 means the row made the answer more likely.

Curators
--------
    report = data_valuation(index, model, eval_examples=[(prompt_ids, answer_ids), ...], row_meta=row_meta)
    report.row_values {row_id: value}; report.contributions [ContributionValue(contribution_id, contributor_id,
    value, rows, z, harmful)] most harmful first; value < 0: made the eval loss worse; `harmful` per the rule in
    valuation.py (version "poa-val-1").

Score methods: "fisher" (default: block-diagonal damped Fisher per LoRA matrix, lambda_m = kappa tr(F_m)/k_m),
"dot", "cosine" via `index.scores(phi_q, method)` / `attribute(..., method=...)`. The default was chosen by the
planted-fact top-1 and LDS measured with `attribution.engine.validation` (bench/bench_attribution.py).

Errors: every bad input raises `EngineError` (a ValueError) with a plain-words message.
"""

from attribution.engine.calibration import CALIBRATION_PROMPTS, calibration_inputs, calibration_prompt_ids
from attribution.engine.combine import (
    METHOD_VERSION,
    METHOD_VERSIONS,
    AttributionResult,
    RowOwner,
    attribute,
    attribute_features,
)
from attribution.engine.index import (
    DEFAULT_KAPPA,
    DEFAULT_METHOD,
    SCORE_METHODS,
    AttributionIndex,
    build_index,
)
from attribution.engine.lora import EngineError
from attribution.engine.spans import DEFAULT_MIN_SPAN, SpanIndex
from attribution.engine.valuation import ContributionValue, ValuationReport, data_valuation

__all__ = [
    "DEFAULT_KAPPA",
    "DEFAULT_METHOD",
    "DEFAULT_MIN_SPAN",
    "CALIBRATION_PROMPTS",
    "METHOD_VERSION",
    "METHOD_VERSIONS",
    "SCORE_METHODS",
    "AttributionIndex",
    "AttributionResult",
    "ContributionValue",
    "EngineError",
    "RowOwner",
    "SpanIndex",
    "ValuationReport",
    "attribute",
    "attribute_features",
    "build_index",
    "calibration_inputs",
    "calibration_prompt_ids",
    "data_valuation",
]
