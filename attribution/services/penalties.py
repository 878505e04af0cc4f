"""Penalties: a curator's decision on a contribution that data valuation flagged harmful (or that the curator found
harmful on their own), and what a confirmed finding does.

Confirmed: the contribution is rejected (its rows leave the next version), its still-pending earnings are forfeited
to the datanet pool and its bond (if any) is slashed, each by new ledger transactions with their own idempotency keys
(never an edit; earnings already released stay with the contributor), and the finding counts against the
contributor's reputation. Deciding again repeats nothing: each step is skipped or replayed, so a decision cut off
half-way is finished by deciding it again.

Dismissed: the flag was wrong. Earnings held only because of the flag become available once their datanet's own
holding period has passed (released by the next sweep).
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from attribution.models import ContributionFinding, ContributionValue
from datanets import services as datanets
from datanets.models import Contribution
from datanets.selectors import datanet_can_curate
from ledger import services as ledger
from ledger.models import Bond, PendingEarning

# Valuation's flag counts as evidence when it is this strong (share of random row sets that did as badly or worse).
HARMFUL_P = 0.05


class FindingError(Exception):
    """A refused decision, with a plain message; nothing was written. `code` is stable for the API."""

    def __init__(self, message: str, *, code: str = "invalid", status: int = 400):
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


def contribution_decide(*, contribution: Contribution, curator, verdict: str, reason: str) -> ContributionFinding:
    """Records a curator's verdict on a contribution ("confirmed" harmful or "dismissed") and applies it (module
    docstring). Raises FindingError: not a curator, no reason, an unknown verdict, or a different verdict already
    recorded."""
    if not datanet_can_curate(user=curator, datanet=contribution.datanet):
        raise FindingError(
            "Only the datanet's owner and curators can decide on a contribution.", code="not_allowed", status=403
        )
    if verdict not in ContributionFinding.Verdict.values:
        raise FindingError("The verdict is either confirmed or dismissed.", code="invalid_verdict")
    reason = (reason or "").strip()[:500]
    if not reason:
        raise FindingError("Say why; the contributor reads it in their statement.", code="reason_required")
    value = (
        ContributionValue.objects.filter(contribution=contribution, harmful=True, p__lte=HARMFUL_P)
        .order_by("p", "-id")
        .first()
    )
    try:
        with transaction.atomic():
            finding, _ = ContributionFinding.objects.get_or_create(
                contribution=contribution,
                defaults={
                    "datanet_id": contribution.datanet_id,
                    "contributor_id": contribution.contributor_id,
                    "curator": curator,
                    "value": value,
                    "verdict": verdict,
                    "reason": reason,
                },
            )
    except IntegrityError:  # the same decision raced in from another request
        finding = ContributionFinding.objects.get(contribution=contribution)
    if finding.verdict != verdict:
        raise FindingError(
            f"This contribution was already decided on: {finding.get_verdict_display().lower()} ({finding.reason}).",
            code="already_decided",
            status=409,
        )
    if verdict == ContributionFinding.Verdict.CONFIRMED:
        _apply_confirmed(contribution, curator=curator, reason=finding.reason)
    else:
        _apply_dismissed(contribution)
    return finding


def _apply_confirmed(contribution: Contribution, *, curator, reason: str) -> None:
    contribution.refresh_from_db()
    if contribution.status in (Contribution.Status.NEEDS_REVIEW, Contribution.Status.ACCEPTED):
        datanets.contribution_reject(
            contribution=contribution,
            curator=curator,
            reason=f"Confirmed harmful by a curator: {reason}",
            grounds=Contribution.RejectedAs.HARMFUL,
            from_finding=True,
        )
    words = f"contribution #{contribution.pk} confirmed harmful: {reason}"
    ledger.earnings_forfeit_contribution(contribution_id=contribution.pk, reason=words)
    for key in Bond.objects.filter(contribution_id=contribution.pk, status=Bond.Status.HELD).values_list(
        "key", flat=True
    ):
        try:
            ledger.bond_slash(bond_key=key, reason=words)
        except ledger.BondNotHeld:  # returned or slashed meanwhile
            continue


def _apply_dismissed(contribution: Contribution) -> None:
    """Releases the contribution's earnings whose datanet holding period has passed (held only for the flag)."""
    holding = timedelta(days=contribution.datanet.holding_days)
    now = timezone.now()
    for key, settled_at in PendingEarning.objects.filter(
        contribution_id=contribution.pk, status=PendingEarning.Status.PENDING
    ).values_list("key", "pend_tx__created_at"):
        if settled_at + holding <= now:
            try:
                ledger.earning_release(earning_key=key)
            except ledger.EarningNotPending:
                continue
