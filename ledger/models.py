"""The rewards ledger: accounts, immutable transactions and postings (double entry, integer micro-units),
the hash-chain head, Merkle checkpoints, holds and withdrawals.

Balances are kept on the account row and always equal the sum of its postings: on PostgreSQL a trigger on
posting insert maintains them (so even a hand-written INSERT cannot leave them out of step), on SQLite the
service does. See migrations/0002 for every guarantee the database itself enforces on PostgreSQL."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from ledger.calc.canonical import GENESIS_HASH
from ledger.calc.money import format_credits

CURRENCY = "CRD"


class Account(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User wallet"
        PLATFORM = "platform", "Platform revenue"
        FEES_CLEARING = "fees_clearing", "Fees held for settlement"
        WITHDRAWALS_PENDING = "withdrawals_pending", "Withdrawals awaiting payout"
        ISSUANCE = "issuance", "Credit issued (grants)"
        PAID_OUT = "paid_out", "Withdrawals paid out"
        EARNINGS_PENDING = "earnings_pending", "Earnings in their review period"
        BONDS_HELD = "bonds_held", "Contributors' bonds held"
        # One account per datanet (datanet_id set). The one without a datanet_id is where forfeits and slashes went
        # before pools were kept per datanet; nothing is paid into it any more.
        DATANET_POOL = "datanet_pool", "Datanet pools (forfeited earnings, slashed bonds)"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_accounts"
    )
    role = models.CharField(max_length=32, choices=Role.choices, default=Role.USER)
    # System accounts that every settlement touches are split into shards so concurrent settlements do not queue
    # on one row lock; a role's balance is the sum over its shards.
    shard = models.PositiveSmallIntegerField(default=0)
    # A datanet's pool (role datanet_pool): the datanet it belongs to, a row of the datanets app (the ledger imports
    # no other app, so a plain number). One pool per datanet, created on first use; no other account has one.
    datanet_id = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=8, default=CURRENCY)
    allow_negative = models.BooleanField(default=False)
    balance = models.BigIntegerField(default=0, help_text="Micro-units; always the sum of this account's postings.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "currency"], condition=Q(owner__isnull=False), name="ledger_one_wallet_per_user"
            ),
            models.UniqueConstraint(
                fields=["role", "shard", "currency"],
                condition=Q(owner__isnull=True, datanet_id__isnull=True),
                name="ledger_one_system_shard",
            ),
            models.UniqueConstraint(
                fields=["datanet_id", "currency"], condition=Q(datanet_id__isnull=False), name="ledger_one_datanet_pool"
            ),
            models.CheckConstraint(
                condition=Q(datanet_id__isnull=True) | (Q(role="datanet_pool") & Q(owner__isnull=True)),
                name="ledger_datanet_id_only_on_pools",
            ),
            models.CheckConstraint(
                condition=(Q(role="user") & Q(owner__isnull=False)) | (~Q(role="user") & Q(owner__isnull=True)),
                name="ledger_user_accounts_have_owner",
            ),
            models.CheckConstraint(
                condition=~Q(role="user") | Q(allow_negative=False), name="ledger_user_accounts_never_negative"
            ),
            models.CheckConstraint(condition=Q(allow_negative=True) | Q(balance__gte=0), name="ledger_balance_gte_0"),
        ]

    def __str__(self) -> str:
        if self.owner_id:
            return f"wallet of user {self.owner_id}"
        if self.datanet_id is not None:
            return f"pool of datanet {self.datanet_id}"
        return f"{self.get_role_display()} #{self.shard}"

    @property
    def balance_credits(self) -> str:
        return format_credits(self.balance)


class Transaction(models.Model):
    """One atomic movement of credit. Never updated or deleted: corrections are new, reversing transactions.

    A rejected transaction (the payer lacked credit) has no postings; it is kept so that its idempotency key
    stays failed instead of succeeding later."""

    class Kind(models.TextChoices):
        TRANSFER = "transfer", "Transfer"
        GRANT = "grant", "Credit grant"
        SIGNUP_GRANT = "signup_grant", "Welcome credit"
        HOLD = "hold", "Fee reserved"
        HOLD_RELEASE = "hold_release", "Fee reservation released"
        SETTLEMENT = "settlement", "Inference fee settled"
        WITHDRAWAL_REQUEST = "withdrawal_request", "Withdrawal requested"
        WITHDRAWAL_COMPLETE = "withdrawal_complete", "Withdrawal paid out"
        WITHDRAWAL_CANCEL = "withdrawal_cancel", "Withdrawal cancelled"
        EARNING_RELEASE = "earning_release", "Earnings became available"
        EARNING_FORFEIT = "earning_forfeit", "Earnings forfeited"
        BOND_POST = "bond_post", "Bond posted"
        BOND_RETURN = "bond_return", "Bond returned"
        BOND_SLASH = "bond_slash", "Bond forfeited"

    class Status(models.TextChoices):
        POSTED = "posted", "Posted"
        REJECTED = "rejected", "Rejected: not enough credit"

    idempotency_key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.POSTED)
    memo = models.CharField(max_length=500, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    request_hash = models.CharField(max_length=64)
    # Position in the hash chain: assigned while holding the chain-head row lock, so seq order is commit order.
    seq = models.BigIntegerField(unique=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} ({self.idempotency_key})"


class CreditGrant(Transaction):
    """Transactions of the grant kind, seen as the grants staff made (the audit list in the admin). A proxy: a grant
    is an ordinary ledger transaction, never a row of its own. Its Meta carries the permission to grant."""

    class Meta:
        proxy = True
        ordering = ["-seq"]
        verbose_name = "credit grant"
        permissions = [("grant_credit", "Can grant credit to a user")]

    def __str__(self) -> str:
        return f"grant #{self.pk}"


class Posting(models.Model):
    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="postings")
    # No index of its own: ledger_posting_acct_tx (account, transaction) serves lookups by account, and one index
    # fewer is one write fewer per posting.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="postings", db_index=False)
    amount = models.BigIntegerField(help_text="Signed micro-units: positive credits the account, negative debits it.")

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="ledger_posting_amount_nonzero")]
        indexes = [models.Index(fields=["account", "transaction"], name="ledger_posting_acct_tx")]

    def __str__(self) -> str:
        return f"{format_credits(self.amount)} to account {self.account_id}"


class ChainHead(models.Model):
    """A single row (id=1): the last sequence number and hash. Locking it orders the chain."""

    seq = models.BigIntegerField(default=0)
    prev_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"chain head at {self.seq}"


class Checkpoint(models.Model):
    """A Merkle root over the hashes of transactions first_seq..last_seq, which follow the previous checkpoint."""

    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField(unique=True)
    tx_count = models.PositiveIntegerField()
    merkle_root = models.CharField(max_length=64)
    last_hash = models.CharField(max_length=64, help_text="Chain hash of transaction last_seq.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_seq"]
        constraints = [
            models.CheckConstraint(condition=Q(last_seq__gte=models.F("first_seq")), name="ledger_ckpt_range")
        ]

    def __str__(self) -> str:
        return f"checkpoint {self.first_seq}..{self.last_seq}"


class Hold(models.Model):
    """Credit reserved from a payer into fees clearing until it is settled (or released)."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    key = models.CharField(max_length=200, unique=True)
    payer = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    clearing = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    amount = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.HELD)
    hold_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, related_name="+")
    close_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_hold_amount_positive")]

    def __str__(self) -> str:
        return f"hold {self.key} ({self.status})"


class Withdrawal(models.Model):
    """Two phases: requested (credit moved to withdrawals pending), then completed or cancelled by staff."""

    class Status(models.TextChoices):
        REQUESTED = "requested", "Waiting for payout"
        COMPLETED = "completed", "Paid out"
        CANCELLED = "cancelled", "Cancelled (credit returned)"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="withdrawals")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="withdrawals")
    amount = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED)
    request_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, related_name="+")
    close_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reason = models.CharField(max_length=500, blank=True, default="")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_withdrawal_amount_positive")]

    def __str__(self) -> str:
        return f"withdrawal {self.pk} of {format_credits(self.amount)} ({self.status})"

    @property
    def amount_credits(self) -> str:
        return format_credits(self.amount)


class PendingEarning(models.Model):
    """A contributor's earnings from one contribution in one settlement, held in an earnings-pending shard until
    `available_at` (the datanet's holding period), then released to the wallet or, when a curator confirms the
    contribution harmful, forfeited to the datanet's pool. Both are new ledger transactions; this row only records
    which one closed it. `datanet_id` and `contribution_id` name rows of the datanets app (the ledger imports no
    other app, so they are plain numbers)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RELEASED = "released", "Available"
        FORFEITED = "forfeited", "Forfeited"

    key = models.CharField(max_length=240, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pending_earnings")
    wallet = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    pending = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    amount = models.BigIntegerField()
    datanet_id = models.BigIntegerField()
    contribution_id = models.BigIntegerField(db_index=True)
    available_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    pend_tx = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="+")
    close_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["available_at", "id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_earning_amount_positive")]
        indexes = [
            models.Index(fields=["available_at"], condition=Q(status="pending"), name="ledger_earning_due"),
            models.Index(fields=["user", "status"], name="ledger_earning_user"),
        ]

    def __str__(self) -> str:
        return f"earning {self.key} ({self.status})"

    @property
    def amount_credits(self) -> str:
        return format_credits(self.amount)


class Bond(models.Model):
    """A stake a contributor posts to upload to a datanet that asks for one: held from the wallet at upload, returned
    when the contribution is accepted, slashed to the datanet's pool when it is rejected as spam or confirmed
    harmful (each a ledger transaction)."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        RETURNED = "returned", "Returned"
        SLASHED = "slashed", "Forfeited"

    key = models.CharField(max_length=200, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="bonds")
    wallet = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    held = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    amount = models.BigIntegerField()
    datanet_id = models.BigIntegerField()
    contribution_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.HELD)
    hold_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, related_name="+")
    close_tx = models.OneToOneField(Transaction, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_bond_amount_positive")]

    def __str__(self) -> str:
        return f"bond {self.key} ({self.status})"

    @property
    def amount_credits(self) -> str:
        return format_credits(self.amount)
