from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import Job
from datanets.ingest.screen import ACTIONS, DEFAULT_ACTIONS


class Tag(models.Model):
    name = models.SlugField(max_length=50, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def default_flag_actions() -> dict:
    return dict(DEFAULT_ACTIONS)


class Datanet(models.Model):
    """A community dataset. Rows keep their contributor forever; training always names a DatanetVersion."""

    class Kind(models.TextChoices):
        INSTRUCTION = "instruction", "Instructions (instruction, optional input, output)"
        CHAT = "chat", "Conversations (messages with roles)"
        TEXT = "text", "Plain text"

    class Visibility(models.TextChoices):
        PUBLIC = "public", "Public: anyone can see it and contribute"
        PRIVATE = "private", "Private: only the owner and curators"

    class Policy(models.TextChoices):
        OPEN = "open", "Open: clean contributions are accepted automatically"
        APPROVAL = "approval", "Approval: a curator reviews every contribution"

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    summary = models.CharField(max_length=300)
    description = models.TextField(blank=True, help_text="Markdown.")
    tags = models.ManyToManyField(Tag, blank=True, related_name="datanets")
    licence = models.CharField(max_length=100, default="CC-BY-4.0")
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PUBLIC)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.INSTRUCTION)
    policy = models.CharField(max_length=10, choices=Policy.choices, default=Policy.APPROVAL)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_datanets")
    curators = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="curated_datanets")
    holding_days = models.PositiveSmallIntegerField(
        default=0,
        help_text="Days a contributor's earnings from this datanet stay pending (a curator may still find the "
        "contribution harmful) before they can be withdrawn; 0: available at once.",
    )
    bond_micro = models.BigIntegerField(
        default=0,
        help_text="Credit (micro-units) a contributor stakes per upload: returned when it is accepted or rejected as "
        "not a fit, forfeited to the datanet's pool when it is rejected as spam or confirmed harmful; 0: no bond.",
    )
    flag_actions = models.JSONField(
        default=default_flag_actions, help_text=f"Flag kind -> one of {', '.join(ACTIONS)}, applied at upload."
    )
    idempotency_key = models.CharField(
        max_length=64, blank=True, default="", help_text="The creator's Idempotency-Key: same key, same datanet."
    )
    request_fingerprint = models.CharField(
        max_length=64, blank=True, default="", help_text="SHA-256 of the create request the key came with."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="datanet_idempotency",
            ),
            models.CheckConstraint(
                condition=Q(holding_days__lte=365) & Q(bond_micro__gte=0), name="datanet_holding_bond_bounds"
            ),
        ]

    def __str__(self) -> str:
        return self.name


def contribution_upload_to(instance, filename: str) -> str:
    # The stored name never comes from the user; the original name is kept (sanitised) in original_name.
    return f"contributions/{instance.datanet_id}/{instance.sha256[:2]}/{instance.sha256}.upload"


class Contribution(Job):
    """One uploaded file and its ingest job (message, started/heartbeat/finished come from core.models.Job)."""

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        VALIDATING = "validating", "Checking rows"
        NEEDS_REVIEW = "needs_review", "Waiting for review"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"

    class RejectedAs(models.TextChoices):
        """Why a curator rejected it; decides its bond: returned for not_a_fit, forfeited for spam and harmful."""

        NOT_A_FIT = "not_a_fit", "Not a fit for this datanet"
        SPAM = "spam", "Spam"
        HARMFUL = "harmful", "Confirmed harmful"

    # Grounds a curator may pick when rejecting (harmful comes from a confirmed finding, attribution.penalties).
    REJECT_CHOICES = (RejectedAs.NOT_A_FIT, RejectedAs.SPAM)
    BOND_FORFEITED_WHEN = (RejectedAs.SPAM, RejectedAs.HARMFUL, "")  # "": rejected before grounds were recorded

    FINISHED = (Status.NEEDS_REVIEW, Status.ACCEPTED, Status.REJECTED, Status.FAILED)

    datanet = models.ForeignKey(Datanet, on_delete=models.CASCADE, related_name="contributions")
    contributor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="contributions")
    file = models.FileField(upload_to=contribution_upload_to, max_length=300)
    original_name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    detected_format = models.CharField(max_length=20, blank=True)
    column_mapping = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADED, db_index=True)
    report = models.JSONField(default=dict, blank=True)
    rows_total = models.PositiveIntegerField(default=0)
    rows_accepted = models.PositiveIntegerField(default=0)
    rows_invalid = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    rows_processed = models.PositiveIntegerField(default=0)
    bytes_read = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=True)
    worker_hostname = models.CharField(max_length=255, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    rejected_as = models.CharField(
        max_length=16,
        choices=RejectedAs.choices,
        blank=True,
        default="",
        help_text="Rejected contributions: the curator's grounds (empty: rejected before grounds were recorded, "
        "when every rejection forfeited the bond).",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # The same file (by SHA-256) is taken once per datanet, unless the earlier upload failed or was rejected.
            models.UniqueConstraint(
                fields=["datanet", "sha256"],
                condition=~Q(status__in=["failed", "rejected"]),
                name="contribution_unique_live_file",
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.original_name}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def progress(self) -> float:
        if self.is_finished:
            return 1.0
        return min(1.0, self.bytes_read / self.size) if self.size else 0.0


class Record(models.Model):
    """One row. `staged` rows belong to an ingest still running and are invisible everywhere."""

    class Status(models.TextChoices):
        STAGED = "staged", "Being checked"
        PENDING = "pending", "Waiting for review"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"
        DROPPED = "dropped", "Dropped by a curator"

    LIVE = (Status.PENDING, Status.ACCEPTED)

    datanet = models.ForeignKey(Datanet, on_delete=models.CASCADE, related_name="records")
    contribution = models.ForeignKey(Contribution, on_delete=models.CASCADE, related_name="records")
    contributor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="records")
    line = models.PositiveIntegerField(help_text="Line, row, page or paragraph in the uploaded file.")
    content = models.JSONField()
    text = models.TextField(help_text="The row as one text: what is searched, screened, counted and exported.")
    content_hash = models.CharField(max_length=64, db_index=True)
    token_count = models.PositiveIntegerField(default=0)
    flags = models.JSONField(default=list, blank=True)
    flag_details = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STAGED)
    drop_reason = models.CharField(max_length=300, blank=True)
    copy_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="copies",
        help_text="Another contributor's earlier row this row copies (same or nearly the same text): its "
        "attribution credit goes to that row's contributor.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["datanet", "status"]),
            models.Index(fields=["contribution", "status"]),
            # Per-contributor stats of a datanet's page read only this index (bench/bench_load.py: 100k rows).
            models.Index(
                fields=["datanet", "status", "contributor"], include=["token_count"], name="record_contributor_stats"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["datanet", "content_hash"],
                condition=Q(status__in=["pending", "accepted"]),
                name="record_unique_live_hash",
            )
        ]

    def __str__(self) -> str:
        return f"row {self.pk} ({self.content_hash[:8]})"


class DatanetVersion(models.Model):
    """An immutable snapshot: exactly the rows in `records` (through VersionRecord), identified by manifest_hash
    (see datanets.ingest.manifest.merkle_root for the construction)."""

    datanet = models.ForeignKey(Datanet, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    manifest_hash = models.CharField(max_length=64)
    row_count = models.PositiveIntegerField()
    contributor_count = models.PositiveIntegerField()
    token_count = models.BigIntegerField(default=0)
    records = models.ManyToManyField(Record, through="VersionRecord", related_name="versions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["datanet", "-number"]
        constraints = [models.UniqueConstraint(fields=["datanet", "number"], name="version_unique_number")]

    def __str__(self) -> str:
        return f"{self.datanet.slug} v{self.number}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("A datanet version never changes once published.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("A datanet version is never deleted: models trained on it name it.")


class VersionRecord(models.Model):
    version = models.ForeignKey(DatanetVersion, on_delete=models.PROTECT, related_name="entries")
    record = models.ForeignKey(Record, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "record"], name="version_record_unique")]

    def __str__(self) -> str:
        return f"version {self.version_id} row {self.record_id}"


class SearchRow(models.Model):
    """A row in the full-text retrieval index (datanets.services.search). Rows enter when a version holding them is
    indexed and never leave: which rows a question may retrieve is decided by the versions asked for, so a row
    taken out of a newer version stops being retrievable without touching the index. The searchable text lives
    beside this table, per database engine: a `document` tsvector column with a GIN index on PostgreSQL, the FTS5
    table `datanets_searchrow_fts` (rowid = record id) on SQLite; both are made by migration 0006."""

    record = models.OneToOneField(Record, on_delete=models.CASCADE, primary_key=True, related_name="+")
    datanet = models.ForeignKey(Datanet, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return f"search row {self.record_id}"


class SearchIndexedVersion(models.Model):
    """A version whose rows are all in the retrieval index (indexing is incremental: rows already indexed through
    an earlier version are skipped)."""

    version = models.OneToOneField(DatanetVersion, on_delete=models.CASCADE, primary_key=True, related_name="+")
    rows_added = models.PositiveIntegerField(default=0, help_text="Rows this version added to the index.")
    indexed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"version {self.version_id} indexed"
