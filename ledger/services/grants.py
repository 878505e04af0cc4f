"""Credit issued from the issuance account: staff grants and the sign-up (welcome) credit."""

from __future__ import annotations

import uuid

from django.conf import settings

from ledger.models import Account, Transaction
from ledger.services.engine import _commit, _legs, _lock_accounts, _Plan, _positive_amount, _shard, request_fingerprint
from ledger.services.errors import InvalidRequest


def _issue(*, key: str, kind: str, user_id: int, amount_micro: int, memo: str, metadata: dict) -> Transaction:
    amount = _positive_amount(amount_micro)
    issuance = (Account.Role.ISSUANCE, _shard(key))
    request_hash = request_fingerprint(kind, user_id=user_id, amount=amount, memo=memo, metadata=metadata)

    def build() -> _Plan:
        locked, by_user, by_role = _lock_accounts(users=[user_id], system=[issuance])
        legs = _legs([(by_role[issuance], -amount), (by_user[user_id], amount)])
        return _Plan(kind=kind, legs=legs, locked=locked, memo=memo, metadata=metadata)

    return _commit(key=key, request_hash=request_hash, build=build)


def credit_grant(*, user_id: int, amount_micro: int, granted_by, memo: str = "", key: str | None = None) -> Transaction:
    """Staff give credit (issued from the issuance account, which is the only one allowed below zero)."""
    if not getattr(granted_by, "is_staff", False):
        raise InvalidRequest("Only staff can grant credit.")
    key = key or f"grant:{uuid.uuid4()}"
    return _issue(
        key=key,
        kind=Transaction.Kind.GRANT,
        user_id=user_id,
        amount_micro=amount_micro,
        memo=memo or "Credit granted by staff",
        metadata={"granted_by": granted_by.pk},
    )


def grant_signup_credit(*, user) -> Transaction | None:
    """The welcome credit (settings.MF_SIGNUP_GRANT_MICRO; 0 turns it off). Keyed by user, so at most once."""
    amount = settings.MF_SIGNUP_GRANT_MICRO
    if amount <= 0:
        return None
    return _issue(
        key=f"signup-grant:{user.pk}",
        kind=Transaction.Kind.SIGNUP_GRANT,
        user_id=user.pk,
        amount_micro=amount,
        memo="Welcome credit to try the models",
        metadata={},
    )
