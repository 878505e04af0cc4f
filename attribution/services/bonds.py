"""Bonds on uploads (datanets.hooks): a datanet that sets a bond (Datanet.bond_micro) has it held from the
contributor's wallet when the file is stored (a ledger bond; a wallet that cannot cover it refuses the upload and
nothing is kept), returned when the contribution is accepted, rejected as not a fit for the datanet, or could not be
read (failed: a retry posts a new one), and slashed to the datanet's pool when a curator rejects it as spam or confirms
it harmful (penalties; a rejection recorded before grounds existed counts as spam, the rule it was made under). Each
step is a ledger transaction with its own key; `bonds_settle_decided` is also a recovery sweep for a step a crash left
undone."""

from __future__ import annotations

from django.db.models import Sum

from datanets.models import Contribution
from datanets.services import DatanetError
from ledger import services as ledger
from ledger.calc.money import format_credits_short
from ledger.models import Bond


def bond_on_upload(*, contribution: Contribution) -> None:
    """Holds the datanet's bond for this upload (inside the upload's database transaction)."""
    amount = contribution.datanet.bond_micro
    if not amount:
        return
    attempt = Bond.objects.filter(contribution_id=contribution.pk).count()
    try:
        ledger.bond_post(
            key=f"contribution:{contribution.pk}:{attempt}",
            user_id=contribution.contributor_id,
            amount_micro=amount,
            datanet_id=contribution.datanet_id,
            contribution_id=contribution.pk,
        )
    except ledger.InsufficientFunds as exc:
        raise DatanetError(
            f"This datanet asks a bond of {format_credits_short(amount)} credits per upload, and your wallet has "
            f"{format_credits_short(exc.balance)} credits available. Add credit, then upload again.",
            code="bond_unpaid",
        ) from None


def bond_on_decided(*, contribution_id: int) -> None:
    """Returns or slashes the contribution's held bonds by its status (nothing while it waits for review)."""
    contribution = Contribution.objects.filter(pk=contribution_id).values("status", "message", "rejected_as").first()
    if contribution is None:
        return
    status = contribution["status"]
    for key in Bond.objects.filter(contribution_id=contribution_id, status=Bond.Status.HELD).values_list(
        "key", flat=True
    ):
        try:
            rejected = status == Contribution.Status.REJECTED
            if rejected and contribution["rejected_as"] in Contribution.BOND_FORFEITED_WHEN:
                how = "rejected as spam" if contribution["rejected_as"] == Contribution.RejectedAs.SPAM else "rejected"
                reason = contribution["message"] or "rejected by a curator"
                ledger.bond_slash(bond_key=key, reason=f"contribution #{contribution_id} {how}: {reason}")
            elif rejected or status in (Contribution.Status.ACCEPTED, Contribution.Status.FAILED):
                ledger.bond_return(bond_key=key)
        except ledger.BondNotHeld:
            continue


def bonds_held(*, contribution_ids) -> dict[int, int]:
    """{contribution id: micro-units of its bonds still held} (datanets.hooks: the review pages)."""
    rows = (
        Bond.objects.filter(contribution_id__in=list(contribution_ids), status=Bond.Status.HELD)
        .values("contribution_id")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    return {row["contribution_id"]: row["total"] for row in rows}


def bonds_settle_decided() -> list[int]:
    """Recovery sweep: held bonds of contributions already accepted, rejected or failed, closed now."""
    decided = (Contribution.Status.ACCEPTED, Contribution.Status.REJECTED, Contribution.Status.FAILED)
    ids = sorted(
        set(
            Bond.objects.filter(status=Bond.Status.HELD, contribution_id__isnull=False).values_list(
                "contribution_id", flat=True
            )
        )
    )
    done = list(Contribution.objects.filter(pk__in=ids, status__in=decided).values_list("pk", flat=True))
    for contribution_id in done:
        bond_on_decided(contribution_id=contribution_id)
    return done
