"""Credit issued from the issuance account: staff grants and the sign-up (welcome) credit."""

from __future__ import annotations

import uuid

from django.conf import settings

from ledger.calc.money import MICRO, format_credits
from ledger.models import Account, Transaction
from ledger.services.engine import _commit, _legs, _lock_accounts, _Plan, _positive_amount, _shard, request_fingerprint
from ledger.services.errors import InvalidRequest, NotAllowed


def _issue(*, key: str, kind: str, user_id: int, amount_micro: int, memo: str, metadata: dict) -> Transaction:
    amount = _positive_amount(amount_micro)
    issuance = (Account.Role.ISSUANCE, _shard(key))
    request_hash = request_fingerprint(kind, user_id=user_id, amount=amount, memo=memo, metadata=metadata)

    def build() -> _Plan:
        locked, by_user, by_role = _lock_accounts(users=[user_id], system=[issuance])
        legs = _legs([(by_role[issuance], -amount), (by_user[user_id], amount)])
        return _Plan(kind=kind, legs=legs, locked=locked, memo=memo, metadata=metadata)

    return _commit(key=key, request_hash=request_hash, build=build)


GRANT_PERMISSION = "ledger.grant_credit"


def credit_grant(*, user_id: int, amount_micro: int, granted_by, memo: str = "", key: str | None = None) -> Transaction:
    """Staff give credit (issued from the issuance account, which is the only one allowed below zero).

    Refused, with nothing written: without the permission to grant (staff with ledger.grant_credit, or a superuser),
    to oneself, and above settings.MF_LEDGER_GRANT_MAX_CREDITS. The same key twice is one grant."""
    if not (getattr(granted_by, "is_staff", False) and granted_by.has_perm(GRANT_PERMISSION)):
        raise NotAllowed(
            'Only staff with the permission "Can grant credit to a user" can grant credit; ask an administrator.'
        )
    if granted_by.pk == user_id:
        raise InvalidRequest("You cannot grant credit to yourself; ask another member of staff.")
    amount = _positive_amount(amount_micro)
    ceiling = settings.MF_LEDGER_GRANT_MAX_CREDITS
    if amount > ceiling * MICRO:
        raise InvalidRequest(
            f"One grant can give at most {ceiling:,} credits (MF_LEDGER_GRANT_MAX_CREDITS); "
            f"this one asks for {format_credits(amount)}."
        )
    key = key or f"grant:{uuid.uuid4()}"
    return _issue(
        key=key,
        kind=Transaction.Kind.GRANT,
        user_id=user_id,
        amount_micro=amount,
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
