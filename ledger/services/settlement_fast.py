"""Settlements on PostgreSQL, the hot path: the plain settlement (a new key, an open hold or a payer with funds,
accounts that exist) in one call of the ledger_settlement_post function (migrations/0003), a batch of them in one
call of ledger_settlement_post_many (migrations/0005). Each writes exactly what the engine's general path would
(the same legs, content and hash) or nothing, and then the caller takes the general path."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from ledger.calc.canonical import transaction_content_parts
from ledger.models import Transaction
from ledger.services.checkpoints import _maybe_schedule_checkpoint
from ledger.services.engine import _durable, _early_release_possible, _Plan, _retrying

_PG_SETTLE = "SELECT * FROM ledger_settlement_post(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_SETTLE_MANY = (
    "SELECT * FROM ledger_settlement_post_many(%s, %s, %s, %s, %s::timestamptz[], %s, %s, %s::integer[], "
    "%s::bigint[], %s::text[], %s::bigint[], %s::integer[], %s::bigint[], %s::bigint[], %s)"
)


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
    held: bool = False  # part of it goes to pending earnings: the general path only


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
