"""Settlement: a finished attribution's fee handed to the ledger, batched when settlements queue up.

Every attribution records the rule it is settled under (`settlement_rule`); settling and checking dispatch on it
(RULES), so older settlements stay verifiable under their own rule.

- Rule "settle-3" (new answers of models that answer with retrieval): settle-2 plus a retrieval part. When the
  model answered with retrieval and cited rows (modelfactory.services.retrieval), RETRIEVAL_PART of the
  contributors' part is shared by the cited rows' contributors by citation weight (each cited row's search score
  over the scores of all cited rows; equal weights if the scores are all zero); the rest is settled as settle-2
  would settle the whole (attribution shares, the unattributed part to the owner). As one set of shares: settled
  share_c = (1 - R) * share_c + R * weight_c and unattributed = (1 - R) * unattributed, with R = RETRIEVAL_PART
  when something was cited, else 0 (then settle-3 pays exactly as settle-2). One ledger transaction per answer,
  as before; the weights are recorded with it.
- Rule "settle-2" (new answers without retrieval): no pay for volume. The engine's shares (method "poa-2") name
  who shaped the answer and are paid as they are: settled share_c = share_c. The part it could not pin on anyone
  (`unattributed`) goes to the model owner (policy SETTLE_2_POLICY, unattributed_to "owner"): rows that no answer
  draws on earn nothing, whatever their number. A fallback (the engine failed) has no shares: the whole
  contributors' part goes to the owner, and the ledger transaction's fallback_reason says so.
- Rule "settle-1" (answers attributed before "settle-2"): the unattributed part is spread over the contributors by
  their row share of the model's training data (rows in the job's datanet versions,
  version_contributor_row_counts): settled share_c = share_c + unattributed * row_share_c, and a fallback is
  settled by row share alone. The ledger splits the contributors' part of the fee (70% by default) by these
  shares, exactly to the micro-unit.
- No hold (nothing reserved) or a zero fee: there is nothing to settle; a zero-fee hold is released in full.
- Settlements batch when they queue (PostgreSQL): an answer's settlement takes along other finished answers waiting
  for theirs in one ledger call (`attribution_settle`); each is still its own ledger transaction.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from fractions import Fraction

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from attribution.models import Attribution, AttributionShare
from attribution.services.holding import pending_parts
from attribution.services.row_earnings import row_amounts_write
from datanets.selectors import version_contributor_row_counts
from ledger import services as ledger
from ledger.calc.money import format_credits
from ledger.calc.split import SplitPolicy
from modelfactory.models import FineTuneJob

logger = logging.getLogger(__name__)

SETTLEMENT_RULE = "settle-2"  # the rule new attributions record when the model answered without retrieval
RETRIEVAL_SETTLEMENT_RULE = "settle-3"  # ... and when it answered with retrieval (cited rows or none)
RULES = ("settle-1", "settle-2", "settle-3")
# Rule "settle-2"'s split: the default parts, and the unattributed part of the contributors' part to the owner.
SETTLE_2_POLICY = SplitPolicy(version="settle-2-2026-1", unattributed_to="owner")
# Rule "settle-3": the same parts; the retrieval part is a fraction of the contributors' part (module docstring).
SETTLE_3_POLICY = SplitPolicy(version="settle-3-2026-1", unattributed_to="owner")
RETRIEVAL_PART = Fraction(3, 10)


def citation_weights(retrieval: dict | None) -> dict[str, str]:
    """{str(user id): weight as a decimal string} of the cited rows' contributors (summing to 1), from an
    inference's stored `retrieval`; empty when nothing was cited (or the model answered without retrieval)."""
    citations = (retrieval or {}).get("citations") or []
    if not citations:
        return {}
    scores = [max(0.0, float(c.get("score") or 0.0)) for c in citations]
    total = sum(scores)
    weights: dict[int, float] = {}
    for citation, score in zip(citations, scores, strict=True):
        weight = score / total if total > 0 else 1 / len(citations)
        weights[int(citation["contributor_id"])] = weights.get(int(citation["contributor_id"]), 0.0) + weight
    return {str(uid): f"{w:.12f}" for uid, w in sorted(weights.items()) if w > 5e-13}


def retrieval_part(weights: dict) -> Fraction:
    """R: the retrieval part of the contributors' part under settle-3 (0 when nothing was cited)."""
    return RETRIEVAL_PART if weights else Fraction(0)


def training_row_shares(*, job) -> dict[int, float]:
    """{user id: share of the rows} over the job's datanet versions (the fallback basis)."""
    counts: dict[int, int] = {}
    for version_id in job.datanet_versions.order_by("pk").values_list("pk", flat=True):
        for user_id, n in version_contributor_row_counts(version_id=version_id).items():
            counts[user_id] = counts.get(user_id, 0) + n
    total = sum(counts.values())
    return {user_id: n / total for user_id, n in sorted(counts.items())} if total else {}


def settlement_shares(
    *,
    contributor_shares: dict,
    unattributed: float,
    row_shares: dict[int, float],
    rule: str = "settle-1",
    weights: dict | None = None,
) -> dict:
    """The shares sent to the ledger under `rule` (module docstring): {str(user id): decimal string}, zero shares
    left out. Rules "settle-2" and "settle-3" ignore row shares (and so the number of rows) altogether; settle-3
    mixes in the citation `weights` (citation_weights)."""
    merged: dict[int, float] = {int(k): float(v) for k, v in contributor_shares.items()}
    if rule == "settle-1":
        for user_id, share in row_shares.items():
            merged[user_id] = merged.get(user_id, 0.0) + unattributed * share
    elif rule == "settle-3":
        part = float(retrieval_part(weights or {}))
        merged = {uid: (1 - part) * share for uid, share in merged.items()}
        for user_id, weight in (weights or {}).items():
            merged[int(user_id)] = merged.get(int(user_id), 0.0) + part * float(weight)
    elif rule != "settle-2":
        raise ValueError(f"Unknown settlement rule {rule!r}.")
    return {str(uid): f"{share:.12f}" for uid, share in sorted(merged.items()) if share > 5e-13}


def settlement_terms(
    *, rule: str, unattributed: float, weights: dict | None = None
) -> tuple[SplitPolicy | None, str | None]:
    """(policy, unattributed share) handed to the ledger under `rule`: settle-1 the ledger's default policy and
    no unattributed part (the shares already hold it); settle-2 SETTLE_2_POLICY and the attribution's part;
    settle-3 SETTLE_3_POLICY and the attribution's part of what the retrieval part leaves."""
    if rule == "settle-2":
        return SETTLE_2_POLICY, f"{min(1.0, max(0.0, unattributed)):.12f}"
    if rule == "settle-3":
        left = 1 - float(retrieval_part(weights or {}))
        return SETTLE_3_POLICY, f"{left * min(1.0, max(0.0, unattributed)):.12f}"
    if rule == "settle-1":
        return None, None
    raise ValueError(f"Unknown settlement rule {rule!r}.")


def _datanet_labels(*, job) -> dict[str, str]:
    """{str(user id): the names of the job's datanets the user has rows in} (labels for the wallet's charts)."""
    labels: dict[str, list[str]] = {}
    for version in job.datanet_versions.select_related("datanet").order_by("pk"):
        for user_id in version_contributor_row_counts(version_id=version.pk):
            names = labels.setdefault(str(user_id), [])
            if version.datanet.name not in names:
                names.append(version.datanet.name)
    return {uid: ", ".join(names) for uid, names in sorted(labels.items())}


@dataclass(frozen=True)
class _ToSettle:
    """What settling one finished attribution needs (read in one query per batch, no model instances)."""

    pk: int
    inference_id: int
    status: str
    attempts: int
    error: str
    method_version: str
    settlement_rule: str
    settlement_shares: dict
    unattributed: float
    hold_key: str
    fee_micro: int
    model_slug: str
    owner_id: int
    job_id: int
    contribution_shares: dict
    finished_at: object
    citation_weights: dict


def _finish_settlements(finished: list[tuple[int, str, str, object]]) -> None:
    """Marks each (attribution id, settlement status, note, ledger transaction or None) in one database
    transaction, and writes the amount paid to each contributor of those settled (from the transaction's split)."""
    if not finished:
        return
    paid = {
        pk: (tx.metadata.get("settlement") or {}).get("split", {}).get("contributors", {})
        for pk, _, _, tx in finished
        if tx is not None
    }
    with transaction.atomic():
        shares = list(
            AttributionShare.objects.filter(attribution_id__in=paid).values_list(
                "pk", "attribution_id", "contributor_id"
            )
        )
        amounts = [(pk, int(paid[attribution_id].get(str(user_id), 0))) for pk, attribution_id, user_id in shares]
        if connection.vendor == "postgresql":  # one statement each (bulk_update's CASE is slow to build)
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE attribution_attribution a SET settlement_status = v.status, "
                    "settlement_note = v.note, settlement_tx_id = v.tx "
                    "FROM unnest(%s::integer[], %s::text[], %s::text[], %s::bigint[]) AS v(id, status, note, tx) "
                    "WHERE a.id = v.id",
                    [[f[0] for f in finished], [f[1] for f in finished], [f[2] for f in finished],
                     [f[3].pk if f[3] is not None else None for f in finished]],
                )  # fmt: skip
                if amounts:
                    cursor.execute(
                        "UPDATE attribution_attributionshare s SET amount_micro = v.amount "
                        "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, amount) WHERE s.id = v.id",
                        [[pk for pk, _ in amounts], [amount for _, amount in amounts]],
                    )
        else:
            for pk, status, note, tx in finished:
                Attribution.objects.filter(pk=pk).update(
                    settlement_status=status, settlement_note=note, settlement_tx=tx
                )
            for pk, amount in amounts:
                AttributionShare.objects.filter(pk=pk).update(amount_micro=amount)
        if paid:
            row_amounts_write(paid=paid)


def attribution_settle(*, attribution_id: int) -> Attribution:
    """Hands a finished attribution's shares to the ledger, keyed by the inference (replaying settles once).

    On PostgreSQL the same ledger call also takes up to MF_ATTRIBUTION_SETTLE_BATCH - 1 other finished answers
    whose settlement is waiting (ledger.settlement_post_many: one round trip and one commit for all of them, each
    its own ledger transaction and answered on its own), so that when settlements queue up they go in batches,
    and when they do not a batch is this answer alone. The others are claimed with a session advisory lock, so
    two workers do not take the same ones; a dead worker's claims end with its connection, and anything left
    unsettled is found again by its own task or the sweep. This answer itself is always settled here, claimed or
    not (the ledger key makes a second settlement of it a replay)."""
    attribution = Attribution.objects.get(pk=attribution_id)
    if not attribution.is_finished or attribution.settlement_status in (
        Attribution.Settlement.SETTLED,
        Attribution.Settlement.SKIPPED,
    ):
        return attribution  # not ready, or done already (often by another answer's batch): one query
    batch = _settlement_candidates([attribution_id])
    if batch:
        claimed = _claim_waiting(exclude=attribution_id)
        try:
            others = [pk for pk in claimed if pk != attribution_id]
            if others:
                try:
                    batch += _settlement_candidates(others)
                except Exception:  # the others' data must not stop this answer; their own tasks report it
                    logger.exception("attributions %s: could not prepare their settlements in a batch", others)
            _settle_batch(batch)
        finally:
            _release_claims(claimed)
    return Attribution.objects.get(pk=attribution_id)


def _settlement_candidates(ids: list[int]) -> list[_ToSettle]:
    """The attributions among `ids` (in id order) whose fee is still to be settled; answers with nothing to settle
    (no hold, a zero fee) are finished here as "skipped"."""
    rows = (
        Attribution.objects.filter(pk__in=ids, status__in=Attribution.FINISHED)
        .exclude(settlement_status__in=[Attribution.Settlement.SETTLED, Attribution.Settlement.SKIPPED])
        .order_by("pk")
        .values_list(
            "pk",
            "inference_id",
            "status",
            "attempts",
            "error",
            "method_version",
            "settlement_rule",
            "settlement_shares",
            "unattributed",
            "inference__hold_key",
            "inference__fee_micro",
            "inference__model__slug",
            "inference__model__owner_id",
            "inference__model_version__job_id",
            "contribution_shares",
            "finished_at",
            "citation_weights",
        )  # fmt: skip
    )
    result, skipped = [], []
    for row in rows:
        candidate = _ToSettle(*row)
        if not candidate.hold_key:
            skipped.append((candidate.pk, "No fee was reserved for this answer, so there is nothing to settle."))
        elif candidate.fee_micro == 0:
            with contextlib.suppress(ledger.HoldNotOpen):  # already released by the serving side
                ledger.hold_release(hold_key=candidate.hold_key, memo="Nothing owed for this answer")
            skipped.append((candidate.pk, "The fee was zero; the reserved credit went back to the caller."))
        else:
            result.append(candidate)
    _finish_settlements([(pk, Attribution.Settlement.SKIPPED, note, None) for pk, note in skipped])
    return result


def _settlement_request(candidate: _ToSettle, labels: dict[str, str], pending: dict | None = None):
    fallback = None
    if candidate.status == Attribution.Status.FALLBACK:
        where = (
            "goes to the model owner, as no row can be shown to have shaped the answer"
            if candidate.settlement_rule in ("settle-2", "settle-3")
            else "is split by row share of the training data"
        )
        fallback = (
            f"Attribution failed after {candidate.attempts} attempts ({candidate.error[:300]}); the "
            f"contributors' part {where}."
        )
    weights = candidate.citation_weights or {}
    policy, unattributed = settlement_terms(
        rule=candidate.settlement_rule, unattributed=candidate.unattributed, weights=weights
    )
    metadata = {
        "model": candidate.model_slug,
        "datanets": labels,
        "inference_id": candidate.inference_id,
        "attribution": {
            "id": candidate.pk,
            "status": candidate.status,
            "method_version": candidate.method_version,
            "settlement_rule": candidate.settlement_rule,
            "unattributed": candidate.unattributed,
        },
    }
    if candidate.settlement_rule == "settle-3":
        # The retrieval part (a fraction of the contributors' part) and who shares it, for the page and receipt.
        metadata["retrieval"] = {"part": str(retrieval_part(weights)), "weights": weights}
    return ledger.SettlementRequest(
        key=f"settle:inference:{candidate.inference_id}",
        hold_key=candidate.hold_key,
        fee_micro=candidate.fee_micro,
        owner_user_id=candidate.owner_id,
        contributor_shares={int(uid): share for uid, share in candidate.settlement_shares.items()},
        policy=policy,
        unattributed=unattributed,
        fallback_reason=fallback,
        metadata=metadata,
        memo=f"Answer {candidate.inference_id} of {candidate.model_slug}",
        pending=pending or None,
    )


def _settle_batch(candidates: list[_ToSettle]) -> None:
    """One ledger call for the batch, then every attribution marked settled or refused (one database
    transaction)."""
    labels: dict[int, dict[str, str]] = {}
    for candidate in candidates:
        if candidate.job_id not in labels:
            labels[candidate.job_id] = _datanet_labels(job=FineTuneJob(pk=candidate.job_id))
    pending, confirmed = pending_parts(candidates)
    outcomes = ledger.settlement_post_many(
        requests=[_settlement_request(c, labels[c.job_id], pending.get(c.pk)) for c in candidates]
    )
    finished = []
    for candidate, outcome in zip(candidates, outcomes, strict=True):
        if isinstance(outcome, ledger.LedgerError):
            logger.error("settlement of inference %s refused: %s", candidate.inference_id, outcome)
            finished.append(
                (candidate.pk, Attribution.Settlement.FAILED, f"The ledger refused the settlement: {outcome}", None)
            )
        else:
            note = f"{format_credits(candidate.fee_micro)} credits settled."
            finished.append((candidate.pk, Attribution.Settlement.SETTLED, note, outcome))
    _finish_settlements(finished)
    for contribution_id, reason in sorted(confirmed.items()):  # earned after a curator confirmed it harmful
        ledger.earnings_forfeit_contribution(contribution_id=contribution_id, reason=reason)


# Session advisory locks on (this number, attribution id) claim answers taken along in another answer's batch.
_CLAIM_LOCK_SPACE = 0x5E771E
CLAIM_CANDIDATES = 4


def _claim_waiting(*, exclude: int) -> list[int]:
    """This answer and up to MF_ATTRIBUTION_SETTLE_BATCH - 1 finished answers waiting for settlement, oldest first,
    that no other worker has claimed, now claimed by this connection (PostgreSQL; elsewhere none). The own answer is
    claimed too, so that other workers leave it to us; if another worker has it, we claim nothing."""
    limit = settings.MF_ATTRIBUTION_SETTLE_BATCH - 1
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_CLAIM_LOCK_SPACE, exclude])
        if not cursor.fetchone()[0]:
            return []  # another worker's batch has this answer: we settle it anyway (a replay), and take no others
        if limit <= 0:
            return [exclude]
        pending = Q(status__in=Attribution.FINISHED, settlement_status=Attribution.Settlement.PENDING)
        # More candidates than places: concurrent workers look at the same oldest answers and skip each other's.
        waiting = list(
            Attribution.objects.filter(pending)
            .exclude(pk=exclude)
            .order_by("pk")
            .values_list("pk", flat=True)[: limit * CLAIM_CANDIDATES]
        )
        claimed: list[int] = []
        if waiting:
            cursor.execute(
                "SELECT id FROM unnest(%s::integer[]) AS id WHERE pg_try_advisory_lock(%s, id)",
                [waiting, _CLAIM_LOCK_SPACE],
            )
            claimed = sorted(row[0] for row in cursor.fetchall())
            _release_claims(claimed[limit:])
    return [exclude, *claimed[:limit]]


def _release_claims(claimed: list[int]) -> None:
    if not claimed:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_unlock(%s, id) FROM unnest(%s::integer[]) AS id", [_CLAIM_LOCK_SPACE, claimed]
        )
