"""Ledger writes. Every money movement goes through `_commit`, which

1. looks the idempotency key up: same key + same request returns the stored transaction (or raises the stored
   InsufficientFunds again: a key whose first attempt lacked credit stays failed); same key + another request
   raises IdempotencyConflict;
2. locks the domain row (hold, withdrawal) if any, then every account it touches in id order (SELECT ... ORDER BY
   id FOR UPDATE), so two transfers over the same accounts can never deadlock;
3. checks funds on the locked balances and writes either a posted transaction with its postings or a rejected
   one without postings;
4. last of all takes the chain-head row lock to get the next sequence number and link the hash chain, so the lock
   that serialises every write is held only for one statement and the commit;
5. retries the whole thing on deadlock / serialization failure / a concurrent insert of the same key.

On PostgreSQL steps 3-4 are one SQL statement (a data-modifying CTE), the database computes the chain hash with
sha256() and its triggers keep balances and refuse unbalanced, updated or deleted rows (migrations/0002). On
SQLite the same steps run through the ORM, and this module is what enforces the rules.

Settlements, the hot path, take a shorter road on PostgreSQL (`_settlement_post_fast`, migrations/0003): steps
1-4 in one call of the ledger_settlement_post function, with the locks released before the WAL flush and the
flush awaited before we answer. Anything that is not the plain case falls back to `_commit`, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from ledger.calc.canonical import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    jsonable,
    sha256_hex,
    transaction_content,
    transaction_content_parts,
)
from ledger.calc.merkle import merkle_root
from ledger.calc.money import format_credits
from ledger.calc.split import SplitError, SplitPolicy, split_fee, to_fraction
from ledger.models import Account, ChainHead, Checkpoint, Hold, Posting, Transaction, Withdrawal

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


# --- Errors -------------------------------------------------------------------------------------------------------
class LedgerError(Exception):
    code = "ledger_error"


class InvalidRequest(LedgerError, ValueError):
    code = "invalid"


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"


class InsufficientFunds(LedgerError):
    """Not enough credit. The attempt is recorded as a rejected transaction (`transaction`), so replaying its key
    fails the same way."""

    code = "insufficient_funds"

    def __init__(self, tx: Transaction):
        self.transaction = tx
        info = tx.metadata.get("rejected", {})
        self.account_id = info.get("account_id")
        self.balance = info.get("balance", 0)
        self.needed = info.get("needed", 0)
        super().__init__(
            f"Not enough credit: the account has {format_credits(self.balance)} credits and this needs "
            f"{format_credits(self.needed)}."
        )


class HoldNotOpen(LedgerError):
    code = "hold_not_open"


class WithdrawalNotOpen(LedgerError):
    code = "withdrawal_not_open"


class PolicyOutOfBounds(LedgerError, ValueError):
    code = "policy_out_of_bounds"


# --- The posting engine -------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    kind: str
    legs: list[tuple[int, int]]  # (account id, signed micro-units), no zero legs, credits first
    locked: dict[int, tuple[int, bool]]  # account id -> (balance, allow_negative), read under FOR UPDATE
    memo: str = ""
    metadata: dict = field(default_factory=dict)
    after: Callable[[Transaction], None] | None = None  # domain rows to write once the transaction is posted


def request_fingerprint(operation: str, **inputs) -> str:
    """SHA-256 of the canonical JSON of an operation and its inputs: what "the same request" means."""
    return sha256_hex(canonical_json({"operation": operation, "inputs": jsonable(inputs)}))


def _sqlstate(exc: Exception) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def _is_retryable(exc: Exception) -> bool:
    state = _sqlstate(exc)
    if isinstance(exc, OperationalError):
        return state in _RETRYABLE_SQLSTATES
    # Two requests with one key raced: the loser retries and finds the winner's transaction.
    return state == "23505" and ("idempotency_key" in str(exc) or "ledger_hold_key" in str(exc))


def _existing(key: str, request_hash: str) -> Transaction | None:
    tx = Transaction.objects.filter(idempotency_key=key).first()
    if tx is not None and tx.request_hash != request_hash:
        raise IdempotencyConflict(
            f"The idempotency key {key!r} was already used for a different request; use a new key."
        )
    return tx


def _check_key(key: str) -> None:
    if not key or len(key) > 200:
        raise InvalidRequest("An idempotency key of 1 to 200 characters is required.")


T = TypeVar("T")


def _retrying(attempt: Callable[[], T], *, outermost: bool) -> T:
    """Runs `attempt` again (after a short random wait) when it fails on a deadlock or serialization failure, up to
    MAX_ATTEMPTS times; only when it is the whole database transaction (`outermost`), since a caller's transaction
    that failed cannot be retried from inside."""
    for number in range(1, MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except (OperationalError, IntegrityError) as exc:
            if not (outermost and number < MAX_ATTEMPTS and _is_retryable(exc)):
                raise
            time.sleep(random.uniform(0, 0.002 * 2**number))  # noqa: S311 (jitter, not security)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _commit(*, key: str, request_hash: str, build: Callable[[], _Plan]) -> Transaction:
    _check_key(key)
    outermost = not connection.in_atomic_block
    early = outermost and _early_release_possible()

    def attempt() -> Transaction:
        with transaction.atomic(durable=outermost):
            tx = _existing(key, request_hash)
            if tx is None:
                plan = build()
                tx = _write(key=key, request_hash=request_hash, plan=plan, early_release=early)
                if tx.status == Transaction.Status.POSTED and plan.after is not None:
                    plan.after(tx)
        return tx

    tx = _retrying(attempt, outermost=outermost)
    if early:
        _durable()
    if tx.status == Transaction.Status.REJECTED:
        raise InsufficientFunds(tx)
    _maybe_schedule_checkpoint(tx.seq)
    return tx


def _lock_accounts(
    *, ids: Iterable[int] = (), users: Iterable[int] = (), system: Iterable[tuple[str, int]] = ()
) -> tuple[dict[int, tuple[int, bool]], dict[int, int], dict[tuple[str, int], int]]:
    """Locks the named accounts in id order, creating missing user wallets and system shards first.

    Returns (id -> (balance, allow_negative), user id -> account id, (role, shard) -> account id)."""
    ids, users, system = set(ids), set(users), set(system)
    query = Q(pk__in=ids) if ids else Q(pk__in=[])
    if users:
        query |= Q(owner_id__in=users)
    for role, shard in system:
        query |= Q(owner__isnull=True, role=role, shard=shard)
    for _ in range(2):
        rows = list(
            Account.objects.filter(query)
            .order_by("pk")
            .select_for_update()
            .values_list("id", "owner_id", "role", "shard", "balance", "allow_negative")
        )
        by_user = {owner: pk for pk, owner, *_ in rows if owner is not None}
        by_role = {(role, shard): pk for pk, owner, role, shard, *_ in rows if owner is None}
        missing_users = users - by_user.keys()
        missing_system = system - by_role.keys()
        if not missing_users and not missing_system:
            break
        Account.objects.bulk_create(
            [Account(owner_id=uid, role=Account.Role.USER) for uid in sorted(missing_users)]
            + [
                Account(role=role, shard=shard, allow_negative=role == Account.Role.ISSUANCE)
                for role, shard in sorted(missing_system)
            ],
            ignore_conflicts=True,  # another request may create the same wallet at the same moment
        )
    else:
        raise InvalidRequest("Could not create the ledger accounts for this request.")
    locked = {pk: (balance, allow_negative) for pk, _, _, _, balance, allow_negative in rows}
    unknown = ids - locked.keys()
    if unknown:
        raise InvalidRequest(f"No ledger account with id {sorted(unknown)}.")
    return locked, by_user, by_role


def _legs(legs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validated legs, zero legs dropped, sorted. One account may appear twice (a payer who is also the model's
    owner pays the fee and receives the owner's part: two postings, as in any double-entry book)."""
    result = []
    for account, amount in legs:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise InvalidRequest("Amounts are whole micro-units (int).")
        if amount != 0:
            result.append((int(account), amount))
    # Credits before debits: applied in this order, no account passes below its final balance on the way (the
    # CHECK constraint on balances is checked row by row).
    return sorted(result, key=lambda leg: (leg[1] < 0, leg[0], leg[1]))


def _write(*, key: str, request_hash: str, plan: _Plan, early_release: bool = False) -> Transaction:
    legs = plan.legs
    if sum(amount for _, amount in legs) != 0:
        raise InvalidRequest(f"The legs of a transaction must sum to zero, not {sum(a for _, a in legs)}.")
    if len(legs) < 2:
        raise InvalidRequest("A transaction needs at least two non-zero legs.")
    metadata = jsonable(plan.metadata)
    status = Transaction.Status.POSTED
    net: dict[int, int] = {}
    for account, amount in legs:
        net[account] = net.get(account, 0) + amount
    for account, amount in sorted(net.items()):
        balance, allow_negative = plan.locked[account]
        if amount < 0 and not allow_negative and balance + amount < 0:
            status = Transaction.Status.REJECTED
            metadata = {**metadata, "rejected": {"account_id": account, "balance": balance, "needed": -amount}}
            legs = []
            break
    created_at = timezone.now()
    memo = plan.memo[:500]
    content = transaction_content(
        key=key,
        kind=plan.kind,
        status=status,
        memo=memo,
        metadata=metadata,
        request_hash=request_hash,
        created_at=created_at.isoformat(),
        postings=legs,
    )
    fields = dict(
        idempotency_key=key,
        kind=plan.kind,
        status=status,
        memo=memo,
        metadata=metadata,
        request_hash=request_hash,
        created_at=created_at,
    )
    if connection.vendor == "postgresql":
        return _write_postgresql(fields=fields, content=content, legs=legs, early_release=early_release)
    return _write_portable(fields=fields, content=content, legs=legs)


_PG_WRITE = """
WITH head AS (
  UPDATE ledger_chainhead
     SET seq = seq + 1, prev_hash = hash, hash = encode(sha256(decode(hash, 'hex') || %s::bytea), 'hex')
   WHERE id = 1
  RETURNING seq, prev_hash, hash
), tx AS (
  INSERT INTO ledger_transaction
    (idempotency_key, kind, status, memo, metadata, request_hash, created_at, seq, prev_hash, hash)
  SELECT %s, %s, %s, %s, %s::jsonb, %s, %s, head.seq, head.prev_hash, head.hash FROM head
  RETURNING id, seq, prev_hash, hash
), postings AS (
  INSERT INTO ledger_posting (transaction_id, account_id, amount)
  SELECT tx.id, leg.account_id, leg.amount
    FROM tx, unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS leg(account_id, amount, n)
   ORDER BY leg.n
)
SELECT id, seq, prev_hash, hash
  FROM tx, (SELECT CASE WHEN %s THEN set_config('synchronous_commit', 'off', true) END) AS early_release
"""


def _write_postgresql(
    *, fields: dict, content: bytes, legs: list[tuple[int, int]], early_release: bool = False
) -> Transaction:
    """The chain step, the transaction and its postings in one statement. With `early_release` (the caller's
    atomic block is the whole database transaction) the commit will not wait for the WAL flush, so the chain head
    and the account rows are unlocked before the flush; the caller then waits for it with `_durable`."""
    params = [
        content,
        fields["idempotency_key"],
        fields["kind"],
        fields["status"],
        fields["memo"],
        json.dumps(fields["metadata"]),
        fields["request_hash"],
        fields["created_at"],
        [account for account, _ in legs],
        [amount for _, amount in legs],
        early_release,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_PG_WRITE, params)
        row = cursor.fetchone()
        if row is None:  # no chain head yet (fresh or flushed database): create it and go again
            cursor.execute(
                "INSERT INTO ledger_chainhead (id, seq, prev_hash, hash) VALUES (1, 0, %s, %s) ON CONFLICT DO NOTHING",
                [GENESIS_HASH, GENESIS_HASH],
            )
            cursor.execute(_PG_WRITE, params)
            row = cursor.fetchone()
    pk, seq, prev_hash, digest = row
    return Transaction(id=pk, seq=seq, prev_hash=prev_hash, hash=digest, **fields)


def _write_portable(*, fields: dict, content: bytes, legs: list[tuple[int, int]]) -> Transaction:
    head, _ = ChainHead.objects.select_for_update().get_or_create(pk=1)
    digest = chain_hash(head.hash, content)
    tx = Transaction.objects.create(seq=head.seq + 1, prev_hash=head.hash, hash=digest, **fields)
    Posting.objects.bulk_create([Posting(transaction=tx, account_id=a, amount=m) for a, m in legs])
    net: dict[int, int] = {}
    for account, amount in legs:
        net[account] = net.get(account, 0) + amount
    for account, amount in net.items():
        if amount:
            Account.objects.filter(pk=account).update(balance=F("balance") + amount)
    ChainHead.objects.filter(pk=1).update(seq=tx.seq, prev_hash=head.hash, hash=digest)
    return tx


def _shard(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % settings.MF_LEDGER_SHARDS


def _positive_amount(amount_micro: int, what: str = "amount") -> int:
    if isinstance(amount_micro, bool) or not isinstance(amount_micro, int) or amount_micro <= 0:
        raise InvalidRequest(f"The {what} must be a positive whole number of micro-units.")
    return amount_micro


# --- Accounts, transfers, grants ------------------------------------------------------------------------------------
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


# --- Holds and settlement -----------------------------------------------------------------------------------------
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


@dataclass
class _Settlement:
    """A checked settlement: what the settlement functions (PostgreSQL) and the general path need."""

    key: str
    request_hash: str
    memo: str
    metadata: dict  # already jsonable
    user_legs: list[tuple[int, int]]  # (user id, signed micro-units): owner, contributors, then the payer if any
    platform: tuple[int, int]  # (shard, micro-units)
    hold_key: str | None
    fee_micro: int
    build: Callable[[], _Plan]  # the general path's plan


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
) -> Transaction:
    """Settles one fee in one transaction: the payer (directly, or through the hold `hold_key`) pays `fee_micro`;
    the model owner, the contributors (by share, exactly, largest remainder, ties to the lower user id) and a
    platform shard receive their parts of `policy` (default 20/70/10). From a hold, whatever the fee leaves of the
    held amount goes back to the payer and the hold is closed, in the same transaction.

    `contributor_shares` maps user id -> share (any positive scale; normalised). Empty or None: the contributors'
    part goes to the owner and `fallback_reason` (or "no contributors") is stored. The metadata records the
    policy, the shares as given, the split and the reason, so anyone can recompute it; put chart labels there
    too ("model": str, "datanet": str or "datanets": {user id: str}).

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
        )
    )
    if connection.vendor == "postgresql" and settings.MF_LEDGER_FAST_SETTLEMENT:
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
        left = []
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


def _settlement_prepare(request: SettlementRequest) -> _Settlement:
    """Checks a settlement and computes everything about it that needs no database: the split, the metadata,
    the request hash, the legs by user, and the general path's plan."""
    key, fee_micro, hold_key, payer_user_id = request.key, request.fee_micro, request.hold_key, request.payer_user_id
    owner_user_id, memo = request.owner_user_id, request.memo
    if (payer_user_id is None) == (hold_key is None):
        raise InvalidRequest("Give exactly one of payer_user_id or hold_key.")
    if isinstance(fee_micro, bool) or not isinstance(fee_micro, int) or fee_micro < 0:
        raise InvalidRequest("The fee must be a non-negative whole number of micro-units.")
    policy = policy_check(request.policy or SplitPolicy())
    contributor_shares = request.contributor_shares or {}
    try:
        shares = {int(uid): to_fraction(share) for uid, share in contributor_shares.items()}
        split = split_fee(fee_micro, policy, shares)
    except SplitError as exc:
        raise InvalidRequest(str(exc)) from None
    reason = request.fallback_reason if request.fallback_reason else (None if split.contributors else "no contributors")
    extra = jsonable(dict(request.metadata or {}))
    settlement = {
        "fee_micro": fee_micro,
        "policy": policy.as_dict(),
        "method": "largest-remainder-v1",
        "shares": {str(uid): jsonable(share) for uid, share in sorted(contributor_shares.items())},
        "owner_user_id": owner_user_id,
        "payer_user_id": payer_user_id,
        "hold_key": hold_key,
        "fallback_reason": reason,
        "split": {
            "owner": split.owner + split.contributors_to_owner,
            "contributors": {str(uid): amount for uid, amount in split.contributors.items()},
            "platform": split.platform,
        },
    }
    meta = {**extra, "settlement": settlement}
    platform = (Account.Role.PLATFORM, _shard(key))
    # request_fingerprint("settlement", **settlement, metadata=..., memo=...) without converting the (already
    # jsonable) values again.
    request_hash = sha256_hex(
        canonical_json({"operation": "settlement", "inputs": {**settlement, "metadata": extra, "memo": memo}})
    )
    users = {owner_user_id, *split.contributors}

    def build() -> _Plan:
        hold = _open_hold(hold_key) if hold_key is not None else None
        if hold is not None and fee_micro > hold.amount:
            raise InvalidRequest(
                f"The fee ({format_credits(fee_micro)}) is more than the hold ({format_credits(hold.amount)})."
            )
        payer_users = users | ({payer_user_id} if payer_user_id is not None else set())
        ids = [hold.payer_id, hold.clearing_id] if hold is not None else []
        locked, by_user, by_role = _lock_accounts(ids=ids, users=payer_users, system=[platform])
        legs = [
            (by_user[owner_user_id], split.owner + split.contributors_to_owner),
            (by_role[platform], split.platform),
            *((by_user[uid], amount) for uid, amount in split.contributors.items()),
        ]
        if hold is None:
            legs.append((by_user[payer_user_id], -fee_micro))
            after = None
        else:
            legs += [(hold.clearing_id, -hold.amount), (hold.payer_id, hold.amount - fee_micro)]

            def after(tx: Transaction) -> None:
                Hold.objects.filter(pk=hold.pk).update(status=Hold.Status.SETTLED, close_tx=tx, closed_at=tx.created_at)

        return _Plan(
            kind=Transaction.Kind.SETTLEMENT,
            legs=_legs(legs),
            locked=locked,
            memo=memo or "Inference fee",
            metadata=meta,
            after=after,
        )

    if fee_micro == 0 and hold_key is None:
        raise InvalidRequest("A settlement without a hold needs a fee above zero.")
    _check_key(key)
    return _Settlement(
        key=key,
        request_hash=request_hash,
        memo=(memo or "Inference fee")[:500],
        metadata=meta,
        user_legs=[
            (owner_user_id, split.owner + split.contributors_to_owner),
            *split.contributors.items(),
            *(((payer_user_id, -fee_micro),) if hold_key is None else ()),
        ],
        platform=(platform[1], split.platform),
        hold_key=hold_key,
        fee_micro=fee_micro,
        build=build,
    )


def _content_parts(settlement: _Settlement, created_at) -> tuple[bytes, bytes]:
    return transaction_content_parts(
        key=settlement.key,
        kind=Transaction.Kind.SETTLEMENT,
        status=Transaction.Status.POSTED,
        memo=settlement.memo,
        metadata=settlement.metadata,
        request_hash=settlement.request_hash,
        created_at=created_at.isoformat(),
    )


def _posted(settlement: _Settlement, created_at, row) -> Transaction:
    pk, seq, prev_hash, digest = row
    _maybe_schedule_checkpoint(seq)
    return Transaction(
        id=pk,
        seq=seq,
        prev_hash=prev_hash,
        hash=digest,
        idempotency_key=settlement.key,
        kind=Transaction.Kind.SETTLEMENT,
        status=Transaction.Status.POSTED,
        memo=settlement.memo,
        metadata=settlement.metadata,
        request_hash=settlement.request_hash,
        created_at=created_at,
    )


def _settlement_post_fast(settlement: _Settlement) -> Transaction | None:
    """PostgreSQL: the plain settlement (new key, open hold or a payer with funds, accounts that exist) as one call
    of ledger_settlement_post (migrations/0003), which locks, checks and writes exactly what the general path
    would, with the same legs, content and hash. None: not the plain case; nothing was written and the caller
    runs the general path (replays, conflicts, recorded rejections, first-time accounts, errors).

    When this call is its own database transaction, its commit does not wait for the disk flush, so the chain
    head and the account rows are unlocked before the flush rather than after it (one flush per settlement used
    to cap every writer at the disk's flush rate); `_durable` then waits for the flush before we answer. Inside
    a caller's atomic block the caller's commit is an ordinary, flushing one."""
    outermost = not connection.in_atomic_block
    early = outermost and _early_release_possible()
    created_at = timezone.now()
    head, tail = _content_parts(settlement, created_at)
    params = [
        settlement.key,
        Transaction.Kind.SETTLEMENT.value,
        settlement.memo,
        json.dumps(settlement.metadata),
        settlement.request_hash,
        created_at,
        head,
        tail,
        [user for user, _ in settlement.user_legs],
        [amount for _, amount in settlement.user_legs],
        settlement.platform[0],
        settlement.platform[1],
        settlement.hold_key,
        settlement.fee_micro,
        early,
    ]

    def attempt():
        with connection.cursor() as cursor:
            cursor.execute(_PG_SETTLE, params)
            return cursor.fetchone()

    row = _retrying(attempt, outermost=outermost)
    if row is None:
        return None
    if early:
        _durable()
    return _posted(settlement, created_at, row)


def _settlement_post_batch(settlements: list[_Settlement]) -> dict[int, Transaction]:
    """PostgreSQL: one call of ledger_settlement_post_many (migrations/0005) for the batch; returns {position in
    `settlements`: Transaction} for those it posted (the plain ones), the same rows, content and hashes as one
    call of ledger_settlement_post each, in batch order. The others wrote nothing. Locks are released before the
    WAL flush and the flush is awaited once, as in `_settlement_post_fast`."""
    if not settlements:
        return {}
    outermost = not connection.in_atomic_block
    early = outermost and _early_release_possible()
    created_at = timezone.now()
    parts = [_content_parts(settlement, created_at) for settlement in settlements]
    leg_first, leg_users, leg_amounts = [], [], []
    for settlement in settlements:
        leg_first.append(len(leg_users) + 1)
        for user, amount in settlement.user_legs:
            leg_users.append(user)
            leg_amounts.append(amount)
    leg_first.append(len(leg_users) + 1)
    params = [
        [s.key for s in settlements],
        [s.memo for s in settlements],
        [json.dumps(s.metadata) for s in settlements],
        [s.request_hash for s in settlements],
        [created_at] * len(settlements),
        [head for head, _ in parts],
        [tail for _, tail in parts],
        [s.platform[0] for s in settlements],
        [s.platform[1] for s in settlements],
        [s.hold_key for s in settlements],
        [s.fee_micro for s in settlements],
        leg_first,
        leg_users,
        leg_amounts,
        early,
    ]

    def attempt():
        with connection.cursor() as cursor:
            cursor.execute(_PG_SETTLE_MANY, params)
            return cursor.fetchall()

    rows = _retrying(attempt, outermost=outermost)
    if rows and early:
        _durable()
    return {at - 1: _posted(settlements[at - 1], created_at, row) for at, *row in rows}


_PG_SETTLE = "SELECT * FROM ledger_settlement_post(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_SETTLE_MANY = (
    "SELECT * FROM ledger_settlement_post_many(%s, %s, %s, %s, %s::timestamptz[], %s, %s, %s::integer[], "
    "%s::bigint[], %s::text[], %s::bigint[], %s::integer[], %s::bigint[], %s::bigint[], %s)"
)


def _early_release_possible() -> bool:
    return connection.vendor == "postgresql" and settings.MF_LEDGER_EARLY_RELEASE


def _durable() -> None:
    """Returns once everything this session committed is on disk: a transaction that writes WAL (a one-line
    transactional WAL message, no table) and commits with synchronous_commit on flushes the WAL up to its own
    commit record, which lies after ours. Concurrent sessions' flushes are combined by PostgreSQL (group commit),
    and no ledger lock is held while waiting."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, 'ledger-durable', '')")


# --- Withdrawals ------------------------------------------------------------------------------------------------
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


# --- Checkpoints ------------------------------------------------------------------------------------------------
def checkpoint_create() -> Checkpoint | None:
    """A Merkle root over the hashes of every transaction since the last checkpoint (None if there are none).

    seq is assigned under the chain-head lock held until commit, so every seq up to the current maximum is
    committed: the range is final."""
    with transaction.atomic(durable=not connection.in_atomic_block):
        last = Checkpoint.objects.select_for_update().order_by("-last_seq").first()
        first_seq = (last.last_seq if last else 0) + 1
        rows = list(Transaction.objects.filter(seq__gte=first_seq).order_by("seq").values_list("seq", "hash"))
        if not rows:
            return None
        return Checkpoint.objects.create(
            first_seq=first_seq,
            last_seq=rows[-1][0],
            tx_count=len(rows),
            merkle_root=merkle_root([digest for _, digest in rows]),
            last_hash=rows[-1][1],
        )


def _maybe_schedule_checkpoint(seq: int) -> None:
    every = settings.MF_LEDGER_CHECKPOINT_EVERY
    if every and seq % every == 0:
        from ledger.tasks import checkpoint_create_task

        transaction.on_commit(checkpoint_create_task.delay)
