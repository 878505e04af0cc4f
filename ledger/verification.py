"""Recomputes every ledger invariant from the stored rows and names the first breach (read-only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db.models import Max, Q, Sum

from common.merkle import merkle_root
from ledger.calc.anchors import AnchorError, anchors_check, anchors_read, load_public_key
from ledger.calc.canonical import GENESIS_HASH, chain_hash, transaction_content
from ledger.models import Account, Bond, ChainHead, Checkpoint, Hold, PendingEarning, Posting, Transaction, Withdrawal

CHUNK = 2000


class LedgerBreach(Exception):
    """The first invariant found broken, in words."""


@dataclass
class VerifyReport:
    transactions: int
    postings: int
    accounts: int
    checkpoints: int
    last_seq: int
    head_hash: str


def _tx_content(tx: dict, postings: list[tuple[int, int]]) -> bytes:
    return transaction_content(
        key=tx["idempotency_key"],
        kind=tx["kind"],
        status=tx["status"],
        memo=tx["memo"],
        metadata=tx["metadata"],
        request_hash=tx["request_hash"],
        created_at=tx["created_at"].isoformat(),
        postings=postings,
    )


def _verify_chain(since_seq: int) -> tuple[int, int, int, str]:
    """Walks transactions in seq order: links, hashes, and each transaction's postings."""
    if since_seq:
        start = Transaction.objects.filter(seq=since_seq).values_list("hash", flat=True).first()
        if start is None:
            raise LedgerBreach(f"transaction seq {since_seq} (the starting point) is missing")
        expected_prev, expected_seq = start, since_seq + 1
    else:
        expected_prev, expected_seq = GENESIS_HASH, 1
    count = postings_count = 0
    fields = ("id", "seq", "idempotency_key", "kind", "status", "memo", "metadata", "request_hash", "created_at")
    fields = (*fields, "prev_hash", "hash")
    last_seq = expected_seq - 1
    while True:
        txs = list(Transaction.objects.filter(seq__gte=expected_seq).order_by("seq").values(*fields)[:CHUNK])
        if not txs:
            break
        by_tx: dict[int, list[tuple[int, int]]] = {tx["id"]: [] for tx in txs}
        for tx_id, account, amount in Posting.objects.filter(transaction_id__in=by_tx).values_list(
            "transaction_id", "account_id", "amount"
        ):
            by_tx[tx_id].append((account, amount))
        for tx in txs:
            name = f"transaction {tx['id']} (seq {tx['seq']}, key {tx['idempotency_key']!r})"
            if tx["seq"] != expected_seq:
                raise LedgerBreach(f"seq {expected_seq} is missing from the chain (next is {tx['seq']})")
            if tx["prev_hash"] != expected_prev:
                raise LedgerBreach(f"{name}: its previous hash does not match the transaction before it")
            postings = by_tx[tx["id"]]
            if chain_hash(expected_prev, _tx_content(tx, postings)) != tx["hash"]:
                raise LedgerBreach(f"{name}: its hash does not match its content or postings (altered)")
            if tx["status"] == Transaction.Status.POSTED:
                if len(postings) < 2:
                    raise LedgerBreach(f"{name}: a posted transaction with fewer than two postings")
                if sum(amount for _, amount in postings) != 0:
                    raise LedgerBreach(f"{name}: postings sum to {sum(a for _, a in postings)}, not 0")
                if any(amount == 0 for _, amount in postings):
                    raise LedgerBreach(f"{name}: a posting of zero")
            elif postings:
                raise LedgerBreach(f"{name}: a rejected transaction has postings")
            expected_prev, expected_seq = tx["hash"], tx["seq"] + 1
            last_seq = tx["seq"]
            count += 1
            postings_count += len(postings)
    return count, postings_count, last_seq, expected_prev


def _verify_head(last_seq: int, last_hash: str) -> None:
    head = ChainHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    if (head_seq, head_hash) != (last_seq, last_hash):
        raise LedgerBreach(f"the chain head says seq {head_seq} but the last transaction is seq {last_seq}")


def _verify_balances() -> int:
    accounts = Account.objects.annotate(total=Sum("postings__amount")).order_by("pk")
    count = 0
    for account in accounts.values("id", "role", "balance", "allow_negative", "total"):
        total = account["total"] or 0
        if account["balance"] != total:
            raise LedgerBreach(
                f"account {account['id']} ({account['role']}): balance {account['balance']} "
                f"but its postings sum to {total}"
            )
        if account["balance"] < 0 and not account["allow_negative"]:
            raise LedgerBreach(f"account {account['id']} ({account['role']}) is below zero: {account['balance']}")
        count += 1
    grand = Posting.objects.aggregate(total=Sum("amount"))["total"] or 0
    if grand != 0:
        raise LedgerBreach(f"all postings together sum to {grand}, not 0 (credit created or lost)")
    return count


def _verify_open_items() -> None:
    """Fees clearing holds exactly the open holds; withdrawals pending exactly the open withdrawals."""
    for account in Account.objects.filter(role=Account.Role.FEES_CLEARING):
        held = Hold.objects.filter(clearing=account, status=Hold.Status.HELD).aggregate(t=Sum("amount"))["t"] or 0
        if account.balance != held:
            raise LedgerBreach(f"fees clearing account {account.pk} holds {account.balance} but open holds are {held}")
    pending_total = Account.objects.filter(role=Account.Role.WITHDRAWALS_PENDING).aggregate(t=Sum("balance"))["t"] or 0
    requested = Withdrawal.objects.filter(status=Withdrawal.Status.REQUESTED).aggregate(t=Sum("amount"))["t"] or 0
    if pending_total != requested:
        raise LedgerBreach(f"withdrawals pending holds {pending_total} but open withdrawals are {requested}")
    for role, model, status in (
        (Account.Role.EARNINGS_PENDING, PendingEarning, PendingEarning.Status.PENDING),
        (Account.Role.BONDS_HELD, Bond, Bond.Status.HELD),
    ):
        in_account = Account.objects.filter(role=role).aggregate(t=Sum("balance"))["t"] or 0
        still_open = model.objects.filter(status=status).aggregate(t=Sum("amount"))["t"] or 0
        if in_account != still_open:
            raise LedgerBreach(f"{role} holds {in_account} but the open {model._meta.verbose_name}s are {still_open}")


def _verify_pools() -> None:
    """The datanet pools hold exactly the forfeited earnings and slashed bonds (nothing else is paid into them and
    nothing leaves them yet), and each forfeit or slash went to the pool of its own datanet (or, before pools were
    kept per datanet, to the one shared pool account without a datanet)."""
    pools = dict(Account.objects.filter(role=Account.Role.DATANET_POOL).values_list("id", "datanet_id"))
    in_pools = Account.objects.filter(pk__in=pools).aggregate(t=Sum("balance"))["t"] or 0
    closes: dict[int, tuple[str, int]] = {}
    for model, status in ((PendingEarning, PendingEarning.Status.FORFEITED), (Bond, Bond.Status.SLASHED)):
        for key, tx_id, datanet_id in model.objects.filter(status=status).values_list(
            "key", "close_tx_id", "datanet_id"
        ):
            closes[tx_id] = (f"{model._meta.verbose_name} {key!r}", datanet_id)
    closed = (
        PendingEarning.objects.filter(status=PendingEarning.Status.FORFEITED).aggregate(t=Sum("amount"))["t"] or 0
    ) + (Bond.objects.filter(status=Bond.Status.SLASHED).aggregate(t=Sum("amount"))["t"] or 0)
    if in_pools != closed:
        raise LedgerBreach(f"the datanet pools hold {in_pools} but forfeited earnings and slashed bonds are {closed}")
    for tx_id, account_id in Posting.objects.filter(transaction_id__in=closes, amount__gt=0).values_list(
        "transaction_id", "account_id"
    ):
        what, datanet_id = closes[tx_id]
        if account_id not in pools:
            raise LedgerBreach(f"{what} (datanet {datanet_id}) was paid to account {account_id}, not to a pool")
        if pools[account_id] is not None and pools[account_id] != datanet_id:
            raise LedgerBreach(
                f"{what} of datanet {datanet_id} was paid to the pool of datanet {pools[account_id]} "
                f"(account {account_id})"
            )


def _verify_checkpoints() -> int:
    expected_first = 1
    count = 0
    for checkpoint in Checkpoint.objects.order_by("last_seq"):
        if checkpoint.first_seq != expected_first:
            raise LedgerBreach(f"checkpoint {checkpoint.pk} starts at seq {checkpoint.first_seq}, not {expected_first}")
        hashes = list(
            Transaction.objects.filter(seq__gte=checkpoint.first_seq, seq__lte=checkpoint.last_seq)
            .order_by("seq")
            .values_list("hash", flat=True)
        )
        if len(hashes) != checkpoint.tx_count or merkle_root(hashes) != checkpoint.merkle_root:
            raise LedgerBreach(
                f"checkpoint {checkpoint.pk} (seq {checkpoint.first_seq}..{checkpoint.last_seq}): Merkle root differs"
            )
        if hashes[-1] != checkpoint.last_hash:
            raise LedgerBreach(f"checkpoint {checkpoint.pk}: the last hash differs")
        expected_first = checkpoint.last_seq + 1
        count += 1
    return count


def ledger_verify(*, since_seq: int = 0) -> VerifyReport:
    """Raises LedgerBreach naming the first broken invariant; returns counts when all hold.

    since_seq > 0 checks the chain only after that transaction (balances and checkpoints are always checked in
    full); tests use it to stay fast."""
    count, postings, last_seq, last_hash = _verify_chain(since_seq)
    _verify_head(last_seq, last_hash)
    accounts = _verify_balances()
    _verify_open_items()
    _verify_pools()
    checkpoints = _verify_checkpoints() if not since_seq else Checkpoint.objects.count()
    return VerifyReport(count, postings, accounts, checkpoints, last_seq, last_hash)


def _trusted_key(public_key_path: Path | None):
    """The key anchors must be signed with: --public-key, else the public half of this machine's signing key. Never
    the key written in the anchors file itself: whoever rewrote the file could have signed it with their own."""
    if public_key_path is not None:
        return load_public_key(public_key_path)
    if Path(settings.MF_LEDGER_ANCHOR_KEY).exists():
        return load_public_key(settings.MF_LEDGER_ANCHOR_KEY)
    raise AnchorError(
        f"no signing key at {settings.MF_LEDGER_ANCHOR_KEY} (MF_LEDGER_ANCHOR_KEY) to check the anchors with; "
        "give the public key with --public-key"
    )


def anchors_verify(*, path: Path, public_key_path: Path | None = None) -> int:
    """Checks every anchor in the file (sequence, link to the one before, signature by the trusted key), then that
    the database's chain still reproduces each signed root. Raises LedgerBreach naming the first failure; returns
    how many anchors were checked. Run after `ledger_verify` (which recomputes every chain hash from the rows)."""
    try:
        anchors = anchors_read(path)
        key = _trusted_key(public_key_path)
        anchors_check(anchors, key)
    except AnchorError as error:
        raise LedgerBreach(f"anchors: {error}") from None
    newest = Transaction.objects.aggregate(m=Max("seq"))["m"] or 0
    for anchor in anchors:
        name = f"anchor {anchor['sequence']}"
        row = Transaction.objects.filter(seq=anchor["last_seq"]).values("id", "hash").first()
        if row is None:
            raise LedgerBreach(
                f"{name} signed the chain up to transaction seq {anchor['last_seq']}, but the database's chain ends "
                f"at seq {newest}: anchored transactions were removed"
            )
        if row["hash"] != anchor["root"] or row["id"] != anchor["last_tx_id"]:
            raise LedgerBreach(
                f"{name}: the database's chain at seq {anchor['last_seq']} no longer gives the signed root "
                f"{anchor['root']}: history before it was rewritten"
            )
    return len(anchors)


def user_visible(tx_id: int, user) -> bool:
    return Posting.objects.filter(Q(transaction_id=tx_id) & Q(account__owner=user)).exists()
