"""Holds: a fee reserved in a fees-clearing shard while attribution runs, then released (or settled, see
`settlement`)."""

from __future__ import annotations

from collections.abc import Mapping

from ledger.models import Account, Hold, Transaction
from ledger.services.engine import _commit, _legs, _lock_accounts, _Plan, _positive_amount, _shard, request_fingerprint
from ledger.services.errors import HoldNotOpen


def hold_create(
    *, key: str, payer_user_id: int, amount_micro: int, memo: str = "", metadata: Mapping | None = None
) -> Hold:
    """Reserves credit: moves `amount_micro` from the payer's wallet to a fees-clearing shard, so the same credit
    cannot be spent twice while attribution runs. Replaying the key returns the same hold.

    Raises InsufficientFunds (recorded: this key stays failed), IdempotencyConflict, InvalidRequest."""
    amount = _positive_amount(amount_micro)
    metadata = dict(metadata or {})
    clearing = (Account.Role.FEES_CLEARING, _shard(key))
    request_hash = request_fingerprint("hold", payer=payer_user_id, amount=amount, memo=memo, metadata=metadata)

    def build() -> _Plan:
        locked, by_user, by_role = _lock_accounts(users=[payer_user_id], system=[clearing])
        payer, clearing_id = by_user[payer_user_id], by_role[clearing]

        def after(tx: Transaction) -> None:
            Hold.objects.create(key=key, payer_id=payer, clearing_id=clearing_id, amount=amount, hold_tx_id=tx.pk)

        return _Plan(
            kind=Transaction.Kind.HOLD,
            legs=_legs([(payer, -amount), (clearing_id, amount)]),
            locked=locked,
            memo=memo or "Fee reserved",
            metadata={**metadata, "hold_key": key},
            after=after,
        )

    _commit(key=f"hold:{key}", request_hash=request_hash, build=build)
    return Hold.objects.get(key=key)


def hold_release(*, hold_key: str, memo: str = "") -> Transaction:
    """Gives a held fee back to the payer in full (the inference failed, or nothing is owed)."""
    request_hash = request_fingerprint("hold_release", hold_key=hold_key)

    def build() -> _Plan:
        hold = _open_hold(hold_key)
        locked, _, _ = _lock_accounts(ids=[hold.payer_id, hold.clearing_id])

        def after(tx: Transaction) -> None:
            Hold.objects.filter(pk=hold.pk).update(status=Hold.Status.RELEASED, close_tx=tx, closed_at=tx.created_at)

        return _Plan(
            kind=Transaction.Kind.HOLD_RELEASE,
            legs=_legs([(hold.clearing_id, -hold.amount), (hold.payer_id, hold.amount)]),
            locked=locked,
            memo=memo or "Fee reservation released",
            metadata={"hold_key": hold_key},
            after=after,
        )

    return _commit(key=f"hold-close:{hold_key}", request_hash=request_hash, build=build)


def _open_hold(hold_key: str) -> Hold:
    hold = Hold.objects.select_for_update().filter(key=hold_key).first()
    if hold is None:
        raise HoldNotOpen(f"There is no hold with key {hold_key!r}.")
    if hold.status != Hold.Status.HELD:
        raise HoldNotOpen(f"The hold {hold_key!r} is already {hold.status}.")
    return hold
