"""Which parts of an answer's settlement arrive as pending earnings, and until when.

A contributor's part of an answer comes from their contributions (the engine's contribution shares). The part from a
contribution is held (paid into the ledger's earnings-pending shard, see ledger.services.earnings) until

- the answer's finishing time + its datanet's holding period (Datanet.holding_days), when the datanet sets one;
- at least the answer's finishing time + settings.MF_FLAGGED_HOLD_DAYS when data valuation flagged the contribution
  harmful and no curator has dismissed the flag yet, or when its contributor already has a contribution confirmed
  harmful in that datanet (low reputation): their earnings wait for a curator rather than reaching the wallet.

A contribution already confirmed harmful is still held (its rows may be in models trained before the finding), and
the settlement forfeits it right after (returned in `confirmed`). The finishing time, not the clock, is the base,
so settling the same answer again lays it out the same way. Only rule "settle-2" answers whose attribution is done
name contributions; older rules and fallbacks are paid as before.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from attribution.models import ContributionFinding, ContributionValue
from datanets.models import Contribution
from ledger import services as ledger


def pending_parts(candidates) -> tuple[dict[int, dict[int, list]], dict[int, str]]:
    """({attribution id: {user id: [PendingPart]}}, {confirmed contribution id: reason}) for a settlement batch,
    in four queries whatever its size. Answers none of whose contributions are held are left out (they take the
    ledger's fast path)."""
    wanted = [c for c in candidates if c.settlement_rule == "settle-2" and c.status == "done" and c.contribution_shares]
    ids = {int(cid) for c in wanted for cid in c.contribution_shares}
    if not ids:
        return {}, {}
    sources = {
        pk: (user_id, datanet_id, days)
        for pk, user_id, datanet_id, days in Contribution.objects.filter(pk__in=ids).values_list(
            "pk", "contributor_id", "datanet_id", "datanet__holding_days"
        )
    }
    findings = list(
        ContributionFinding.objects.filter(datanet_id__in={d for _, d, _ in sources.values()}).values_list(
            "contribution_id", "contributor_id", "datanet_id", "verdict", "reason"
        )
    )
    dismissed = {cid for cid, _, _, verdict, _ in findings if verdict == ContributionFinding.Verdict.DISMISSED}
    confirmed_all = {cid: r for cid, _, _, verdict, r in findings if verdict == ContributionFinding.Verdict.CONFIRMED}
    low_reputation = {
        (user_id, datanet_id)
        for cid, user_id, datanet_id, verdict, _ in findings
        if verdict == ContributionFinding.Verdict.CONFIRMED
    }
    flagged = (
        set(
            ContributionValue.objects.filter(contribution_id__in=ids, harmful=True).values_list(
                "contribution_id", flat=True
            )
        )
        - dismissed
    )
    flag_hold = timedelta(days=settings.MF_FLAGGED_HOLD_DAYS)
    layout: dict[int, dict[int, list]] = {}
    confirmed: dict[int, str] = {}
    for candidate in wanted:
        base = candidate.finished_at or timezone.now()
        by_user: dict[int, list] = {}
        any_held = False
        for cid, share in sorted(candidate.contribution_shares.items(), key=lambda item: int(item[0])):
            cid = int(cid)
            if cid not in sources or float(share) <= 0:
                continue
            user_id, datanet_id, days = sources[cid]
            hold = timedelta(days=days)
            if cid in flagged or cid in confirmed_all or (user_id, datanet_id) in low_reputation:
                hold = max(hold, flag_hold)
            if cid in confirmed_all:
                confirmed[cid] = f"contribution #{cid} confirmed harmful: {confirmed_all[cid]}"
            available_at = base + hold if hold else None
            any_held = any_held or available_at is not None
            by_user.setdefault(user_id, []).append(
                ledger.PendingPart(contribution_id=cid, datanet_id=datanet_id, weight=f"{float(share):.12f}",
                                   available_at=available_at)
            )  # fmt: skip
        if any_held:
            layout[candidate.pk] = by_user
    return layout, confirmed
