"""Proof of Attribution records: the index a training job built, the curators' data valuation, and one attribution
(with its settlement) per answer."""

from django.conf import settings
from django.db import models


class ModelIndex(models.Model):
    """The attribution index of one training job: projected gradients of its training rows and a span index,
    stored under the job's workdir. Built once, at the end of training, by the "indexing" stage."""

    job = models.OneToOneField("modelfactory.FineTuneJob", on_delete=models.CASCADE, related_name="attribution_index")
    folder = models.CharField(max_length=1000)
    index_path = models.CharField(max_length=1000)
    spans_path = models.CharField(max_length=1000)
    owners_path = models.CharField(max_length=1000, help_text="Row id -> contributor and contribution (JSON).")
    method_version = models.CharField(max_length=20)
    params = models.JSONField(
        default=dict, help_text="Seed, projection, k per LoRA matrix, damping: what a recomputation needs."
    )
    k = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    rows = models.PositiveIntegerField(help_text="Training rows indexed (the held-out rows are not).")
    bytes = models.BigIntegerField(help_text="Size of the index files on disk.")
    build_seconds = models.FloatField()
    valuation = models.JSONField(default=dict, blank=True, help_text="Data valuation run: version, method, rule.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"attribution index of job {self.job_id} ({self.rows} rows)"


class ContributionValue(models.Model):
    """Data valuation: a contribution's influence on the job's held-out eval loss (negative = made it worse)."""

    index = models.ForeignKey(ModelIndex, on_delete=models.CASCADE, related_name="values")
    contribution = models.ForeignKey("datanets.Contribution", on_delete=models.CASCADE, related_name="values")
    contributor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    datanet = models.ForeignKey("datanets.Datanet", on_delete=models.CASCADE, related_name="contribution_values")
    value = models.FloatField(help_text="Sum of its rows' influence on the eval set (> 0 helped, < 0 hurt).")
    rows = models.PositiveIntegerField()
    z = models.FloatField(help_text="Its value against random row sets of its size, in standard deviations.")
    p = models.FloatField(default=1.0, help_text="Share of random row sets of its size that did as badly or worse.")
    harmful = models.BooleanField(default=False, help_text="Strongly harmful: flagged for the curators' review.")

    class Meta:
        ordering = ["z", "id"]
        constraints = [models.UniqueConstraint(fields=["index", "contribution"], name="contribution_value_once")]

    def __str__(self) -> str:
        return f"contribution {self.contribution_id} value {self.value:.4g}"


class ContributionFinding(models.Model):
    """A curator's decision on a contribution: confirmed harmful (its rows leave the next version, its pending
    earnings are forfeited, its bond is slashed, its contributor's reputation records it) or the flag dismissed."""

    class Verdict(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed harmful"
        DISMISSED = "dismissed", "Flag dismissed: not harmful"

    contribution = models.OneToOneField("datanets.Contribution", on_delete=models.CASCADE, related_name="finding")
    datanet = models.ForeignKey("datanets.Datanet", on_delete=models.CASCADE, related_name="findings")
    contributor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    curator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    value = models.ForeignKey(
        ContributionValue, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="The data valuation that flagged it, if any (a curator may also find harm on their own).",
    )  # fmt: skip
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"contribution {self.contribution_id}: {self.verdict}"


class Attribution(models.Model):
    """Which contributors and rows shaped one answer, and how its fee was settled."""

    class Status(models.TextChoices):
        PENDING = "pending", "Being computed"
        DONE = "done", "Done"
        FAILED = "failed", "Failed (retrying)"
        FALLBACK = "fallback", "Fell back to row shares"

    class Settlement(models.TextChoices):
        PENDING = "pending", "Not settled yet"
        SETTLED = "settled", "Settled"
        SKIPPED = "skipped", "Nothing to settle"
        FAILED = "failed", "Settlement refused"

    FINISHED = (Status.DONE, Status.FALLBACK)

    inference = models.OneToOneField("modelfactory.Inference", on_delete=models.CASCADE, related_name="attribution")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    method_version = models.CharField(max_length=20, blank=True)
    params = models.JSONField(default=dict, blank=True)
    contributor_shares = models.JSONField(default=dict, blank=True, help_text="{user id: share} from the engine.")
    contribution_shares = models.JSONField(default=dict, blank=True, help_text="{contribution id: share}.")
    unattributed = models.FloatField(default=0.0, help_text="Share the evidence could not pin on anyone.")
    span_coverage = models.FloatField(default=0.0)
    gradient_attributed = models.FloatField(default=0.0)
    top_rows = models.JSONField(default=list, blank=True, help_text="[{record_id, contributor_id, score}]")
    spans = models.JSONField(default=list, blank=True, help_text="[{start, end, record_id, char_start, char_end}]")
    settlement_rule = models.CharField(max_length=20, blank=True)
    settlement_shares = models.JSONField(default=dict, blank=True, help_text="{user id: share} sent to the ledger.")
    citation_weights = models.JSONField(
        default=dict,
        blank=True,
        help_text="Rule settle-3: {user id: weight} of the cited rows' contributors (they share the retrieval part).",
    )
    settlement_status = models.CharField(max_length=10, choices=Settlement.choices, default=Settlement.PENDING)
    settlement_note = models.TextField(blank=True)
    settlement_tx = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    compute_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(unattributed__gte=0) & models.Q(unattributed__lte=1.000001),
                name="attribution_unattributed_0_1",
            )
        ]
        indexes = [
            # The answers waiting for settlement, oldest first (what a settlement takes along; the sweep): a few
            # rows among all answers ever settled.
            models.Index(
                fields=["id"],
                condition=models.Q(settlement_status="pending", status__in=["done", "fallback"]),
                name="attribution_waiting_settle",
            )
        ]

    def __str__(self) -> str:
        return f"attribution of inference {self.inference_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class AttributionShare(models.Model):
    """One contributor's share of one answer (denormalised for the per-model and per-contributor pages)."""

    attribution = models.ForeignKey(Attribution, on_delete=models.CASCADE, related_name="shares")
    contributor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey("modelfactory.TrainedModel", on_delete=models.CASCADE, related_name="+")
    share = models.FloatField(help_text="Attribution share (engine), 0..1.")
    settled_share = models.FloatField(help_text="Share of the contributors' part sent to settlement, 0..1.")
    amount_micro = models.BigIntegerField(default=0, help_text="Paid to this contributor for this answer.")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-share", "contributor_id"]
        constraints = [models.UniqueConstraint(fields=["attribution", "contributor"], name="attribution_share_once")]

    def __str__(self) -> str:
        return f"{self.contributor_id}: {self.share:.3f}"


class AttributionRow(models.Model):
    """One training row's part of one answer's pay to its contributor: what "this row earned" adds up.

    `share` is the row's share of the answer (the engine's rule step 5); `settled_share` its part of the
    contributor's settled share, in the units of `Attribution.settlement_shares` (under settle-3 it includes the
    row's part of the retrieval part when it was cited). At settlement the contributor's amount for the answer is
    divided over their rows in proportion to `settled_share` (services.row_earnings.row_amounts); what is not tied
    to one row (paid by row count, a fallback, credit spread too thin to keep) stays with the contributor's
    AttributionShare only."""

    attribution = models.ForeignKey(Attribution, on_delete=models.CASCADE, related_name="rows")
    record = models.ForeignKey("datanets.Record", on_delete=models.CASCADE, related_name="+", db_index=False)
    contributor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    share = models.FloatField(help_text="The row's share of the answer (engine), 0..1.")
    settled_share = models.FloatField(help_text="The row's part of its contributor's settled share.")
    amount_micro = models.BigIntegerField(default=0, help_text="The part of the contributor's pay tied to this row.")

    class Meta:
        ordering = ["-settled_share", "record_id"]
        constraints = [models.UniqueConstraint(fields=["attribution", "record"], name="attribution_row_once")]
        indexes = [models.Index(fields=["record", "contributor"], include=["amount_micro"], name="attribution_row_pay")]

    def __str__(self) -> str:
        return f"row {self.record_id} of attribution {self.attribution_id}: {self.settled_share:.3f}"
