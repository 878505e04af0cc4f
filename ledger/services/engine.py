"""The ledger's posting engine. Every money movement goes through `_commit`, which

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

Settlements, the hot path, take a shorter road on PostgreSQL (`settlement_fast`, migrations/0003 and 0005): steps
1-4 in one call of the ledger_settlement_post function, with the locks released before the WAL flush and the
flush awaited before we answer. Anything that is not the plain case falls back to `_commit`, unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from common.retry import full_jitter, retry
from ledger.calc.canonical import GENESIS_HASH, canonical_json, chain_hash, jsonable, sha256_hex, transaction_content
from ledger.models import Account, ChainHead, Posting, Transaction
from ledger.services.checkpoints import _maybe_schedule_checkpoint
from ledger.services.errors import IdempotencyConflict, InsufficientFunds, InvalidRequest, LedgerError

MAX_ATTEMPTS = 8
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_BACKOFF = full_jitter(0.002)  # after the n-th failed attempt, a random wait of up to 2 ms * 2**n


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


def _retryable_error(exc: Exception) -> bool:
    return isinstance(exc, (OperationalError, IntegrityError)) and _is_retryable(exc)


def _retrying(attempt: Callable[[], T], *, outermost: bool) -> T:
    """Runs `attempt` again (after a short random wait) when it fails on a deadlock or serialization failure, up to
    MAX_ATTEMPTS times; only when it is the whole database transaction (`outermost`), since a caller's transaction
    that failed cannot be retried from inside."""
    return retry(attempt, retryable=_retryable_error, attempts=MAX_ATTEMPTS if outermost else 1, delay=_BACKOFF)


def _commit(*, key: str, request_hash: str, build: Callable[[], _Plan]) -> Transaction:
    _check_key(key)
    outermost = not connection.in_atomic_block
    early = outermost and _early_release_possible()

    def attempt() -> Transaction:
        with transaction.atomic(durable=outermost):
            tx = _existing(key, request_hash)
            if tx is None:
                try:
                    plan = build()
                except LedgerError:
                    # build() locks what it spends (a hold, a bond, a pending earning): a concurrent request with
                    # this key may have spent it and committed while we waited for the lock. Then this request is
                    # a replay of that one, not an error; the lock wait makes its row visible to a new query.
                    tx = _existing(key, request_hash)
                    if tx is None:
                        raise
                    return tx
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


def _pool_account(datanet_id: int) -> int:
    """The id of the datanet's pool account (role datanet_pool), created on first use. Call it inside the plan's
    database transaction, then lock the id with the others through `_lock_accounts(ids=...)` (the id order keeps
    the lock order). Two first uses at once create one account: the loser's insert waits for the winner and does
    nothing."""
    if isinstance(datanet_id, bool) or not isinstance(datanet_id, int) or datanet_id <= 0:
        raise InvalidRequest("A datanet pool needs the datanet's id (a positive whole number).")
    found = Account.objects.filter(role=Account.Role.DATANET_POOL, datanet_id=datanet_id).values_list("pk", flat=True)
    pk = found.first()
    if pk is None:
        Account.objects.bulk_create(
            [Account(role=Account.Role.DATANET_POOL, datanet_id=datanet_id)], ignore_conflicts=True
        )
        pk = found.first()
    if pk is None:
        raise InvalidRequest(f"Could not create the pool of datanet {datanet_id}.")
    return pk


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


def _early_release_possible() -> bool:
    return connection.vendor == "postgresql" and settings.MF_LEDGER_EARLY_RELEASE


def _durable() -> None:
    """Returns once everything this session committed is on disk: a transaction that writes WAL (a one-line
    transactional WAL message, no table) and commits with synchronous_commit on flushes the WAL up to its own
    commit record, which lies after ours. Concurrent sessions' flushes are combined by PostgreSQL (group commit),
    and no ledger lock is held while waiting."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_logical_emit_message(true, 'ledger-durable', '')")
