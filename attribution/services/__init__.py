"""Attribution writes, one module per use case:

- indexing: the index a training job builds over its training rows, and the data valuation of its contributions
  (the fine-tune's "indexing" stage);
- answer: one attribution per answer (a pending row when an inference completes, then the engine's result or the
  fallback, stored once);
- settlement: the hand-off of a finished attribution's fee to the ledger (rule "settle-2": the unattributed part to
  the model owner, never by row count; "settle-3" for answers given with retrieval: a part to the contributors of
  the cited rows; older answers under their recorded "settle-1"), batches of waiting answers
  claimed with advisory locks, one ledger.settlement_post_many call per batch;
- row_earnings: a contributor's pay for an answer divided over their rows (what each row earned);
- settlement_check: a settled answer checked against the rule it recorded;
- holding / penalties: which parts of a settlement arrive as pending earnings; a curator's verdict on a
  contribution flagged harmful (forfeit, slash, reject) or the flag dismissed;
- sweep: completed answers left unfinished by a lost message or a dead worker, enqueued again;
- verify: an answer's attribution re-checked from the stored index, answer and settlement (attribution_verify).

Every result stores the rules it was computed with, so that it can be recomputed (see each module's docstring).
"""

from attribution.services.answer import (
    AttributionRetry,
    attribution_compute,
    attribution_request,
    attribution_run,
    inference_completed,
)
from attribution.services.bonds import bond_on_decided, bond_on_upload, bonds_held, bonds_settle_decided
from attribution.services.holding import pending_parts
from attribution.services.indexing import INDEX_FOLDER, index_build, index_stage_discard, index_stage_run
from attribution.services.penalties import FindingError, contribution_decide
from attribution.services.row_earnings import attribution_rows_for, original_rows, row_amounts, row_amounts_write
from attribution.services.settlement import (
    CLAIM_CANDIDATES,
    RETRIEVAL_PART,
    SETTLE_2_POLICY,
    SETTLE_3_POLICY,
    SETTLEMENT_RULE,
    attribution_settle,
    citation_weights,
    retrieval_part,
    settlement_shares,
    settlement_terms,
    training_row_shares,
)
from attribution.services.settlement_check import attribution_settlement_check, rule_payouts
from attribution.services.sweep import attribution_sweep_pending
from attribution.services.verify import Check, Verification, attribution_verify, index_files_digest

__all__ = [
    "CLAIM_CANDIDATES",
    "RETRIEVAL_PART",
    "SETTLE_3_POLICY",
    "INDEX_FOLDER",
    "SETTLEMENT_RULE",
    "SETTLE_2_POLICY",
    "AttributionRetry",
    "Check",
    "Verification",
    "attribution_compute",
    "FindingError",
    "bond_on_decided",
    "bond_on_upload",
    "bonds_held",
    "bonds_settle_decided",
    "contribution_decide",
    "attribution_request",
    "attribution_run",
    "attribution_settle",
    "citation_weights",
    "retrieval_part",
    "attribution_settlement_check",
    "attribution_sweep_pending",
    "attribution_verify",
    "index_files_digest",
    "inference_completed",
    "index_build",
    "index_stage_discard",
    "index_stage_run",
    "pending_parts",
    "rule_payouts",
    "attribution_rows_for",
    "original_rows",
    "row_amounts",
    "row_amounts_write",
    "settlement_shares",
    "settlement_terms",
    "training_row_shares",
]
