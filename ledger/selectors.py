"""Ledger reads, each scoped to the user who asks."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Count, F, IntegerField, Min, OuterRef, QuerySet, Subquery, Sum, Window
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from common.merkle import inclusion_proof, verify_inclusion
from ledger.calc.anchors import SIGNATURE_ALGORITHM, anchor_latest
from ledger.calc.canonical import GENESIS_HASH, chain_hash, transaction_content
from ledger.calc.split import sub_part_amounts, to_fraction
from ledger.calc.statement import EARNINGS, LABELS, settlement_roles
from ledger.models import CURRENCY, Account, Checkpoint, CreditGrant, PendingEarning, Posting, Transaction, Withdrawal

EARNINGS_CACHE_SECONDS = 3600
AUTOMATIC_MEMOS = {
    Transaction.Kind.SETTLEMENT, Transaction.Kind.HOLD, Transaction.Kind.HOLD_RELEASE, Transaction.Kind.SIGNUP_GRANT
}  # fmt: skip


def wallet_summary(*, user) -> dict:
    """available: what the user can spend or withdraw now; balance: that plus withdrawals waiting for payout;
    earnings_pending: earnings in their review period (not in the balance) and the date the next becomes available.
    One query (the wallet row with its open withdrawals and pending earnings as subqueries)."""
    withdrawals = (
        Withdrawal.objects.filter(account=OuterRef("pk"), status=Withdrawal.Status.REQUESTED)
        .values("account")
        .annotate(t=Sum("amount"))
        .values("t")
    )
    held = PendingEarning.objects.filter(wallet=OuterRef("pk"), status=PendingEarning.Status.PENDING).values("wallet")
    row = (
        Account.objects.filter(owner=user)
        .annotate(
            open_withdrawals=Subquery(withdrawals),
            held=Subquery(held.annotate(t=Sum("amount")).values("t")),
            next_release=Subquery(held.annotate(t=Min("available_at")).values("t")),
        )
        .values_list("balance", "open_withdrawals", "held", "next_release")
        .first()
    )
    available, pending, earnings, next_release = row if row is not None else (0, 0, 0, None)
    return {
        "currency": CURRENCY,
        "balance": available + (pending or 0),
        "available": available,
        "pending": pending or 0,
        "earnings_pending": earnings or 0,
        "earnings_next_release_at": next_release,
    }


def earnings_under_review(*, user, limit: int = 50) -> dict:
    """The user's earnings in their review period (soonest first) and those forfeited (newest first), with the
    dates and reasons the wallet shows. One query."""
    rows = list(
        PendingEarning.objects.filter(
            user=user, status__in=[PendingEarning.Status.PENDING, PendingEarning.Status.FORFEITED]
        )
        .select_related("pend_tx")
        .order_by("available_at", "pk")[: 2 * limit]
    )
    pending = [e for e in rows if e.status == PendingEarning.Status.PENDING][:limit]
    forfeited = sorted((e for e in rows if e.status == PendingEarning.Status.FORFEITED), key=lambda e: e.closed_at)
    return {"pending": pending, "forfeited": forfeited[::-1][:limit]}


def statement(
    *, user, kind: str | None = None, date_from: date | None = None, date_to: date | None = None
) -> QuerySet[Posting]:
    """The user's postings, newest first. Give a page of them to `statement_running_balances` for the wallet
    balance right after each (computed over all of the user's postings, so filters never change it)."""
    rows = Posting.objects.filter(account__owner=user).select_related("transaction").annotate(seq=F("transaction__seq"))
    if kind:
        rows = rows.filter(transaction__kind=kind)
    tz = timezone.get_current_timezone()
    if date_from:
        rows = rows.filter(transaction__created_at__gte=datetime.combine(date_from, time.min, tzinfo=tz))
    if date_to:
        rows = rows.filter(
            transaction__created_at__lt=datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=tz)
        )
    return rows.order_by("-transaction__seq", "-id")


def statement_with_running_balances(rows: QuerySet[Posting]) -> QuerySet[Posting]:
    """`running_balance` on every row by a window over all of the account's postings: for whole exports. A page
    is far cheaper with `statement_running_balances` (a window reads every posting the user ever had)."""
    return rows.annotate(running_balance=Window(Sum("amount"), order_by=[F("transaction__seq").asc(), F("id").asc()]))


def statement_running_balances(rows) -> list[Posting]:
    """Sets `running_balance` (the wallet balance right after it) on each posting of one page of `statement`.

    Two small queries whatever the history's length: the balance after the page's newest transaction is the account
    balance less the postings of later transactions (one statement, so one snapshot), and the account's postings
    from the page's newest transaction down to its oldest are read as (id, amount) pairs to step back from it (a
    filtered page steps over the postings its filter hides). Both are ranges on the transaction sequence."""
    rows = list(rows)
    if not rows:
        return rows
    top_seq, bottom_seq = rows[0].transaction.seq, rows[-1].transaction.seq
    account_id = rows[0].account_id
    later = (
        Posting.objects.filter(account_id=OuterRef("pk"), transaction__seq__gt=top_seq)
        .values("account_id")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    balance = (
        Account.objects.filter(pk=account_id)
        .annotate(after_top=F("balance") - Coalesce(Subquery(later), 0))
        .values_list("after_top", flat=True)
        .get()
    )
    span = (
        Posting.objects.filter(account_id=account_id, transaction__seq__lte=top_seq, transaction__seq__gte=bottom_seq)
        .order_by("-transaction__seq", "-id")
        .values_list("id", "amount")
    )
    after = {}
    for posting_id, amount in span:
        after[posting_id] = balance
        balance -= amount
    for row in rows:
        row.running_balance = after[row.id]
    return rows


def _history_mark(user) -> int | None:
    """The chain position (seq) of the newest transaction the user took part in: a key for caches of sums over their
    history. Seq, not id: seq is assigned under the chain-head lock held until commit, so a transaction that commits
    later always has a higher seq (ids are taken at insert and can commit out of order)."""
    return (
        Posting.objects.filter(account__owner=user)
        .order_by("-transaction__seq")
        .values_list("transaction__seq", flat=True)
        .first()
    )


def statement_size(*, user) -> int:
    """How many postings the user's whole (unfiltered) statement has, for its page numbers. Cached until the user's
    next posting: counting 100k postings on every wallet view costs tens of milliseconds."""
    key = f"ledger:statement-size:{user.pk}:{_history_mark(user)}"
    size = cache.get(key)
    if size is None:
        size = statement(user=user).count()
        cache.set(key, size, EARNINGS_CACHE_SECONDS)
    return size


def _labels(metadata: dict, user_id: int) -> tuple[str, str]:
    model = str(metadata.get("model") or "unlabelled")
    datanets = metadata.get("datanets")
    if isinstance(datanets, dict) and str(user_id) in datanets:
        datanet = str(datanets[str(user_id)])
    else:
        datanet = str(metadata.get("datanet") or "unlabelled")
    return model, datanet


def earnings(*, user, days: int = 30) -> dict:
    """Settlement income over the last `days`: totals by model, by datanet, and per day (micro-units).

    The ledger knows nothing of models or datanets: settlement callers put labels in the transaction metadata
    ("model", and "datanet" or "datanets": {user id: label})."""
    # Cached until the user's next posting (its seq is in the key) or the next day; the sums read every settlement
    # of the period, which is thousands of rows for a busy contributor.
    key = f"ledger:earnings:{user.pk}:{days}:{_history_mark(user)}:{timezone.localdate().isoformat()}"
    cached = cache.get(key)
    if cached is None:
        cached = _earnings(user=user, days=days)
        cache.set(key, cached, EARNINGS_CACHE_SECONDS)
    return cached


def _earnings(*, user, days: int) -> dict:
    """Only earnings: the owner's and the contributors' shares of settled fees (ledger.calc.statement), never the
    refund of an unused reservation that a caller gets back in the same transaction."""
    since = timezone.now() - timedelta(days=days)
    rows = Posting.objects.filter(
        account__owner=user,
        amount__gt=0,
        transaction__kind=Transaction.Kind.SETTLEMENT,
        transaction__created_at__gte=since,
    ).values_list("transaction_id", "amount", "transaction__metadata", "transaction__created_at")
    by_tx: dict[int, list] = defaultdict(list)
    for tx_id, amount, metadata, created_at in rows:
        by_tx[tx_id].append((amount, metadata, created_at))
    by_model: dict[str, int] = defaultdict(int)
    by_datanet: dict[str, int] = defaultdict(int)
    by_day: dict[str, int] = defaultdict(int)
    for postings in by_tx.values():
        metadata, created_at = postings[0][1], postings[0][2]
        roles = settlement_roles(metadata, user.pk, [amount for amount, _, _ in postings])
        for (amount, _, _), role in zip(postings, roles, strict=True):
            if role not in EARNINGS:
                continue
            model, datanet = _labels(metadata, user.pk)
            by_model[model] += amount
            by_datanet[datanet] += amount
            by_day[timezone.localtime(created_at).date().isoformat()] += amount
    ordered = lambda d: dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))  # noqa: E731
    return {"by_model": ordered(by_model), "by_datanet": ordered(by_datanet), "by_day": dict(sorted(by_day.items()))}


def statement_describe(rows, *, user_id: int) -> list[Posting]:
    """Sets `label` (what the line is, in words) and `role` on each posting of a page of the user's statement: in a
    settlement, the owner's share, the contributor's share, the refund of an unused reservation or the fee paid."""
    rows = list(rows)
    settlements: dict[int, list[Posting]] = defaultdict(list)
    for row in rows:
        kind = row.transaction.kind
        row.role = kind
        row.label = LABELS.get(kind) or row.transaction.get_kind_display()
        # A person's own words (a grant's reason, a transfer's note), not the memos the answer flow writes itself.
        row.note = "" if kind in AUTOMATIC_MEMOS else row.transaction.memo
        if kind == Transaction.Kind.SETTLEMENT:
            settlements[row.transaction_id].append(row)
    for postings in settlements.values():
        roles = settlement_roles(postings[0].transaction.metadata, user_id, [p.amount for p in postings])
        for posting, role in zip(postings, roles, strict=True):
            posting.role, posting.label = role, LABELS[role]
    return rows


def withdrawals_for(*, user) -> QuerySet[Withdrawal]:
    return Withdrawal.objects.filter(user=user).order_by("-id")


def transaction_for(*, user, tx_id: int) -> Transaction:
    """A transaction the user took part in (staff: any). Raises Transaction.DoesNotExist otherwise."""
    if user.is_staff:
        return Transaction.objects.get(pk=tx_id)
    return Transaction.objects.filter(pk=tx_id, postings__account__owner=user).distinct().get()


def latest_anchor() -> dict | None:
    """The newest signed root of the chain (ledger/calc/anchors.py), which statements and proofs carry so a user
    keeps a copy signed outside the database; None before the first checkpoint (or if the file is unreadable)."""
    try:
        anchor = anchor_latest(settings.MF_LEDGER_ANCHORS_PATH)
    except (OSError, ValueError):
        return None
    return None if anchor is None else {**anchor, "signature_algorithm": SIGNATURE_ALGORITHM}


def transaction_proof(*, user, tx_id: int) -> dict:
    """Everything needed to check one transaction independently: its canonical content (hash = SHA-256(prev_hash
    bytes || content)), and, once checkpointed, a Merkle inclusion proof to the checkpoint's root (RFC 6962)."""
    tx = transaction_for(user=user, tx_id=tx_id)
    postings = list(Posting.objects.filter(transaction=tx).values_list("account_id", "amount"))
    content = transaction_content(
        key=tx.idempotency_key,
        kind=tx.kind,
        status=tx.status,
        memo=tx.memo,
        metadata=tx.metadata,
        request_hash=tx.request_hash,
        created_at=tx.created_at.isoformat(),
        postings=postings,
    )
    checkpoint = Checkpoint.objects.filter(first_seq__lte=tx.seq, last_seq__gte=tx.seq).first()
    proof = None
    if checkpoint is not None:
        hashes = list(
            Transaction.objects.filter(seq__gte=checkpoint.first_seq, seq__lte=checkpoint.last_seq)
            .order_by("seq")
            .values_list("hash", flat=True)
        )
        proof = inclusion_proof(hashes, tx.seq - checkpoint.first_seq)
    return {
        "transaction_id": tx.pk,
        "seq": tx.seq,
        "hash": tx.hash,
        "prev_hash": tx.prev_hash,
        "content": content.decode(),
        "hash_algorithm": "sha256(bytes.fromhex(prev_hash) + content.encode('utf-8'))",
        "checkpoint": checkpoint,
        "leaf_index": tx.seq - checkpoint.first_seq if checkpoint else None,
        "merkle_proof": proof,
        "merkle_algorithm": "RFC 6962: leaf = sha256(0x00 || hash), node = sha256(0x01 || left || right)",
        "anchor": latest_anchor(),
    }


def transaction_receipt(*, user, tx_id: int) -> dict:
    """One transaction as a receipt for a person: what it was, when, the user's lines in it (labelled as on the
    statement), the settlement's split if it is one, and the checks re-done now: the content still gives the recorded
    fingerprint, the fingerprint before it is the previous transaction's, and (once checkpointed) the Merkle path
    leads to the checkpoint's root. Raises Transaction.DoesNotExist like `transaction_for`."""
    proof = transaction_proof(user=user, tx_id=tx_id)
    tx = Transaction.objects.get(pk=proof["transaction_id"])
    lines = statement_describe(
        Posting.objects.filter(transaction=tx, account__owner=user).select_related("transaction").order_by("id"),
        user_id=user.pk,
    )
    previous = Transaction.objects.filter(seq=tx.seq - 1).values_list("hash", flat=True).first()
    checks = {
        "content": chain_hash(tx.prev_hash, proof["content"].encode()) == tx.hash,
        "link": tx.prev_hash == (previous if previous is not None else GENESIS_HASH),
        "checkpoint": None,
    }
    if proof["checkpoint"] is not None:
        checks["checkpoint"] = verify_inclusion(tx.hash, proof["merkle_proof"], proof["checkpoint"].merkle_root)
    split = None
    if tx.kind == Transaction.Kind.SETTLEMENT:
        record = tx.metadata.get("settlement") or {}
        parts = record.get("split") or {}
        contributors = parts.get("contributors") or {}
        split = {
            "fee": record.get("fee_micro", 0),
            "owner": parts.get("owner", 0),
            "contributors": sum(contributors.values()),
            "contributor_count": len(contributors),
            "platform": parts.get("platform", 0),
            "fallback_reason": record.get("fallback_reason"),
            "retrieval": _retrieval_part(tx.metadata.get("retrieval"), record=record, paid=contributors),
        }
    return {
        "tx": tx,
        "lines": lines,
        "split": split,
        "checks": checks,
        "verified": checks["content"] and checks["link"] and checks["checkpoint"] is not False,
        "proof": proof,
    }


def _retrieval_part(retrieval: dict | None, *, record: dict, paid: dict) -> dict | None:
    """A settlement's retrieval part (the contributors of the rows an answer cited share a fraction of the
    contributors' part, recorded by the caller as {"part", "weights"}): {part (0..1), amount (to the cited rows'
    contributors), rest (the contributors' other pay), people}; None when the
    settlement has none or nothing was cited."""
    if not retrieval or not retrieval.get("weights"):
        return None
    part = to_fraction(retrieval["part"])
    shares = {int(uid): to_fraction(share) for uid, share in (record.get("shares") or {}).items()}
    sub = {int(uid): part * to_fraction(w) for uid, w in retrieval["weights"].items()}
    amounts = sub_part_amounts({int(uid): amount for uid, amount in paid.items()}, shares, sub)
    cited = sum(amounts.values())
    return {"part": float(part), "amount": cited, "rest": sum(paid.values()) - cited, "people": len(sub)}


def credit_grants() -> QuerySet[CreditGrant]:
    """Every staff credit grant, newest first, for the audit list: each row is the grant's ledger transaction with
    `granted_by_name` (the staff member who granted), `recipient_name` and `granted_micro` (the credited amount).
    A constant number of queries however many rows (subqueries, no per-row lookups)."""
    credited = Posting.objects.filter(transaction=OuterRef("pk"), amount__gt=0)
    users = get_user_model().objects
    return (
        CreditGrant.objects.filter(kind=Transaction.Kind.GRANT)
        .annotate(granted_by_id=Cast(KT("metadata__granted_by"), IntegerField()))
        .annotate(
            granted_by_name=Subquery(users.filter(pk=OuterRef("granted_by_id")).values("username")[:1]),
            recipient_name=Subquery(credited.values("account__owner__username")[:1]),
            granted_micro=Subquery(credited.values("amount")[:1]),
        )
        .order_by("-seq")
    )


def datanet_pool(*, datanet_id: int, recent: int = 10) -> dict:
    """A datanet's pool (callers check who may see it): its balance in micro-units, how much of it came from
    forfeited earnings and from slashed bonds (and how many of each), and the latest `recent` entries, newest first
    ({at, kind, what, amount, contribution_id, reason}). A datanet whose pool was never used has an empty one."""
    account = Account.objects.filter(role=Account.Role.DATANET_POOL, datanet_id=datanet_id).first()
    parts = {Transaction.Kind.EARNING_FORFEIT: [0, 0], Transaction.Kind.BOND_SLASH: [0, 0]}
    entries = []
    if account is not None:
        for kind, total, count in (
            Posting.objects.filter(account=account)
            .values_list("transaction__kind")
            .annotate(total=Sum("amount"), count=Count("id"))
            .order_by()
        ):
            parts[kind] = [total, count]
        for posting in (
            Posting.objects.filter(account=account).select_related("transaction").order_by("-transaction__seq")[:recent]
        ):
            tx = posting.transaction
            entries.append(
                {
                    "at": tx.created_at,
                    "kind": tx.kind,
                    "what": tx.get_kind_display(),
                    "amount": posting.amount,
                    "contribution_id": tx.metadata.get("contribution_id"),
                    "reason": tx.metadata.get("reason", ""),
                }
            )
    (forfeited, forfeits), (slashed, slashes) = (
        parts[Transaction.Kind.EARNING_FORFEIT],
        parts[Transaction.Kind.BOND_SLASH],
    )
    return {
        "datanet_id": datanet_id,
        "balance": account.balance if account is not None else 0,
        "forfeited": forfeited,
        "forfeits": forfeits,
        "slashed": slashed,
        "slashes": slashes,
        "entries": entries,
    }
