"""Bonds: a stake a contributor posts to upload to a datanet that asks for one. Posting moves it from the wallet to a
bonds-held shard (refused, and recorded as refused, when the wallet lacks it); it is returned when the contribution
is accepted and slashed to its datanet's pool (an account per datanet) when it is rejected as spam or confirmed
harmful. Each step is a ledger transaction with its own key; return and slash of one bond race safely (both lock
the bond row first)."""

from __future__ import annotations

from ledger.models import Account, Bond, Transaction
from ledger.services.engine import (
    _commit,
    _legs,
    _lock_accounts,
    _Plan,
    _pool_account,
    _positive_amount,
    request_fingerprint,
)
from ledger.services.errors import BondNotHeld, InvalidRequest


def bond_post(
    *, key: str, user_id: int, amount_micro: int, datanet_id: int, contribution_id: int | None = None
) -> Bond:
    """Holds `amount_micro` of the user's wallet as the bond `key`. Replaying the key returns the same bond.

    Raises InsufficientFunds (recorded: the key stays failed), IdempotencyConflict, InvalidRequest."""
    amount = _positive_amount(amount_micro, "bond")
    request_hash = request_fingerprint(
        "bond", user=user_id, amount=amount, datanet_id=datanet_id, contribution_id=contribution_id
    )
    shard = (Account.Role.BONDS_HELD, 0)

    def build() -> _Plan:
        locked, by_user, by_role = _lock_accounts(users=[user_id], system=[shard])

        def after(tx: Transaction) -> None:
            Bond.objects.create(
                key=key,
                user_id=user_id,
                wallet_id=by_user[user_id],
                held_id=by_role[shard],
                amount=amount,
                datanet_id=datanet_id,
                contribution_id=contribution_id,
                hold_tx=tx,
            )

        return _Plan(
            kind=Transaction.Kind.BOND_POST,
            legs=_legs([(by_user[user_id], -amount), (by_role[shard], amount)]),
            locked=locked,
            memo="Bond held while the upload is reviewed",
            metadata={"bond_key": key, "datanet_id": datanet_id, "contribution_id": contribution_id},
            after=after,
        )

    _commit(key=f"bond:{key}", request_hash=request_hash, build=build)
    return Bond.objects.get(key=key)


def _close(*, bond_key: str, to: str, reason: str) -> Transaction:
    if to not in ("return", "slash"):
        raise InvalidRequest(f"Unknown destination {to!r}.")
    reason = (reason or "").strip()[:500]
    if to == "slash" and not reason:
        raise InvalidRequest("Say why the bond is forfeited; the contributor sees it in their statement.")
    key = f"bond-{to}:{bond_key}"
    request_hash = request_fingerprint(f"bond_{to}", bond_key=bond_key)

    def build() -> _Plan:
        bond = Bond.objects.select_for_update().filter(key=bond_key).first()
        if bond is None:
            raise BondNotHeld(f"There is no bond with key {bond_key!r}.")
        if bond.status != Bond.Status.HELD:
            raise BondNotHeld(f"The bond {bond_key!r} is already {bond.get_status_display().lower()}.")
        target = bond.wallet_id if to == "return" else _pool_account(bond.datanet_id)
        locked, _, _ = _lock_accounts(ids=[bond.held_id, bond.wallet_id, target])
        status = Bond.Status.RETURNED if to == "return" else Bond.Status.SLASHED

        def after(tx: Transaction) -> None:
            Bond.objects.filter(pk=bond.pk).update(status=status, close_tx=tx, closed_at=tx.created_at, reason=reason)

        return _Plan(
            kind=Transaction.Kind.BOND_RETURN if to == "return" else Transaction.Kind.BOND_SLASH,
            legs=_legs([(bond.held_id, -bond.amount), (target, bond.amount)]),
            locked=locked,
            memo="Bond returned: the upload was accepted" if to == "return" else f"Bond forfeited: {reason}",
            metadata={
                "bond_key": bond_key,
                "datanet_id": bond.datanet_id,
                "contribution_id": bond.contribution_id,
                **({"reason": reason} if reason else {}),
            },
            after=after,
        )

    try:
        return _commit(key=key, request_hash=request_hash, build=build)
    except BondNotHeld:
        done = Transaction.objects.filter(idempotency_key=key, request_hash=request_hash).first()
        if done is not None:
            return done
        raise


def bond_return(*, bond_key: str) -> Transaction:
    """Gives a held bond back to the contributor's wallet. Raises BondNotHeld (slashed first, or unknown)."""
    return _close(bond_key=bond_key, to="return", reason="")


def bond_slash(*, bond_key: str, reason: str) -> Transaction:
    """Forfeits a held bond to its datanet's pool, with the reason the contributor reads. Raises BondNotHeld."""
    return _close(bond_key=bond_key, to="slash", reason=reason)
