"""Model factory writes: base-model registration, fine-tuning jobs (launch, control, run, reap), trained models."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from modelfactory.models import BaseModel, FineTuneEvent, FineTuneJob, ModelVersion, TrainedModel
from modelfactory.training import model_files

logger = logging.getLogger(__name__)


def base_model_register(
    *,
    path: Path | str,
    name: str = "",
    slug: str = "",
    licence: str = "",
    source: str = "",
    make_default: bool = False,
) -> BaseModel:
    """Registers (or updates) a local model folder. Raises ModelFilesError, naming what is missing."""
    folder = Path(path).expanduser().resolve()
    info = model_files.inspect_model_dir(folder)
    name = name.strip() or folder.name
    slug = slug.strip() or slugify(name)[:100]
    with transaction.atomic():
        if make_default:
            BaseModel.objects.filter(is_default=True).exclude(slug=slug).update(is_default=False)
        model, _ = BaseModel.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "path": str(folder),
                "parameters": info.parameters,
                "context_length": info.context_length,
                "architecture": info.architecture,
                "licence": licence,
                "source": source or str(folder),
                "is_default": make_default,
                "is_active": True,
            },
        )
    return model


def base_model_ensure_default(*, progress: Callable[[str], None] = print) -> BaseModel:
    """Converts the bundled SmolLM2 GGUF once under MF_BASE_MODEL_DIR and registers it as the default.

    Cheap when already done: the converted folder is found and the row is reused."""
    existing = BaseModel.objects.filter(slug=model_files.DEFAULT_SLUG).first()
    target = Path(settings.MF_BASE_MODEL_DIR) / model_files.DEFAULT_SLUG
    if existing and model_files.is_converted(Path(existing.path)):
        return existing
    gguf = model_files.find_default_gguf()
    model_files.convert_gguf(gguf, target, progress=progress)
    return base_model_register(
        path=target,
        name=model_files.DEFAULT_NAME,
        slug=model_files.DEFAULT_SLUG,
        licence=model_files.DEFAULT_LICENCE,
        source=f"{model_files.DEFAULT_PACKAGE}: {gguf.name}",
        make_default=True,
    )


# --- Fine-tuning jobs ---------------------------------------------------------------------------------------------


class LaunchError(Exception):
    """The launch was refused; `errors` maps a form/API field to a plain-language message. Nothing was created."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


class JobStateError(Exception):
    """The job is not in a state that allows the requested change."""


def finetune_launch(
    *,
    user,
    base_model_slug: str,
    version_ids: list[int],
    preset: str,
    hyperparameters: dict[str, Any] | None = None,
    name: str = "",
    idempotency_key: str,
) -> tuple[FineTuneJob, bool]:
    """Validates everything, creates a queued job and enqueues it after commit. Returns (job, created).

    The same idempotency key from the same user returns the job created the first time (a double-submitted form
    or a retried API call launches one job). Raises LaunchError with per-field messages; nothing is created then."""
    from modelfactory.selectors import versions_usable_by
    from modelfactory.training.presets import PRESETS, validate_hyperparameters

    existing = FineTuneJob.objects.filter(owner=user, idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing, False

    errors: dict[str, str] = {}
    base = BaseModel.objects.filter(slug=base_model_slug, is_active=True).first()
    if base is None:
        errors["base_model"] = f"There is no base model called “{base_model_slug}”."
    else:
        try:
            model_files.inspect_model_dir(Path(base.path))
        except model_files.ModelFilesError as exc:
            errors["base_model"] = f"The files of {base.name} are missing or broken: {exc}"
    if preset not in PRESETS:
        errors["preset"] = f"Choose one of: {', '.join(PRESETS)}."
        preset = "balanced"
    hp, hp_errors = validate_hyperparameters(hyperparameters or {}, preset=preset)
    errors.update({f"hyperparameters.{field}": message for field, message in hp_errors.items()})
    if base is not None and "max_length" not in hp_errors and hp.get("max_length", 0) > base.context_length:
        if (hyperparameters or {}).get("max_length") in (None, ""):
            hp["max_length"] = base.context_length  # the preset's default does not fit this model: use all it reads
        else:
            errors["hyperparameters.max_length"] = (
                f"must be at most {base.context_length}, the longest input {base.name} can read"
            )
    versions, version_error = versions_usable_by(user=user, version_ids=version_ids)
    if version_error:
        errors["datanet_versions"] = version_error
    elif sum(v.row_count for v in versions) == 0:
        errors["datanet_versions"] = "The chosen datanet versions have no rows. Publish a version with rows first."
    if errors:
        raise LaunchError(errors)

    name = (name or "").strip() or f"{base.name} on {', '.join(f'{v.datanet.name} v{v.number}' for v in versions)}"
    try:
        with transaction.atomic():
            job = FineTuneJob.objects.create(
                owner=user,
                name=name[:200],
                base_model=base,
                preset=preset,
                hyperparameters=hp,
                idempotency_key=idempotency_key,
                message="Waiting for a free training worker.",
            )
            job.datanet_versions.set(versions)
            FineTuneEvent.objects.create(job=job, kind=FineTuneEvent.Kind.PHASE, data={"phase": "queued"})
            transaction.on_commit(lambda: _enqueue(job.pk))
    except IntegrityError:  # a concurrent submit with the same key won the race
        return FineTuneJob.objects.get(owner=user, idempotency_key=idempotency_key), False
    job.refresh_from_db()
    return job, True


def _enqueue(job_id: int, *, resume: bool = False) -> None:
    """Hands the job to the gpu queue. A broker that is down leaves the job failed with a clear message, so
    nothing says "queued" while no worker will ever see it."""
    from modelfactory.tasks import finetune_run_task

    try:
        finetune_run_task.apply_async(args=[job_id], kwargs={"resume": resume}, retry=False)
    except Exception as exc:
        logger.warning("could not enqueue fine-tune job %s: %s", job_id, exc)
        FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.QUEUED).update(
            status=FineTuneJob.Status.FAILED,
            finished_at=timezone.now(),
            message="The job queue could not be reached, so training did not start. Nothing was lost: "
            "launch again in a minute, or ask an operator to check the broker (see /healthz).",
        )


def finetune_control(*, user, job_id: int, mode: str) -> FineTuneJob:
    """ "stop" keeps the adapter trained so far; "cancel" discards everything. A queued job ends at once."""
    if mode not in (FineTuneJob.Control.STOP, FineTuneJob.Control.CANCEL):
        raise JobStateError("Choose “stop” (keep the adapter) or “cancel” (discard).")
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job_id, owner=user)
        if job.status == FineTuneJob.Status.QUEUED:
            job.status = FineTuneJob.Status.CANCELLED
            job.control = mode
            job.finished_at = timezone.now()
            job.message = "Cancelled before training started."
            job.save(update_fields=["status", "control", "finished_at", "message"])
        elif job.status == FineTuneJob.Status.RUNNING:
            job.control = mode
            job.message = (
                "Stopping at the next step; the adapter trained so far will be kept and evaluated."
                if mode == FineTuneJob.Control.STOP
                else "Cancelling at the next step; nothing will be kept."
            )
            job.save(update_fields=["control", "message"])
        else:
            raise JobStateError(f"This job has already ended ({job.get_status_display().lower()}).")
    return job


def _claim(job_id: int, *, hostname: str) -> FineTuneJob | None:
    """Conditional update: only one worker ever runs a job. A resume may take over a running job whose heartbeat
    went stale (its worker died)."""
    now = timezone.now()
    claimable = FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.QUEUED)
    updated = claimable.update(
        status=FineTuneJob.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        worker=hostname,
        attempts=F("attempts") + 1,
        message="Training started.",
    )
    if not updated:
        stale = now - timedelta(seconds=settings.MF_JOB_STALE_SECONDS)
        updated = FineTuneJob.objects.filter(
            pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale
        ).update(
            heartbeat_at=now, worker=hostname, attempts=F("attempts") + 1, message="Resuming from the last checkpoint."
        )
    return FineTuneJob.objects.get(pk=job_id) if updated else None


class _JobProgress:
    """Writes the training loop's events to the job and answers its stop/cancel polls. A heartbeat thread keeps
    `heartbeat_at` fresh through long phases (loading, evaluation) so the reaper only catches dead workers."""

    def __init__(self, job: FineTuneJob):
        self.job_id = job.pk
        self.last_poll = 0.0
        self.control_value = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job.pk}-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        from django.db import connection

        while not self._stop.wait(settings.MF_JOB_HEARTBEAT_SECONDS):
            try:
                FineTuneJob.objects.filter(pk=self.job_id, status=FineTuneJob.Status.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
            except Exception as exc:  # the database may be restarting; the next beat retries
                logger.warning("job %s heartbeat failed: %s", self.job_id, exc)
        connection.close()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if kind == "phase":
            FineTuneEvent.objects.create(job_id=self.job_id, kind=FineTuneEvent.Kind.PHASE, data=event)
            fields["phase"] = event["phase"]
            fields["message"] = PHASE_MESSAGES.get(event["phase"], "")
        elif kind == "train":
            FineTuneEvent.objects.create(
                job_id=self.job_id,
                kind=FineTuneEvent.Kind.TRAIN,
                step=event["step"],
                loss=event.get("loss"),
                lr=event.get("lr"),
                tokens_per_s=event.get("tokens_per_s"),
                eta_s=event.get("eta_s"),
                memory_bytes=event.get("memory_bytes"),
                data={"epoch": event.get("epoch")},
            )
            total = max(1, int(event.get("total_steps") or 1))
            fields.update(step=event["step"], total_steps=total, progress=min(1.0, event["step"] / total))
        elif kind == "eval":
            FineTuneEvent.objects.create(
                job_id=self.job_id,
                kind=FineTuneEvent.Kind.EVAL,
                step=event.get("step", 0),
                eval_loss=event.get("eval_loss"),
                data={"epoch": event.get("epoch")},
            )
        FineTuneJob.objects.filter(pk=self.job_id).update(**fields)

    def control(self) -> str | None:
        if time.monotonic() - self.last_poll >= 1.0:
            self.last_poll = time.monotonic()
            self.control_value = FineTuneJob.objects.filter(pk=self.job_id).values_list("control", flat=True)[0]
        return self.control_value or None


PHASE_MESSAGES = {
    "loading": "Loading the base model and preparing your rows.",
    "training": "Training.",
    "evaluating": "Comparing the base model and the fine-tuned one on held-out rows.",
    "saving": "Saving the adapter and writing the model card.",
    "indexing": "Building the attribution index over the training rows.",
}


def _finish(job_id: int, **fields) -> None:
    fields.setdefault("finished_at", timezone.now())
    FineTuneJob.objects.filter(pk=job_id).update(**fields)


def finetune_run(*, job_id: int, hostname: str, resume: bool = False) -> FineTuneJob | None:
    """Runs a job in this worker: claim, train, evaluate, store artifacts and the trained model. Every ending is
    written to the job with a plain-language message; returns None when another worker owns the job."""
    from modelfactory.selectors import finetune_rows
    from modelfactory.training.finetune import FinetuneSpec, run_finetune
    from modelfactory.training.loop import Cancelled, TrainingError

    job = _claim(job_id, hostname=hostname)
    if job is None:
        return None
    resume = resume or job.attempts > 1
    versions = list(job.datanet_versions.select_related("datanet").order_by("pk"))
    rows, contributors = finetune_rows(versions=versions)
    spec = FinetuneSpec(
        base_model_dir=Path(job.base_model.path),
        rows=rows,
        hyperparameters=job.hyperparameters,
        preset=job.preset,
        base_model_name=job.base_model.name,
        model_name=job.name,
        datanet_versions=[
            {"name": v.datanet.name, "version": v.number, "manifest_hash": v.manifest_hash} for v in versions
        ],
        contributors=contributors,
        device=settings.MF_TRAINING_DEVICE,
    )
    try:
        with _JobProgress(job) as progress:
            result = run_finetune(
                spec, workdir=job.workdir, on_event=progress.on_event, control=progress.control, resume=resume
            )
    except Cancelled:
        shutil.rmtree(job.workdir, ignore_errors=True)
        _finish(job_id, status=FineTuneJob.Status.CANCELLED, message="Cancelled: nothing was kept.")
        return FineTuneJob.objects.get(pk=job_id)
    except TrainingError as exc:
        _finish(job_id, status=FineTuneJob.Status.FAILED, message=str(exc))
        return FineTuneJob.objects.get(pk=job_id)
    except Exception:
        logger.exception("fine-tune job %s crashed", job_id)
        _finish(
            job_id,
            status=FineTuneJob.Status.FAILED,
            message="Training stopped because of an unexpected error on our side. It has been logged; "
            "try again, and tell an operator if it happens twice.",
        )
        return FineTuneJob.objects.get(pk=job_id)

    stage_errors = _run_post_training_stages(job_id=job_id, result=result)

    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job_id)
        trained = trained_model_create_from_job(job=job, result=result)
        stopped = result.stopped_early
        job.status = FineTuneJob.Status.SUCCEEDED
        job.metrics = result.metrics
        job.samples = result.samples
        job.report = {**result.report, "stage_errors": stage_errors} if stage_errors else result.report
        job.progress = 1.0
        job.phase = "done"
        job.finished_at = timezone.now()
        job.message = _success_message(result.metrics, stopped=stopped, slug=trained.slug) + "".join(
            f" Note: {error}" for error in stage_errors.values()
        )
        job.save()
    return job


def _run_post_training_stages(*, job_id: int, result) -> dict[str, str]:
    """Runs the stages other apps registered (modelfactory.hooks), each as a phase with its own progress. A stage
    that fails does not throw the trained adapter away: its error is kept and shown with the result."""
    from modelfactory.hooks import post_training_stages

    errors: dict[str, str] = {}
    for stage in post_training_stages:
        FineTuneJob.objects.filter(pk=job_id).update(phase=stage.name, message=stage.label, heartbeat_at=timezone.now())
        FineTuneEvent.objects.create(job_id=job_id, kind=FineTuneEvent.Kind.PHASE, data={"phase": stage.name})

        def on_progress(done: int, total: int, stage=stage) -> None:
            FineTuneJob.objects.filter(pk=job_id).update(
                message=f"{stage.label} ({done} of {total})", heartbeat_at=timezone.now()
            )

        try:
            stage.run(job=FineTuneJob.objects.get(pk=job_id), result=result, on_progress=on_progress)
        except Exception as exc:
            logger.exception("post-training stage %s of job %s failed", stage.name, job_id)
            errors[stage.name] = f"{stage.label} did not finish ({exc.__class__.__name__}: {exc})."
    return errors


def _success_message(metrics: dict[str, Any], *, stopped: bool, slug: str) -> str:
    base, tuned = metrics.get("base_eval_loss"), metrics.get("eval_loss")
    start = "Stopped early as you asked; the adapter trained so far was kept. " if stopped else "Training finished. "
    if base is not None and tuned is not None:
        verdict = "better than" if tuned < base else "not better than"
        return (
            start
            + f"On held-out rows the fine-tuned model's loss is {tuned:.3f}, {verdict} the base model's {base:.3f}."
        )
    return start + "There were too few rows to hold some out for evaluation."


def trained_model_create_from_job(*, job: FineTuneJob, result) -> TrainedModel:
    base_slug = slugify(job.name)[:100] or f"model-{job.pk}"
    slug = base_slug
    n = 2
    while TrainedModel.objects.filter(slug=slug).exists():
        slug = f"{base_slug[:100]}-{n}"
        n += 1
    trained = TrainedModel.objects.create(owner=job.owner, slug=slug, name=job.name, base_model=job.base_model)
    ModelVersion.objects.create(
        model=trained,
        number=1,
        job=job,
        adapter_path=str(result.adapter_dir),
        zip_path=str(result.zip_path),
        artifact_hash=result.artifact_hash,
        model_card=result.model_card,
        metrics=result.metrics,
    )
    return trained


def finetune_reap_stale() -> list[int]:
    """Finds running jobs whose worker stopped beating and either re-queues them to resume from their last
    checkpoint (first time) or fails them with a message (after that). Returns the affected job ids."""
    stale_before = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS)
    stale = list(
        FineTuneJob.objects.filter(status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale_before).values_list(
            "pk", "attempts"
        )
    )
    for job_id, attempts in stale:
        if attempts < settings.MF_JOB_MAX_ATTEMPTS:
            updated = FineTuneJob.objects.filter(
                pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale_before
            ).update(
                heartbeat_at=timezone.now(), message="The training worker stopped; resuming from the last checkpoint."
            )
            if updated:
                transaction.on_commit(lambda job_id=job_id: _enqueue(job_id, resume=True))
        else:
            FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.RUNNING).update(
                status=FineTuneJob.Status.FAILED,
                finished_at=timezone.now(),
                message="The training worker stopped unexpectedly several times, so the job was ended. "
                "Launch it again; if it keeps happening, lower the batch size or max length.",
            )
    return [job_id for job_id, _ in stale]
