"""Wallets and plain transfers: n legs that sum to zero, posted as one transaction by the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ledger.models import Account, Transaction
from ledger.services.engine import _commit, _legs, _lock_accounts, _Plan, request_fingerprint
from ledger.services.errors import InvalidRequest


def account_for_user(*, user_id: int) -> Account:
    """The user's wallet, created on first use."""
    account, _ = Account.objects.get_or_create(owner_id=user_id, currency="CRD", defaults={"role": Account.Role.USER})
    return account


def transfer(
    *,
    key: str,
    legs: Sequence[tuple[int, int]],
    kind: str = Transaction.Kind.TRANSFER,
    memo: str = "",
    metadata: Mapping | None = None,
) -> Transaction:
    """Posts n legs (account id, signed micro-units) that sum to zero, as one transaction.

    Raises InsufficientFunds (recorded; the key stays failed), IdempotencyConflict, InvalidRequest."""
    if kind not in Transaction.Kind.values:
        raise InvalidRequest(f"Unknown transaction kind {kind!r}.")
    legs = [(int(a), m) for a, m in legs]
    merged = _legs(legs)
    if len({account for account, _ in merged}) < 2:
        raise InvalidRequest("A transfer moves credit between at least two different accounts.")
    metadata = dict(metadata or {})
    request_hash = request_fingerprint("transfer", kind=kind, legs=sorted(legs), memo=memo, metadata=metadata)

    def build() -> _Plan:
        locked, _, _ = _lock_accounts(ids=[account for account, _ in merged])
        return _Plan(kind=kind, legs=merged, locked=locked, memo=memo, metadata=metadata)

    return _commit(key=key, request_hash=request_hash, build=build)
