"""Pending earnings: a contributor's part of a settlement that waits out its datanet's holding period in an
earnings-pending shard (the settlement itself pays it there, see `settlement`), then is released to the wallet when
the period ends (`earnings_release_due`, a recovery sweep) or forfeited to the datanet's pool when a curator
confirms the contribution harmful (`earnings_forfeit_contribution`). Each release and each forfeit is its own
ledger transaction with its own idempotency key; the PendingEarning row only records which one closed it.

Release and forfeit of one earning race safely: both lock the earning's row first and only the first one finds it
pending; the other raises EarningNotPending (or, for a replay of its own key, returns the stored transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Sum
from django.utils import timezone

from ledger.calc.split import SplitError, allocate, to_fraction
from ledger.models import PendingEarning, Transaction
from ledger.services.engine import _commit, _legs, _lock_accounts, _Plan, _pool_account, request_fingerprint
from ledger.services.errors import EarningNotPending, InvalidRequest


@dataclass(frozen=True)
class PendingPart:
    """One source of a contributor's part of a settlement: a contribution (in a datanet) and its weight among that
    contributor's sources. `available_at` None: the datanet holds nothing, the part is paid to the wallet at once."""

    contribution_id: int
    datanet_id: int
    weight: float | str | int
    available_at: datetime | None = None


def _pending_layout(contributors: Mapping[int, int], pending: Mapping[int, Sequence[PendingPart]] | None) -> list[dict]:
    """The held parts of a split's contributor amounts: each contributor's amount divided over their sources by
    weight (largest remainder, in the order given), the parts with an `available_at` kept. JSON-ready records
    {user_id, contribution_id, datanet_id, amount, available_at}."""
    held = []
    for user_id, amount in contributors.items():
        parts = list((pending or {}).get(user_id) or ())
        if amount <= 0 or not any(p.available_at is not None for p in parts):
            continue
        try:
            weights = [(at, to_fraction(part.weight)) for at, part in enumerate(parts)]
            amounts = allocate(amount, weights)
        except SplitError as exc:
            raise InvalidRequest(f"The pending parts of user {user_id} cannot be split: {exc}") from None
        for (_, part_amount), part in zip(amounts, parts, strict=True):
            if part.available_at is not None and part_amount > 0:
                held.append(
                    {
                        "user_id": user_id,
                        "contribution_id": int(part.contribution_id),
                        "datanet_id": int(part.datanet_id),
                        "amount": part_amount,
                        "available_at": part.available_at.isoformat(),
                    }
                )
    return held


def _earning_key(settlement_key: str, part: dict) -> str:
    return f"{settlement_key}:earning:{part['contribution_id']}:{part['user_id']}"


def _create_pending_earnings(*, tx: Transaction, settlement_key: str, held: list[dict], wallets: dict, pending_id: int):
    """The PendingEarning rows of a settlement just posted (called in its database transaction)."""
    PendingEarning.objects.bulk_create(
        [
            PendingEarning(
                key=_earning_key(settlement_key, part),
                user_id=part["user_id"],
                wallet_id=wallets[part["user_id"]],
                pending_id=pending_id,
                amount=part["amount"],
                datanet_id=part["datanet_id"],
                contribution_id=part["contribution_id"],
                available_at=datetime.fromisoformat(part["available_at"]),
                pend_tx=tx,
            )
            for part in held
        ]
    )


def _open_earning(key: str) -> PendingEarning:
    earning = PendingEarning.objects.select_for_update().filter(key=key).first()
    if earning is None:
        raise EarningNotPending(f"There are no pending earnings with key {key!r}.")
    if earning.status != PendingEarning.Status.PENDING:
        raise EarningNotPending(f"The earnings {key!r} are already {earning.get_status_display().lower()}.")
    return earning


def _close(*, earning_key: str, to: str, reason: str) -> Transaction:
    """Moves a pending earning out of the pending shard: to the contributor's wallet ("release") or to its
    datanet's pool ("forfeit"). A replay of the same key (even one that lost a race to itself) returns the stored
    transaction."""
    if to not in ("release", "forfeit"):
        raise InvalidRequest(f"Unknown destination {to!r}.")
    key = f"earning-{to}:{earning_key}"
    request_hash = request_fingerprint(f"earning_{to}", earning_key=earning_key)
    reason = (reason or "").strip()[:500]
    if to == "forfeit" and not reason:
        raise InvalidRequest("Say why the earnings are forfeited; the contributor sees it in their statement.")

    def build() -> _Plan:
        earning = _open_earning(earning_key)
        target = earning.wallet_id if to == "release" else _pool_account(earning.datanet_id)
        locked, _, _ = _lock_accounts(ids=[earning.pending_id, earning.wallet_id, target])
        status = PendingEarning.Status.RELEASED if to == "release" else PendingEarning.Status.FORFEITED

        def after(tx: Transaction) -> None:
            PendingEarning.objects.filter(pk=earning.pk).update(
                status=status, close_tx=tx, closed_at=tx.created_at, reason=reason
            )

        memo = (
            "Earnings became available after the review period" if to == "release" else f"Earnings forfeited: {reason}"
        )
        return _Plan(
            kind=Transaction.Kind.EARNING_RELEASE if to == "release" else Transaction.Kind.EARNING_FORFEIT,
            legs=_legs([(earning.pending_id, -earning.amount), (target, earning.amount)]),
            locked=locked,
            memo=memo,
            metadata={
                "earning_key": earning_key,
                "datanet_id": earning.datanet_id,
                "contribution_id": earning.contribution_id,
                "settlement_tx_id": earning.pend_tx_id,
                **({"reason": reason} if reason else {}),
            },
            after=after,
        )

    try:
        return _commit(key=key, request_hash=request_hash, build=build)
    except EarningNotPending:
        done = Transaction.objects.filter(idempotency_key=key, request_hash=request_hash).first()
        if done is not None:
            return done
        raise


def earning_release(*, earning_key: str) -> Transaction:
    """Releases one pending earning to the contributor's wallet (whether or not its date has come: callers
    decide; `earnings_release_due` releases the due ones). Raises EarningNotPending, IdempotencyConflict."""
    return _close(earning_key=earning_key, to="release", reason="")


def earning_forfeit(*, earning_key: str, reason: str) -> Transaction:
    """Forfeits one pending earning to its datanet's pool (an account per datanet), with the reason the
    contributor will read."""
    return _close(earning_key=earning_key, to="forfeit", reason=reason)


def earnings_release_due(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Releases the pending earnings whose holding period has ended (a recovery sweep, settings.MF_SWEEPS); returns
    their ids. One that a concurrent forfeit closed first is skipped."""
    now = now or timezone.now()
    due = list(
        PendingEarning.objects.filter(status=PendingEarning.Status.PENDING, available_at__lte=now)
        .order_by("available_at", "pk")
        .values_list("pk", "key")[:limit]
    )
    released = []
    for pk, key in due:
        try:
            earning_release(earning_key=key)
        except EarningNotPending:
            continue
        released.append(pk)
    return released


def earnings_forfeit_contribution(*, contribution_id: int, reason: str) -> list[Transaction]:
    """Forfeits every still-pending earning of a contribution (a curator confirmed it harmful); earnings already
    released stay with the contributor. Each is its own transaction; a replay forfeits nothing twice."""
    if not (reason or "").strip():
        raise InvalidRequest("Say why the earnings are forfeited; the contributor sees it in their statement.")
    keys = list(
        PendingEarning.objects.filter(contribution_id=contribution_id, status=PendingEarning.Status.PENDING)
        .order_by("pk")
        .values_list("key", flat=True)
    )
    done = []
    for key in keys:
        try:
            done.append(earning_forfeit(earning_key=key, reason=reason))
        except EarningNotPending:  # released or forfeited meanwhile
            continue
    return done


def pending_total(*, user_id: int) -> int:
    """Micro-units of the user's earnings still in their review period."""
    return (
        PendingEarning.objects.filter(user_id=user_id, status=PendingEarning.Status.PENDING).aggregate(t=Sum("amount"))[
            "t"
        ]
        or 0
    )
