from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from core.models import Job


class BaseModel(models.Model):
    """A base language model the wizard can fine-tune: a local Hugging Face folder (safetensors + tokenizer)."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=1000, help_text="Local folder with config.json, weights and tokenizer.")
    parameters = models.BigIntegerField(help_text="Number of parameters.")
    context_length = models.PositiveIntegerField(help_text="Longest input in tokens.")
    architecture = models.CharField(max_length=100, blank=True)
    licence = models.CharField(max_length=100, blank=True)
    source = models.CharField(
        max_length=1000, blank=True, help_text="Where the files came from (GGUF, folder, hub id)."
    )
    is_default = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True, help_text="Offered in the fine-tuning wizard.")
    # {hardware (devices.describe_hardware's words): {"tokens_per_s", "measured_at"}}: training throughput measured
    # by a gpu worker when it starts (services.calibration), the first estimate's rate before any run on it
    calibration = models.JSONField(default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-is_default", "parameters", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_base_model"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def parameters_label(self) -> str:
        if self.parameters >= 1_000_000_000:
            return f"{self.parameters / 1e9:.1f}B"
        return f"{self.parameters / 1e6:.0f}M"


class FineTuneJob(Job):
    """One fine-tuning run. State lives here (not in Celery): queued -> running -> succeeded | failed | cancelled;
    message, started/heartbeat/finished come from core.models.Job."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting in line"
        RUNNING = "running", "Training"
        SUCCEEDED = "succeeded", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Control(models.TextChoices):
        NONE = "", "None"
        STOP = "stop", "Stop and keep the adapter"
        CANCEL = "cancel", "Cancel and discard"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="finetune_jobs")
    name = models.CharField(max_length=200)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="jobs")
    datanet_versions = models.ManyToManyField("datanets.DatanetVersion", related_name="finetune_jobs")
    test_versions = models.ManyToManyField(
        "datanets.DatanetVersion",
        related_name="test_set_of_jobs",
        blank=True,
        help_text="A test set the owner chose: answered by base and tuned and scored, besides the held-out rows.",
    )
    preset = models.CharField(max_length=20)
    hyperparameters = models.JSONField(default=dict, help_text="Every setting, preset applied and validated.")
    idempotency_key = models.CharField(max_length=64, help_text="Same key, same owner: the same job.")
    request_fingerprint = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="SHA-256 of the launch request: the same key with a different request is refused (empty: older).",
    )
    parent_version = models.ForeignKey(
        "ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="child_jobs",
        help_text="Training continued from this model version's adapter (its lineage); empty: a fresh adapter.",
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    control = models.CharField(max_length=8, choices=Control.choices, default=Control.NONE, blank=True)
    phase = models.CharField(max_length=20, blank=True)
    progress = models.FloatField(default=0.0)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    estimate = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    samples = models.JSONField(default=list, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The worker's resident memory (the most seen since its last beat) and the most it could hold, written by the
    # job's heartbeat: a job whose worker vanished while near its limit ran out of memory (it is not run again).
    memory_bytes = models.BigIntegerField(default=0)
    memory_limit_bytes = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="finetune_job_idempotency"),
            models.CheckConstraint(
                condition=models.Q(progress__gte=0) & models.Q(progress__lte=1), name="progress_0_1"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def workdir(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "finetunes" / str(self.pk)


class FineTuneEvent(models.Model):
    """Append-only progress log of a job: one row per training step, evaluation or phase change."""

    class Kind(models.TextChoices):
        PHASE = "phase"
        TRAIN = "train"
        EVAL = "eval"
        MESSAGE = "message"

    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    step = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    lr = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"])]

    def __str__(self) -> str:
        return f"job {self.job_id} {self.kind} step {self.step}"


class TrainedModel(models.Model):
    """A fine-tuned model people can publish and call. Its versions are immutable; the slug never silently
    points at other weights: each inference records the version it used."""

    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private (only you)"
        PUBLIC = "public", "Public"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="trained_models")
    slug = models.SlugField(max_length=120, unique=True)
    name = models.CharField(max_length=200)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="trained_models")
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.PRIVATE)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    price_per_1k_tokens = models.BigIntegerField(
        default=0, help_text="Price per 1,000 tokens in micro-credits (1 credit = 1,000,000)."
    )
    allow_exports = models.BooleanField(
        default=False,
        help_text="Others may download this model's files (adapter, merged, GGUF) while it is published publicly.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    # Retrieval (modelfactory.services.retrieval): answers draw on rows of these datanet versions, cited and paid.
    retrieval_enabled = models.BooleanField(default=False, help_text="Answers look up rows of its data and cite them.")
    retrieval_top_k = models.PositiveSmallIntegerField(default=4, help_text="Most rows put before a question.")
    retrieval_live = models.BooleanField(
        default=False, help_text="Search each datanet's latest version instead of the versions chosen."
    )
    retrieval_versions = models.ManyToManyField("datanets.DatanetVersion", blank=True, related_name="retrieving_models")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(price_per_1k_tokens__gte=0), name="price_not_negative")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def latest_version(self):
        """The newest version: from the list's prefetch where `selectors.trained_model_list` ran it, else a query."""
        prefetched = getattr(self, "prefetched_latest_versions", None)
        if prefetched is not None:
            return prefetched[0] if prefetched else None
        return self.versions.order_by("-number").first()


class ModelVersion(models.Model):
    """The exact weights a trained model answers with: one job's adapter, hashed, never changed."""

    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    job = models.OneToOneField(FineTuneJob, on_delete=models.PROTECT, related_name="model_version")
    adapter_path = models.CharField(max_length=1000)
    zip_path = models.CharField(max_length=1000)
    artifact_hash = models.CharField(max_length=64)
    model_card = models.TextField()
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [models.UniqueConstraint(fields=["model", "number"], name="model_version_number")]

    def __str__(self) -> str:
        return f"{self.model.slug} v{self.number}"


class ModelEvaluation(Job):
    """ "Evaluate again": a finished model version answers a test set the owner chose after training (datanet
    versions or an uploaded file), base and tuned side by side, each answer scored against the expected one. Rows
    the model trained on are left out of the score and counted. A model version keeps every evaluation it had."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting in line"
        RUNNING = "running", "Evaluating"
        SUCCEEDED = "succeeded", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_evaluations"
    )
    test_versions = models.ManyToManyField("datanets.DatanetVersion", blank=True, related_name="evaluations")
    upload_name = models.CharField(max_length=255, blank=True, help_text="The file the test set came from, if any.")
    upload_rows = models.JSONField(
        default=list, blank=True, help_text="The uploaded file's rows as the training core reads them."
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    progress = models.FloatField(default=0.0)
    rows = models.PositiveIntegerField(default=0, help_text="Rows in the test set.")
    overlap = models.PositiveIntegerField(default=0, help_text="Rows the model trained on: left out of the score.")
    metrics = models.JSONField(default=dict, blank=True)
    samples = models.JSONField(default=list, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__gte=0) & models.Q(progress__lte=1), name="model_evaluation_progress_0_1"
            ),
        ]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.version} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class ModelExport(Job):
    """One file made from a model version for use elsewhere (adapter, merged model, GGUF): made once per version and
    format (a constraint: two requests at once are one export), kept and downloaded again. The file is written under
    a temporary name and renamed when complete, so `path` names a whole file or nothing."""

    class Format(models.TextChoices):
        ADAPTER = "adapter", "Adapter (LoRA, for transformers + peft)"
        MERGED = "merged", "Merged model (safetensors, for transformers)"
        GGUF_F16 = "gguf-f16", "GGUF F16 (llama.cpp, Ollama; full precision)"
        GGUF_Q8_0 = "gguf-q8_0", "GGUF Q8_0 (llama.cpp, Ollama; half the size)"

    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting in line"
        RUNNING = "running", "Being made"
        SUCCEEDED = "succeeded", "Ready"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=12, choices=Format.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="model_exports"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0)
    path = models.CharField(max_length=1000, blank=True, help_text="The finished file (empty until it is made).")
    sha256 = models.CharField(max_length=64, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True, help_text="How long making the file took.")
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["version", "format"]
        constraints = [
            models.UniqueConstraint(fields=["version", "format"], name="model_export_once_per_format"),
            models.CheckConstraint(
                condition=models.Q(progress__gte=0) & models.Q(progress__lte=1), name="model_export_progress_0_1"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} {self.format} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_gguf(self) -> bool:
        return self.format.startswith("gguf-")

    @property
    def filename(self) -> str:
        model = self.version.model
        extension = "gguf" if self.is_gguf else "zip"
        return f"{model.slug}-v{self.version.number}-{self.format}.{extension}"

    @property
    def folder(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "exports" / str(self.version_id) / self.format


class Inference(models.Model):
    """One answer a model gave: who asked, which exact model version answered, what was asked and answered (text
    and token ids, which attribution needs), the tokens counted, and the fee reserved (a ledger hold) and owed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Generating"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Source(models.TextChoices):
        API = "api", "REST API"
        OPENAI = "openai", "OpenAI-compatible API"
        PLAYGROUND = "playground", "Playground"

    caller = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="inferences")
    model = models.ForeignKey(TrainedModel, on_delete=models.PROTECT, related_name="inferences")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="inferences")
    source = models.CharField(max_length=12, choices=Source.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    messages = models.JSONField(
        help_text="The conversation as sent: [{role, content}] (a prompt becomes one user turn)."
    )
    parameters = models.JSONField(default=dict, help_text="max_new_tokens, temperature, top_p as used.")
    prompt_token_ids = models.JSONField(default=list)
    output = models.TextField(blank=True)
    output_token_ids = models.JSONField(default=list)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=12, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    price_per_1k_tokens = models.BigIntegerField(help_text="The model's price when the call was made (micro-credits).")
    fee_reserved_micro = models.BigIntegerField(default=0, help_text="Held from the caller before generating.")
    fee_micro = models.BigIntegerField(default=0, help_text="Owed for the tokens actually delivered.")
    hold_key = models.CharField(max_length=200, blank=True, help_text="The ledger hold that reserves the fee.")
    retrieval = models.JSONField(
        null=True,
        blank=True,
        help_text="None without retrieval; else {citations: [{index, record_id, contributor_id, datanet_id, score}], "
        "prompt_messages: the conversation as the model read it, data block included}. Kept as it was answered.",
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(fee_micro__gte=0), name="inference_fee_not_negative"),
            models.CheckConstraint(
                condition=models.Q(fee_micro__lte=models.F("fee_reserved_micro")), name="inference_fee_within_hold"
            ),
        ]

    def __str__(self) -> str:
        return f"inference {self.pk} of {self.model_id} ({self.status})"


class ServingPolicy(models.Model):
    """Operators' limits on serving, edited in the admin (one row; `ServingPolicy.current()` creates it with the
    defaults on first use)."""

    min_price_per_1k_tokens = models.BigIntegerField(
        default=0, help_text="Lowest price a builder may set, in micro-credits per 1,000 tokens."
    )
    max_price_per_1k_tokens = models.BigIntegerField(
        default=1_000_000, help_text="Highest price a builder may set, in micro-credits per 1,000 tokens."
    )
    max_new_tokens_cap = models.PositiveIntegerField(default=1024, help_text="Longest answer a caller may ask for.")
    default_max_new_tokens = models.PositiveIntegerField(
        default=256, help_text="Answer length when the caller does not say (capped by the context length)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "serving policy"
        verbose_name_plural = "serving policy"
        constraints = [
            models.CheckConstraint(condition=models.Q(min_price_per_1k_tokens__gte=0), name="serving_min_price_ge_0"),
            models.CheckConstraint(
                condition=models.Q(max_price_per_1k_tokens__gte=models.F("min_price_per_1k_tokens")),
                name="serving_max_price_ge_min",
            ),
            models.CheckConstraint(condition=models.Q(max_new_tokens_cap__gte=1), name="serving_cap_ge_1"),
        ]

    def __str__(self) -> str:
        return "Serving policy"

    @classmethod
    def current(cls) -> ServingPolicy:
        policy, _ = cls.objects.get_or_create(pk=1)
        return policy
