"""What each line of a person's statement is, in words: a settlement moves money to several people at once, and
the same person may appear in it more than once (a caller who owns the model gets back the unused part of the fee
reserved for the answer and the owner's share; an owner may also be a contributor). Plain data in, labels out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

OWNER_SHARE = "owner_share"
CONTRIBUTOR_SHARE = "contributor_share"
REFUND = "refund"
FEE_PAID = "fee_paid"
EARNINGS = (OWNER_SHARE, CONTRIBUTOR_SHARE)

LABELS = {
    OWNER_SHARE: "Your share as the model's owner",
    CONTRIBUTOR_SHARE: "Your share as a data contributor",
    REFUND: "Refund: the unused part of a reserved fee",
    FEE_PAID: "Fee paid for an answer",
    # Other kinds of transaction, where the ledger's own name is not what a person would say.
    "hold": "Fee reserved for an answer",
    "hold_release": "Refund: a reserved fee released in full",
    "earning_release": "Your earnings as a data contributor, now available after their review period",
    "earning_forfeit": "Earnings forfeited",
    "bond_post": "Bond held for an upload",
    "bond_return": "Bond returned",
    "bond_slash": "Bond forfeited",
}


def settlement_roles(metadata: Mapping, user_id: int, amounts: Sequence[int]) -> list[str]:
    """The role of each of one user's postings in one settlement transaction, in the order given.

    The transaction's metadata records the split ("settlement": {"owner_user_id", "payer_user_id", "split":
    {"owner", "contributors": {user id: amount}}}): a credit equal to the user's owner part is the owner's share, one
    equal to their contributor part the contributor's share (each used once); any other credit to the payer is the
    refund of the unused reservation, and a debit is the fee paid."""
    record = metadata.get("settlement") or {}
    split = record.get("split") or {}
    expected: list[tuple[int, str]] = []
    if record.get("owner_user_id") == user_id and split.get("owner"):
        expected.append((int(split["owner"]), OWNER_SHARE))
    contributed = int((split.get("contributors") or {}).get(str(user_id)) or 0)
    # The parts held for a review period went to the earnings-pending shard, not to the wallet.
    contributed -= sum(int(p["amount"]) for p in record.get("pending") or () if p.get("user_id") == user_id)
    if contributed > 0:
        expected.append((contributed, CONTRIBUTOR_SHARE))
    roles = []
    for amount in amounts:
        if amount < 0:
            roles.append(FEE_PAID)
            continue
        match = next((entry for entry in expected if entry[0] == amount), None)
        if match is not None:
            expected.remove(match)
            roles.append(match[1])
        else:
            roles.append(REFUND)
    return roles
