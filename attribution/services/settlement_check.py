"""Checks a settled answer against the rule it recorded (`settlement_rule`), so that settlements made under an
older rule stay verifiable under that rule: the shares recomputed from the stored attribution, the ledger
transaction's record (shares, policy, unattributed part), its split recomputed exactly, and its postings."""

from __future__ import annotations

from fractions import Fraction

from attribution.models import Attribution
from attribution.services.settlement import settlement_shares, settlement_terms, training_row_shares
from ledger.calc.split import SplitError, SplitPolicy, split_fee, to_fraction
from ledger.models import PendingEarning, Posting


def attribution_settlement_check(*, attribution: Attribution) -> list[str]:
    """The problems found with a settled attribution (empty: it checks out under its recorded rule). Read-only."""
    rule = attribution.settlement_rule
    if attribution.settlement_status != Attribution.Settlement.SETTLED or attribution.settlement_tx_id is None:
        return ["This answer is not settled."]
    try:
        expected, (policy, unattributed) = (
            _expected(attribution),
            settlement_terms(rule=rule, unattributed=attribution.unattributed, weights=attribution.citation_weights),
        )
    except ValueError as exc:
        return [str(exc)]
    problems = []
    if expected != attribution.settlement_shares:
        problems.append(f"The stored shares are not what rule {rule} gives.")
    record = (attribution.settlement_tx.metadata or {}).get("settlement") or {}
    if record.get("shares") != attribution.settlement_shares:
        problems.append("The ledger was given other shares than the stored ones.")
    if record.get("unattributed") != unattributed:
        problems.append(f"The ledger's unattributed part is not rule {rule}'s.")
    if policy is not None and record.get("policy") != policy.as_dict():
        problems.append(f"The ledger's split policy is not rule {rule}'s.")
    skip = {attribution.inference.model.owner_id, attribution.inference.caller_id}
    problems += _split_problems(record, tx_id=attribution.settlement_tx_id, skip=skip)
    return problems


def _expected(attribution: Attribution) -> dict:
    done = attribution.status == Attribution.Status.DONE
    rule = attribution.settlement_rule
    row_shares = training_row_shares(job=attribution.inference.model_version.job) if rule == "settle-1" else {}
    return settlement_shares(
        contributor_shares=attribution.contributor_shares if done else {},
        unattributed=attribution.unattributed if done else 1.0,
        row_shares=row_shares,
        rule=rule,
        weights=attribution.citation_weights,
    )


def _split_problems(record: dict, *, tx_id: int, skip: set[int]) -> list[str]:
    """The recorded split recomputed from the recorded fee, policy, shares and unattributed part, and the
    postings to the owner and the contributors compared with it."""
    try:
        policy = SplitPolicy(**record["policy"])
        shares = {int(uid): to_fraction(share) for uid, share in record["shares"].items()}
        unattributed = record.get("unattributed")
        split = split_fee(record["fee_micro"], policy, shares, None if unattributed is None else Fraction(unattributed))
    except (KeyError, TypeError, SplitError) as exc:
        return [f"The ledger's settlement record cannot be recomputed: {exc}"]
    problems = []
    recorded = record.get("split", {})
    if recorded.get("owner") != split.owner_total or recorded.get("contributors") != {
        str(uid): amount for uid, amount in split.contributors.items()
    }:
        problems.append("The ledger's split is not what its own record gives.")
    paid: dict[int, int] = {}
    for user_id, amount in Posting.objects.filter(transaction_id=tx_id, account__owner__isnull=False).values_list(
        "account__owner_id", "amount"
    ):
        paid[user_id] = paid.get(user_id, 0) + amount
    for user_id, amount in PendingEarning.objects.filter(pend_tx_id=tx_id).values_list("user_id", "amount"):
        paid[user_id] = paid.get(user_id, 0) + amount  # paid into the earnings-pending shard for them
    # The owner and the caller also get the owner's part or the hold's rest: compare the contributors only.
    if {uid: paid.get(uid, 0) for uid in split.contributors if uid not in skip} != {
        uid: amount for uid, amount in split.contributors.items() if uid not in skip
    } or any(uid not in split.contributors for uid in paid if uid not in skip):
        problems.append("The ledger's postings do not pay the contributors their split.")
    return problems


def rule_payouts(*, attributions, rule: str) -> dict[int, int]:
    """{user id: micro-units} the contributors would be paid for these finished, fee-bearing answers under `rule`
    (any rule, not only the one each recorded): to compare rules on the same answers. Writes nothing."""
    paid: dict[int, int] = {}
    for attribution in attributions:
        fee = attribution.inference.fee_micro
        done = attribution.status == Attribution.Status.DONE
        row_shares = training_row_shares(job=attribution.inference.model_version.job) if rule == "settle-1" else {}
        shares = settlement_shares(
            contributor_shares=attribution.contributor_shares if done else {},
            unattributed=attribution.unattributed if done else 1.0,
            row_shares=row_shares,
            rule=rule,
            weights=attribution.citation_weights,
        )
        policy, unattributed = settlement_terms(
            rule=rule, unattributed=attribution.unattributed if done else 1.0, weights=attribution.citation_weights
        )
        split = split_fee(
            fee,
            policy or SplitPolicy(),
            {int(uid): to_fraction(share) for uid, share in shares.items()},
            None if unattributed is None else to_fraction(unattributed),
        )
        for uid, amount in split.contributors.items():
            paid[uid] = paid.get(uid, 0) + amount
    return paid
