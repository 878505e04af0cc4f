"""Withdrawals in two phases: the user asks (wallet -> withdrawals pending), then staff complete (-> paid out) or
cancel (-> back to the wallet)."""

from __future__ import annotations

import uuid

from django.conf import settings

from ledger.calc.money import format_credits
from ledger.models import Account, Transaction, Withdrawal
from ledger.services.engine import _commit, _legs, _lock_accounts, _Plan, _positive_amount, request_fingerprint
from ledger.services.errors import InvalidRequest, WithdrawalNotOpen


def withdrawal_request(*, user, amount_micro: int, key: str | None = None) -> Withdrawal:
    """Phase one: moves the amount from the user's wallet to withdrawals pending. Never more than the balance:
    the wallet row is locked while the balance is checked (and on PostgreSQL a CHECK constraint backs it)."""
    amount = _positive_amount(amount_micro)
    minimum = settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO
    if amount < minimum:
        raise InvalidRequest(f"The smallest withdrawal is {format_credits(minimum)} credits.")
    key = f"withdrawal:{user.pk}:{key or uuid.uuid4()}"
    pending = (Account.Role.WITHDRAWALS_PENDING, 0)
    request_hash = request_fingerprint("withdrawal", user=user.pk, amount=amount)

    def build() -> _Plan:
        locked, by_user, by_role = _lock_accounts(users=[user.pk], system=[pending])
        wallet = by_user[user.pk]

        def after(tx: Transaction) -> None:
            Withdrawal.objects.create(user=user, account_id=wallet, amount=amount, request_tx=tx)

        return _Plan(
            kind=Transaction.Kind.WITHDRAWAL_REQUEST,
            legs=_legs([(wallet, -amount), (by_role[pending], amount)]),
            locked=locked,
            memo="Withdrawal requested",
            after=after,
        )

    tx = _commit(key=key, request_hash=request_hash, build=build)
    return Withdrawal.objects.get(request_tx=tx)


def _withdrawal_close(*, withdrawal_id: int, staff_user, complete: bool, reason: str) -> Withdrawal:
    if not getattr(staff_user, "is_staff", False):
        raise InvalidRequest("Only staff can complete or cancel withdrawals.")
    action = "complete" if complete else "cancel"
    request_hash = request_fingerprint(f"withdrawal_{action}", withdrawal=withdrawal_id)

    def build() -> _Plan:
        withdrawal = Withdrawal.objects.select_for_update().filter(pk=withdrawal_id).first()
        if withdrawal is None:
            raise WithdrawalNotOpen(f"There is no withdrawal {withdrawal_id}.")
        if withdrawal.status != Withdrawal.Status.REQUESTED:
            raise WithdrawalNotOpen(f"Withdrawal {withdrawal_id} is already {withdrawal.status}.")
        pending = (Account.Role.WITHDRAWALS_PENDING, 0)
        paid_out = (Account.Role.PAID_OUT, 0)
        locked, _, by_role = _lock_accounts(ids=[withdrawal.account_id], system=[pending, paid_out])
        target = by_role[paid_out] if complete else withdrawal.account_id
        status = Withdrawal.Status.COMPLETED if complete else Withdrawal.Status.CANCELLED

        def after(tx: Transaction) -> None:
            Withdrawal.objects.filter(pk=withdrawal.pk).update(
                status=status, close_tx=tx, closed_at=tx.created_at, decided_by=staff_user, reason=reason[:500]
            )

        return _Plan(
            kind=Transaction.Kind.WITHDRAWAL_COMPLETE if complete else Transaction.Kind.WITHDRAWAL_CANCEL,
            legs=_legs([(by_role[pending], -withdrawal.amount), (target, withdrawal.amount)]),
            locked=locked,
            memo=reason or ("Withdrawal paid out" if complete else "Withdrawal cancelled"),
            metadata={"withdrawal_id": withdrawal.pk, "decided_by": staff_user.pk},
            after=after,
        )

    _commit(key=f"withdrawal-{action}:{withdrawal_id}", request_hash=request_hash, build=build)
    return Withdrawal.objects.get(pk=withdrawal_id)


def withdrawal_complete(*, withdrawal_id: int, staff_user, reason: str = "") -> Withdrawal:
    """Phase two: the payout was made; the credit leaves withdrawals pending for the paid-out account."""
    return _withdrawal_close(withdrawal_id=withdrawal_id, staff_user=staff_user, complete=True, reason=reason)


def withdrawal_cancel(*, withdrawal_id: int, staff_user, reason: str = "") -> Withdrawal:
    """Phase two, the other way: the credit goes back to the user's wallet."""
    return _withdrawal_close(withdrawal_id=withdrawal_id, staff_user=staff_user, complete=False, reason=reason)
