"""Model factory reads, each scoped to what the caller may see."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db.models import Case, Count, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from datanets.models import Datanet
from datanets.selectors import datanet_ids_visible
from modelfactory.models import (
    BaseModel,
    FineTuneJob,
    Inference,
    ModelEvaluation,
    ModelExport,
    ModelVersion,
    TrainedModel,
)

PRIVATE_DATANET = "a private datanet"
CARD_TABLE_HEADER = "| datanet | version | manifest hash |"  # modelfactory/training/artifacts.py model_card


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.filter(is_active=True)


def base_model_default() -> BaseModel | None:
    return base_model_list().order_by("-is_default", "parameters").first()


def versions_usable_by(*, user, version_ids: list[int]) -> tuple[list, str]:
    """(versions in the given order, error message or ""). A user may train on public datanets' versions and on
    private ones they own or curate."""
    from datanets.selectors import VersionNotUsable, version_get_usable

    if not version_ids:
        return [], "Choose at least one datanet version."
    versions = []
    for version_id in dict.fromkeys(version_ids):
        try:
            versions.append(version_get_usable(user=user, version_id=int(version_id)))
        except VersionNotUsable as exc:
            return [], str(exc)
    return versions, ""


def finetune_rows(*, versions) -> tuple[list[dict], int]:
    """Training rows of the given versions as plain dicts for the training core, and the number of contributors.
    A row frozen in two chosen versions is trained on once."""
    from datanets.selectors import version_records

    rows: dict[int, dict] = {}
    contributors: set[int] = set()
    for version in versions:
        for record in version_records(version_id=version.pk):
            rows.setdefault(record.record_id, {"id": record.record_id, "kind": record.kind, "content": record.content})
            contributors.add(record.contributor_id)
    return [rows[key] for key in sorted(rows)], len(contributors)


def job_list_for(*, user) -> QuerySet[FineTuneJob]:
    return FineTuneJob.objects.filter(owner=user).select_related("base_model")


def job_list_detailed(*, user) -> QuerySet[FineTuneJob]:
    """`job_list_for` with what the API shows of each job read along with the list, not once per job: its datanet
    versions, its model once trained (`model_version.model`) and `queue_position` (as `job_queue_position`)."""
    ahead = (
        FineTuneJob.objects.filter(status=FineTuneJob.Status.QUEUED)
        .filter(Q(created_at__lt=OuterRef("created_at")) | Q(created_at=OuterRef("created_at"), pk__lt=OuterRef("pk")))
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        job_list_for(user=user)
        .select_related("model_version__model")
        .prefetch_related("datanet_versions", "test_versions")
        .annotate(
            queue_position=Case(
                When(status=FineTuneJob.Status.QUEUED, then=Coalesce(Subquery(ahead), Value(0)) + 1),
                default=None,
                output_field=IntegerField(),
            )
        )
    )


def job_get_for(*, user, job_id: int) -> FineTuneJob:
    """Raises FineTuneJob.DoesNotExist for jobs the user may not see (owners and staff only)."""
    jobs = FineTuneJob.objects.select_related("base_model", "owner")
    if not user.is_staff:
        jobs = jobs.filter(owner=user)
    return jobs.get(pk=job_id)


def job_queue_position(*, job: FineTuneJob) -> int | None:
    """1 = next to start. None once the job has left the queue."""
    if job.status != FineTuneJob.Status.QUEUED:
        return None
    ahead = FineTuneJob.objects.filter(status=FineTuneJob.Status.QUEUED).filter(
        Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)
    )
    return ahead.count() + 1


def job_queue_wait_seconds(*, job: FineTuneJob) -> float | None:
    """About how long before a queued job starts: the estimated time left of the running jobs and of the queued jobs
    ahead of it (each job's launch estimate), shared among the live training workers. None when it is not queued or
    a job ahead has no estimate."""
    from core.models import WorkerHeartbeat

    if job.status != FineTuneJob.Status.QUEUED:
        return None
    ahead = FineTuneJob.objects.filter(
        Q(status=FineTuneJob.Status.RUNNING)
        | Q(status=FineTuneJob.Status.QUEUED)
        & (Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk))
    ).only("status", "progress", "estimate")
    total = 0.0
    for other in ahead:
        seconds = (other.estimate or {}).get("run_seconds")
        if seconds is None:
            return None
        total += float(seconds) * (1 - other.progress if other.status == FineTuneJob.Status.RUNNING else 1)
    fresh_after = timezone.now() - timedelta(seconds=settings.MF_WORKER_STALE_SECONDS)
    workers = sum(
        1 for queues in WorkerHeartbeat.objects.filter(last_seen__gte=fresh_after).values_list("queues", flat=True)
        if "gpu" in queues
    )  # fmt: skip
    return total / max(1, workers)


def job_peak_memory_bytes(*, job: FineTuneJob) -> int | None:
    """The job's peak memory over all its stages as it measured it (metrics["peak_memory"]["job"]); for a job that
    did not measure it (an older one), the highest memory a training step reported (peak GPU memory, or the
    worker's resident memory on a CPU)."""
    from django.db.models import Max

    measured = ((job.metrics or {}).get("peak_memory") or {}).get("job")
    if measured:
        return int(measured)
    return job.events.filter(kind="train").aggregate(peak=Max("memory_bytes"))["peak"]


def job_chart_points(*, job: FineTuneJob, after_id: int = 0) -> dict:
    """Loss and eval-loss points for the live chart (only those after `after_id`, for incremental polling)."""
    events = job.events.filter(id__gt=after_id, kind__in=["train", "eval"]).values_list(
        "id", "kind", "step", "loss", "eval_loss"
    )
    points = {"train": [], "eval": [], "last_id": after_id}
    for event_id, kind, step, loss, eval_loss in events:
        if kind == "train" and loss is not None:
            points["train"].append({"x": step, "y": loss})
        elif kind == "eval" and eval_loss is not None:
            points["eval"].append({"x": step, "y": eval_loss})
        points["last_id"] = event_id
    return points


def job_latest_train_event(*, job: FineTuneJob):
    return job.events.filter(kind="train").order_by("-id").first()


def trained_models_visible(*, user) -> QuerySet[TrainedModel]:
    models = TrainedModel.objects.select_related("owner", "base_model")
    if user.is_authenticated and user.is_staff:
        return models
    public = Q(visibility=TrainedModel.Visibility.PUBLIC, status=TrainedModel.Status.PUBLISHED)
    if user.is_authenticated:
        return models.filter(public | Q(owner=user))
    return models.filter(public)


def trained_model_list(*, user) -> QuerySet[TrainedModel]:
    """`trained_models_visible` with each model's newest version (`latest_version`) read in one more query for the
    whole list, not one per model (a sliced prefetch: one window query over the listed models' versions)."""
    newest = ModelVersion.objects.order_by("-number")[:1]
    return trained_models_visible(user=user).prefetch_related(
        Prefetch("versions", queryset=newest, to_attr="prefetched_latest_versions")
    )


@lru_cache(maxsize=4)
def base_tokenizer(path: str):
    """The base model's tokenizer, loaded once per process (shared by the wizard, serving and attribution)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def wizard_preview(*, base: BaseModel, versions, max_length: int, limit: int = 3) -> dict:
    """Step 3: a few real rows rendered through the base model's chat template (trained-on part marked), and how
    many rows are too long for `max_length`."""
    from modelfactory.training.data import build_examples, preview_rows

    rows, _ = finetune_rows(versions=versions)
    tokenizer = base_tokenizer(base.path)
    _, report = build_examples(tokenizer, rows, max_length=max_length)
    return {
        "previews": preview_rows(tokenizer, rows, max_length=max_length, limit=limit),
        "report": report.as_dict(),
        "max_length": max_length,
    }


def training_capabilities():
    """What the training hardware can do (devices.Capabilities): as the live workers of the gpu queue reported it on
    their heartbeat rows (the weakest of them, where several differ), or, with none running, this process's own
    machine (the web and the worker on one machine, as `make run` starts them)."""
    from core.models import WorkerHeartbeat
    from modelfactory.training.devices import capabilities_from_report, detect_capabilities, weakest

    fresh_after = timezone.now() - timedelta(seconds=settings.MF_WORKER_STALE_SECONDS)
    reports = [
        capabilities_from_report(w.hardware)
        for w in WorkerHeartbeat.objects.filter(last_seen__gte=fresh_after)
        if "gpu" in w.queues and w.hardware
    ]
    return weakest(reports) if reports else detect_capabilities()


def training_plan(*, caps=None, quantization: str = "none"):
    """(plan, caps) for a job on this hardware with MF_TRAINING_DEVICE. Raises devices.HardwareError."""
    from modelfactory.training.devices import plan_hardware

    caps = caps if caps is not None else training_capabilities()
    return plan_hardware(caps, preference=settings.MF_TRAINING_DEVICE, quantization=quantization), caps


def quantization_problem(quantization: str, *, caps=None) -> str | None:
    """Why the 4-bit setting cannot run on the training hardware (MF_TRAINING_DEVICE included), or None."""
    from modelfactory.training.devices import HardwareError

    try:
        training_plan(caps=caps, quantization=quantization)
    except HardwareError as exc:
        return str(exc)
    return None


def wizard_preset_estimates(*, base: BaseModel, versions) -> dict[str, dict]:
    """Step 4: each preset's time and memory range on this hardware, with the preset's own settings ({preset: the
    wizard_estimate}); the rows are read once."""
    from modelfactory.training.presets import PRESETS, validate_hyperparameters

    rows = finetune_rows(versions=versions)
    return {
        key: wizard_estimate(
            base=base, versions=versions, hyperparameters=validate_hyperparameters({}, preset=key)[0], rows=rows
        )  # fmt: skip
        for key in PRESETS
    }


def wizard_estimate(*, base: BaseModel, versions, hyperparameters: dict, rows: tuple | None = None) -> dict:
    """Step 5 (and each launched job's `estimate`): tokens, steps, the run's time as a range calibrated on this
    machine's past runs (past_runs), and memory, on this worker's hardware (how many devices included: time is
    divided among them, memory is per device)."""
    import json

    from modelfactory.training.data import build_examples
    from modelfactory.training.devices import describe_hardware
    from modelfactory.training.estimate import (
        MEMORY_STAGES,
        estimate_run,
        memory_range,
        rough_run_seconds,
        run_time_range,
        teaching_warnings,
    )
    from modelfactory.training.evaluate import MAX_ANSWERS
    from modelfactory.training.finetune import split_rows

    rows, contributors = rows or finetune_rows(versions=versions)
    tokenizer = base_tokenizer(base.path)
    examples, report = build_examples(tokenizer, rows, max_length=int(hyperparameters["max_length"]))
    train_ids, eval_ids = split_rows(
        [e.row_id for e in examples], eval_split=float(hyperparameters["eval_split"]), seed=int(hyperparameters["seed"])
    )
    train_examples = [e for e in examples if e.row_id in train_ids]
    plan, caps = training_plan(quantization=hyperparameters.get("quantization", "none"))
    hardware = describe_hardware(plan, caps)
    past = past_runs(base=base, hardware=hardware)
    # before any run on this hardware: the training rate a gpu worker measured when it started (services.calibration)
    measured_rate = None if past else ((base.calibration or {}).get(hardware) or {}).get("tokens_per_s")
    config = json.loads((Path(base.path) / "config.json").read_text())
    estimate = estimate_run(
        [e.n_tokens for e in train_examples],
        hyperparameters,
        device_type=plan.device_type,
        parameters=base.parameters,
        model_config=config,
        answer_tokens=sum(e.n_answer_tokens for e in train_examples),
        devices=plan.world_size,
        index_k=settings.MF_ATTRIBUTION_K,
        tokens_per_s=measured_rate,
    )
    answers = min(len(eval_ids), MAX_ANSWERS)
    time_range = run_time_range(
        tokens=estimate.tokens,
        answers=answers,
        past=past,
        rough_seconds=rough_run_seconds(estimate, answers=answers, parameters=base.parameters),
        measured=bool(measured_rate),
    )
    stages = {stage: getattr(estimate, f"{stage}_memory_bytes") for stage in MEMORY_STAGES}
    return {
        **estimate.as_dict(),
        **{f"run_{key}": value for key, value in time_range.items()},
        **{f"memory_{key}": value for key, value in memory_range(stages, past=past).items()},
        "device": hardware,
        "train_rows": len(train_examples),
        "eval_rows": len(eval_ids),
        "warnings": teaching_warnings(len(train_examples), len(eval_ids), hyperparameters),
        "contributors": contributors,
        "report": report.as_dict(),
    }


def past_runs(*, base: BaseModel, hardware: str, limit: int = 10) -> list:
    """The calibration of this machine: what the last `limit` finished runs of this base model on this hardware
    measured (estimate.PastRun), newest first."""
    from modelfactory.training.estimate import PastRun, memory_ratios

    jobs = FineTuneJob.objects.filter(
        base_model=base, status=FineTuneJob.Status.SUCCEEDED, metrics__hardware=hardware, started_at__isnull=False
    ).order_by("-finished_at")[:limit]
    runs = []
    for job in jobs.only("metrics", "estimate", "started_at", "finished_at"):
        m = job.metrics
        train, evaluation = float(m.get("train_seconds") or 0), float(m.get("evaluation_seconds") or 0)
        if not train or not m.get("tokens") or not job.finished_at:
            continue
        total = (job.finished_at - job.started_at).total_seconds()
        runs.append(
            PastRun(
                tokens_per_s=float(m["tokens"]) / train,
                seconds_per_answer=evaluation / max(1, int(m.get("answers_scored") or 0)),
                overhead_seconds=max(0.0, total - train - evaluation),
                memory_ratios=memory_ratios(m.get("peak_memory") or {}, job.estimate or {}),
            )
        )
    return runs


def dashboard_jobs(*, user, limit: int = 5) -> list[FineTuneJob]:
    """The user's latest training jobs (running ones show their progress on the dashboard)."""
    return list(job_list_for(user=user)[:limit])


def dashboard_models(*, user, limit: int = 5) -> list[TrainedModel]:
    """The models the user owns, newest first."""
    return list(TrainedModel.objects.filter(owner=user)[:limit])


def _hidden_datanet_ids(*, user, datanets) -> set[int]:
    """The ids of the private datanets among `datanets` that `user` may not see (named "a private datanet")."""
    private = {d.pk for d in datanets if d.visibility != Datanet.Visibility.PUBLIC}
    return private - datanet_ids_visible(user=user, datanet_ids=private) if private else set()


def version_names_for(*, user, versions) -> list[str]:
    """ "Zorb facts v2" for each datanet version, "a private datanet v1" where `user` may not see the datanet."""
    hidden = _hidden_datanet_ids(user=user, datanets=[v.datanet for v in versions])
    return [f"{PRIVATE_DATANET if v.datanet_id in hidden else v.datanet.name} v{v.number}" for v in versions]


def model_card_for(*, user, version: ModelVersion) -> str:
    """The version's model card as `user` may read it. The card was written at training time with every datanet's
    name; a private datanet the user may not see is shown as "a private datanet" (its version number and
    fingerprint stay: they name nothing and show no rows). The training-data table lists the job's versions in the
    order the worker read them (by id), so each row is found by its place, whatever the datanet is called now."""
    lines = version.model_card.split("\n")
    if CARD_TABLE_HEADER not in lines:
        return version.model_card
    used = list(version.job.datanet_versions.select_related("datanet").order_by("pk"))
    hidden = _hidden_datanet_ids(user=user, datanets=[v.datanet for v in used])
    first = lines.index(CARD_TABLE_HEADER) + 2  # after the header and its |---| line
    for index, used_version in enumerate(used, start=first):
        if used_version.datanet_id in hidden and index < len(lines) and lines[index].startswith("| "):
            lines[index] = f"| {PRIVATE_DATANET} | {used_version.number} | `{used_version.manifest_hash}` |"
    return "\n".join(lines)


def model_lineage_for(*, user, model: TrainedModel) -> list[dict]:
    """The model's versions, oldest first, each with what it was trained on (a private datanet the user may not see
    is named "a private datanet"), what it started from, when, and its result: the page's "v1 -> v2" lineage."""
    versions = list(
        model.versions.select_related("job__parent_version").prefetch_related("job__datanet_versions__datanet")
        .order_by("number")
    )  # fmt: skip
    used = {v.datanet_id: v.datanet for version in versions for v in version.job.datanet_versions.all()}
    hidden = _hidden_datanet_ids(user=user, datanets=used.values())
    lineage = []
    for version in versions:
        data = [
            f"{PRIVATE_DATANET if v.datanet_id in hidden else v.datanet.name} v{v.number}"
            for v in sorted(version.job.datanet_versions.all(), key=lambda v: v.pk)
        ]
        parent = version.job.parent_version
        lineage.append(
            {
                "version": version,
                "data": data,
                "from_number": parent.number if parent and parent.model_id == model.pk else None,
                "verdict": (version.metrics.get("verdict") or {}).get("level"),
                "eval_loss": version.metrics.get("eval_loss"),
                "token_f1": version.metrics.get("token_f1"),
            }
        )
    return lineage


def inference_get_for(*, user, inference_id: int) -> Inference:
    """A past answer, for the caller who asked for it only; raises Inference.DoesNotExist for anyone else."""
    return Inference.objects.select_related("model", "model_version").get(pk=inference_id, caller_id=user.pk)


# --- Exports -------------------------------------------------------------------------------------------------------


def model_exportable_by(*, user, model: TrainedModel) -> bool:
    """The owner (and staff) may export their model; others only a public published model whose owner allows it.
    A private model is never exported for anyone else."""
    if user.is_authenticated and (user.is_staff or model.owner_id == user.pk):
        return True
    return (
        model.allow_exports
        and model.visibility == TrainedModel.Visibility.PUBLIC
        and model.status == TrainedModel.Status.PUBLISHED
    )


def export_get_for(*, user, export_id: int) -> ModelExport:
    """Raises ModelExport.DoesNotExist for an export of a model the user may not export (as if it did not exist)."""
    export = ModelExport.objects.select_related("version__model__base_model", "version__model__owner").get(pk=export_id)
    if not model_exportable_by(user=user, model=export.version.model):
        raise ModelExport.DoesNotExist
    return export


def exports_of_version(*, version: ModelVersion) -> dict[str, ModelExport]:
    """format -> export of this version (only the formats asked for so far)."""
    return {export.format: export for export in ModelExport.objects.filter(version=version)}


def evaluations_of_job(*, user, job_id: int):
    """The "evaluate again" runs of the model the user's job made, newest first (FineTuneJob.DoesNotExist when the
    job is not the user's)."""
    FineTuneJob.objects.filter(owner=user).only("pk").get(pk=job_id)
    return (
        ModelEvaluation.objects.filter(version__job_id=job_id, requested_by=user)
        .select_related("version__model")
        .prefetch_related("test_versions__datanet")
        .defer("upload_rows", "samples")
    )


def evaluation_get_for(*, user, evaluation_id: int):
    """One of the user's evaluations (ModelEvaluation.DoesNotExist otherwise)."""
    return (
        ModelEvaluation.objects.select_related("version__model", "version__job")
        .prefetch_related("test_versions__datanet")
        .defer("upload_rows")
        .get(pk=evaluation_id, requested_by=user)
    )
