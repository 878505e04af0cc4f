"""Settlement of a fee: the payer (directly or through a hold) pays, and the model owner, the contributors and a
platform shard receive their parts of the split policy, in one transaction; one at a time or many at once. On
PostgreSQL the plain ones take `settlement_fast`; the rest, and every one on SQLite, take the engine's `_commit`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from django.conf import settings
from django.db import connection

from ledger.calc.canonical import canonical_json, jsonable, sha256_hex
from ledger.calc.money import format_credits
from ledger.calc.split import Split, SplitError, SplitPolicy, split_fee, to_fraction
from ledger.models import Account, Hold, Transaction
from ledger.services.earnings import PendingPart, _create_pending_earnings, _pending_layout
from ledger.services.engine import _check_key, _commit, _legs, _lock_accounts, _Plan, _shard
from ledger.services.errors import InvalidRequest, LedgerError, PolicyOutOfBounds
from ledger.services.holds import _open_hold
from ledger.services.settlement_fast import _Settlement, _settlement_post_batch, _settlement_post_fast


def policy_check(policy: SplitPolicy) -> SplitPolicy:
    """Refuses a split outside the bounds operators set (settings MF_LEDGER_*_BP_*)."""
    problems = []
    if policy.owner_bp > settings.MF_LEDGER_OWNER_BP_MAX:
        problems.append(f"the owner's part may be at most {settings.MF_LEDGER_OWNER_BP_MAX / 100:g}%")
    if policy.contributors_bp < settings.MF_LEDGER_CONTRIBUTORS_BP_MIN:
        problems.append(f"the contributors' part must be at least {settings.MF_LEDGER_CONTRIBUTORS_BP_MIN / 100:g}%")
    if not settings.MF_LEDGER_PLATFORM_BP_MIN <= policy.platform_bp <= settings.MF_LEDGER_PLATFORM_BP_MAX:
        problems.append(
            f"the platform's part must be between {settings.MF_LEDGER_PLATFORM_BP_MIN / 100:g}% "
            f"and {settings.MF_LEDGER_PLATFORM_BP_MAX / 100:g}%"
        )
    if problems:
        raise PolicyOutOfBounds("This split is not allowed: " + "; ".join(problems) + ".")
    return policy


Share = Fraction | Decimal | int | float | str


@dataclass(frozen=True)
class SettlementRequest:
    """One settlement of a `settlement_post_many` batch: the arguments of `settlement_post`, with the same
    meaning."""

    key: str
    fee_micro: int
    owner_user_id: int
    contributor_shares: Mapping[int, Share] | None
    policy: SplitPolicy | None = None
    payer_user_id: int | None = None
    hold_key: str | None = None
    fallback_reason: str | None = None
    metadata: Mapping | None = None
    memo: str = ""
    unattributed: Share | None = None
    pending: Mapping[int, Sequence[PendingPart]] | None = None


def settlement_post(
    *,
    key: str,
    fee_micro: int,
    owner_user_id: int,
    contributor_shares: Mapping[int, Share] | None,
    policy: SplitPolicy | None = None,
    payer_user_id: int | None = None,
    hold_key: str | None = None,
    fallback_reason: str | None = None,
    metadata: Mapping | None = None,
    memo: str = "",
    unattributed: Share | None = None,
    pending: Mapping[int, Sequence[PendingPart]] | None = None,
) -> Transaction:
    """Settles one fee in one transaction: the payer (directly, or through the hold `hold_key`) pays `fee_micro`;
    the model owner, the contributors (by share, exactly, largest remainder, ties to the lower user id) and a
    platform shard receive their parts of `policy` (default 20/70/10). From a hold, whatever the fee leaves of the
    held amount goes back to the payer and the hold is closed, in the same transaction.

    `contributor_shares` maps user id -> share (any positive scale; normalised). Empty or None: the contributors'
    part goes to the owner and `fallback_reason` (or "no contributors") is stored. The metadata records the
    policy, the shares as given, the split and the reason, so anyone can recompute it; put chart labels there
    too ("model": str, "datanet": str or "datanets": {user id: str}).

    `unattributed` (0..1, with a policy whose `unattributed_to` says where it goes): the fraction of the
    contributors' part that no row earned; it goes there (the owner) and only the rest is split by share. The
    record then holds the share and the amount.

    `pending` ({contributor user id: [PendingPart]}): where each contributor's amount comes from; the parts from a
    datanet with a holding period (an `available_at`) are paid to an earnings-pending shard, each recorded as a
    PendingEarning (released or forfeited later, see `earnings`), the rest to the wallet. The record lists them
    ("pending"). They are the payee's side of the same payment, so they are not part of the request hash: a replay
    returns the first settlement, whatever layout it brings. Such settlements take the general path.

    Raises InsufficientFunds (payer path; recorded), HoldNotOpen, IdempotencyConflict, PolicyOutOfBounds,
    InvalidRequest. Replaying `key` with the same inputs returns the same transaction."""
    settlement = _settlement_prepare(
        SettlementRequest(
            key=key,
            fee_micro=fee_micro,
            owner_user_id=owner_user_id,
            contributor_shares=contributor_shares,
            policy=policy,
            payer_user_id=payer_user_id,
            hold_key=hold_key,
            fallback_reason=fallback_reason,
            metadata=metadata,
            memo=memo,
            unattributed=unattributed,
            pending=pending,
        )
    )
    if connection.vendor == "postgresql" and settings.MF_LEDGER_FAST_SETTLEMENT and not settlement.held:
        tx = _settlement_post_fast(settlement)
        if tx is not None:
            return tx
    return _commit(key=settlement.key, request_hash=settlement.request_hash, build=settlement.build)


SETTLEMENT_BATCH_MAX = 128  # settlements per call of the batch function (and so per commit)


def settlement_post_many(*, requests: Sequence[SettlementRequest]) -> list[Transaction | LedgerError]:
    """Settles many fees, each exactly as `settlement_post` would (its own transaction, key, request hash,
    postings and link in the hash chain), and answers each on its own: the outcome at position i is the
    Transaction for requests[i] (new, or the stored one for a replay) or the LedgerError settlement_post would
    have raised for it (InsufficientFunds, HoldNotOpen, IdempotencyConflict, InvalidRequest, ...). One item's
    error never fails or rolls back the others.

    On PostgreSQL the plain items (a new key, funds or an open hold, accounts that exist) are written by one call
    of ledger_settlement_post_many (migrations/0005) per SETTLEMENT_BATCH_MAX items: one round trip, one commit
    and one wait for the disk flush for all of them (a batch of one calls ledger_settlement_post, as
    settlement_post does); every other item (a replay, a conflict, lack of funds, a
    first-time wallet, a closed hold) then takes the general path on its own, as with settlement_post. Every
    outcome is durable when this returns. Elsewhere (SQLite) each item takes the general path in turn."""
    outcomes: list[Transaction | LedgerError | None] = [None] * len(requests)
    prepared: list[tuple[int, _Settlement]] = []
    for at, request in enumerate(requests):
        try:
            prepared.append((at, _settlement_prepare(request)))
        except LedgerError as exc:
            outcomes[at] = exc
    if connection.vendor == "postgresql" and settings.MF_LEDGER_FAST_SETTLEMENT:
        left = [(at, settlement) for at, settlement in prepared if settlement.held]  # the general path pays these
        prepared = [(at, settlement) for at, settlement in prepared if not settlement.held]
        for start in range(0, len(prepared), SETTLEMENT_BATCH_MAX):
            chunk = prepared[start : start + SETTLEMENT_BATCH_MAX]
            if len(chunk) == 1:  # the single function does less work for one (see bench/bench_ledger.py)
                tx = _settlement_post_fast(chunk[0][1])
                posted = {} if tx is None else {0: tx}
            else:
                posted = _settlement_post_batch([settlement for _, settlement in chunk])
            for number, (at, settlement) in enumerate(chunk):
                if number in posted:
                    outcomes[at] = posted[number]
                else:
                    left.append((at, settlement))
        prepared = left
    for at, settlement in prepared:
        try:
            outcomes[at] = _commit(key=settlement.key, request_hash=settlement.request_hash, build=settlement.build)
        except LedgerError as exc:
            outcomes[at] = exc
    return outcomes  # type: ignore[return-value]  (every position is filled above)


def _settlement_split(request: SettlementRequest) -> tuple[SplitPolicy, Split]:
    """Checks who pays, the fee and the policy, and splits the fee (InvalidRequest, PolicyOutOfBounds)."""
    if (request.payer_user_id is None) == (request.hold_key is None):
        raise InvalidRequest("Give exactly one of payer_user_id or hold_key.")
    fee_micro = request.fee_micro
    if isinstance(fee_micro, bool) or not isinstance(fee_micro, int) or fee_micro < 0:
        raise InvalidRequest("The fee must be a non-negative whole number of micro-units.")
    policy = policy_check(request.policy or SplitPolicy())
    contributor_shares = request.contributor_shares or {}
    try:
        shares = {int(uid): to_fraction(share) for uid, share in contributor_shares.items()}
        unattributed = None if request.unattributed is None else to_fraction(request.unattributed)
        split = split_fee(fee_micro, policy, shares, unattributed)
    except SplitError as exc:
        raise InvalidRequest(str(exc)) from None
    return policy, split


def _settlement_record(request: SettlementRequest, policy: SplitPolicy, split: Split) -> dict:
    """The metadata's "settlement" entry: the fee, the policy, the shares as given, the split and the fallback
    reason, so anyone can recompute the split."""
    contributor_shares = request.contributor_shares or {}
    reason = request.fallback_reason if request.fallback_reason else (None if split.contributors else "no contributors")
    record = {
        "fee_micro": request.fee_micro,
        "policy": policy.as_dict(),
        "method": "largest-remainder-v1",
        "shares": {str(uid): jsonable(share) for uid, share in sorted(contributor_shares.items())},
        "owner_user_id": request.owner_user_id,
        "payer_user_id": request.payer_user_id,
        "hold_key": request.hold_key,
        "fallback_reason": reason,
        "split": {
            "owner": split.owner_total,
            "contributors": {str(uid): amount for uid, amount in split.contributors.items()},
            "platform": split.platform,
        },
    }
    if request.unattributed is not None:  # older settlements keep their exact record (and request hash)
        record["unattributed"] = jsonable(request.unattributed)
        record["split"]["unattributed"] = split.unattributed
    return record


def _settlement_plan(
    *, request: SettlementRequest, split: Split, platform: tuple[str, int], metadata: dict, held: list[dict]
) -> Callable[[], _Plan]:
    """The general path's plan: locks the hold (if any) and the accounts, and lays out the legs; the `held` parts
    of the contributors' amounts go to an earnings-pending shard (and get their PendingEarning rows)."""
    fee_micro, hold_key, payer_user_id = request.fee_micro, request.hold_key, request.payer_user_id
    owner_user_id, memo = request.owner_user_id, request.memo
    users = {owner_user_id, *split.contributors}
    held_by_user: dict[int, int] = {}
    for part in held:
        held_by_user[part["user_id"]] = held_by_user.get(part["user_id"], 0) + part["amount"]
    pending_shard = (Account.Role.EARNINGS_PENDING, platform[1])

    def build() -> _Plan:
        hold = _open_hold(hold_key) if hold_key is not None else None
        if hold is not None and fee_micro > hold.amount:
            raise InvalidRequest(
                f"The fee ({format_credits(fee_micro)}) is more than the hold ({format_credits(hold.amount)})."
            )
        payer_users = users | ({payer_user_id} if payer_user_id is not None else set())
        ids = [hold.payer_id, hold.clearing_id] if hold is not None else []
        system = [platform, pending_shard] if held else [platform]
        locked, by_user, by_role = _lock_accounts(ids=ids, users=payer_users, system=system)
        legs = [
            (by_user[owner_user_id], split.owner_total),
            (by_role[platform], split.platform),
            *((by_user[uid], amount - held_by_user.get(uid, 0)) for uid, amount in split.contributors.items()),
        ]
        if held:
            legs.append((by_role[pending_shard], sum(held_by_user.values())))
        if hold is None:
            legs.append((by_user[payer_user_id], -fee_micro))
        else:
            legs += [(hold.clearing_id, -hold.amount), (hold.payer_id, hold.amount - fee_micro)]

        def after(tx: Transaction) -> None:
            if hold is not None:
                Hold.objects.filter(pk=hold.pk).update(status=Hold.Status.SETTLED, close_tx=tx, closed_at=tx.created_at)
            if held:
                _create_pending_earnings(
                    tx=tx, settlement_key=request.key, held=held, wallets=by_user, pending_id=by_role[pending_shard]
                )

        return _Plan(
            kind=Transaction.Kind.SETTLEMENT,
            legs=_legs(legs),
            locked=locked,
            memo=memo or "Inference fee",
            metadata=metadata,
            after=after if hold is not None or held else None,
        )

    return build


def _settlement_prepare(request: SettlementRequest) -> _Settlement:
    """Checks a settlement and computes everything about it that needs no database: the split, the metadata,
    the request hash, the legs by user, and the general path's plan."""
    key, fee_micro, hold_key, payer_user_id = request.key, request.fee_micro, request.hold_key, request.payer_user_id
    policy, split = _settlement_split(request)
    extra = jsonable(dict(request.metadata or {}))
    settlement = _settlement_record(request, policy, split)
    held = _pending_layout(split.contributors, request.pending)
    meta = {**extra, "settlement": {**settlement, "pending": held} if held else settlement}
    platform = (Account.Role.PLATFORM, _shard(key))
    # request_fingerprint("settlement", **settlement, metadata=..., memo=...) without converting the (already
    # jsonable) values again.
    request_hash = sha256_hex(
        canonical_json({"operation": "settlement", "inputs": {**settlement, "metadata": extra, "memo": request.memo}})
    )
    if fee_micro == 0 and hold_key is None:
        raise InvalidRequest("A settlement without a hold needs a fee above zero.")
    _check_key(key)
    return _Settlement(
        key=key,
        request_hash=request_hash,
        memo=(request.memo or "Inference fee")[:500],
        metadata=meta,
        user_legs=[
            (request.owner_user_id, split.owner_total),
            *split.contributors.items(),
            *(((payer_user_id, -fee_micro),) if hold_key is None else ()),
        ],
        platform=(platform[1], split.platform),
        hold_key=hold_key,
        fee_micro=fee_micro,
        build=_settlement_plan(request=request, split=split, platform=platform, metadata=meta, held=held),
        held=bool(held),
    )
