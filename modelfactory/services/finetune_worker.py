"""Fine-tuning jobs on the training worker: claim a job (or take over one whose worker died, to resume it), train
with a heartbeat and the stop/cancel polls, run the post-training stages, and record the trained model."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Max, Value, When
from django.utils import timezone
from django.utils.text import slugify

from modelfactory import hooks, selectors
from modelfactory.models import FineTuneEvent, FineTuneJob, ModelVersion, TrainedModel
from modelfactory.services.finetune_jobs import finetune_fail_if_out_of_memory
from modelfactory.training import memory
from modelfactory.training.verdict import judge

logger = logging.getLogger(__name__)


def _claim(job_id: int, *, hostname: str) -> FineTuneJob | None:
    """Conditional update: only one worker ever runs a job. A resume may take over a running job whose heartbeat
    went stale (its worker died)."""
    now = timezone.now()
    claimable = FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.QUEUED)
    updated = claimable.update(
        status=FineTuneJob.Status.RUNNING,
        phase="loading",  # never "running" while still showing the "queued" phase
        started_at=now,
        heartbeat_at=now,
        worker=hostname,
        attempts=F("attempts") + 1,
        message=Case(
            When(attempts__gt=0, then=Value("Resuming from the last checkpoint.")), default=Value("Training started.")
        ),
    )
    if not updated:
        stale = now - timedelta(seconds=settings.MF_JOB_STALE_SECONDS)
        if finetune_fail_if_out_of_memory(job_id=job_id, stale_before=stale):
            return None  # its worker was killed for memory: running it again would end the same way
        updated = FineTuneJob.objects.filter(
            pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale
        ).update(
            heartbeat_at=now, worker=hostname, attempts=F("attempts") + 1, message="Resuming from the last checkpoint."
        )
    return FineTuneJob.objects.get(pk=job_id) if updated else None


class _MemorySampler:
    """The most resident memory this process held since the last beat, and what it could hold then."""

    MEMORY_STEP = 0.05  # beat at once when the memory grew by this share of the limit since the last beat,
    WATCHED = 0.5  # once it holds more than this share of the limit

    def __init__(self, *, simulated: int = 0):
        self.simulated = simulated
        self.peak = 0
        self.limit = 0
        self._written = 0

    def sample(self) -> None:
        rss = memory.rss_bytes()
        if rss >= self.peak:
            self.peak, self.limit = rss, memory.process_limit_bytes(simulated=self.simulated)

    def grew(self) -> bool:
        watched = self.peak >= self.WATCHED * self.limit
        return watched and self.peak - self._written >= self.MEMORY_STEP * max(1, self.limit)

    def written(self) -> None:
        self._written = self.peak
        self.peak = 0


class _JobProgress:
    """Writes the training loop's events to the job and answers its stop/cancel polls. A heartbeat thread keeps
    `heartbeat_at` fresh through long phases (loading, evaluation) so the reaper only catches dead workers."""

    POLL_SECONDS = 1.0  # the control column is read at most this often; a phase change reads it at once

    def __init__(self, job: FineTuneJob, *, gpu: bool = False):
        self.job_id = job.pk
        self.peaks = memory.StagePeaks(gpu=gpu)  # each stage's peak, kept with the result to calibrate estimates
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
        """Beats every MF_JOB_HEARTBEAT_SECONDS with the worker's memory; samples the memory every second and beats
        at once when it grew by MEMORY_STEP of the limit, so a worker killed for memory leaves that on its job."""
        memory = _MemorySampler(simulated=settings.MF_MEMORY_LIMIT_MB * 2**20)
        last_beat = time.monotonic()  # the claim has just beaten
        while True:
            memory.sample()
            if time.monotonic() - last_beat >= settings.MF_JOB_HEARTBEAT_SECONDS or memory.grew():
                try:
                    FineTuneJob.objects.filter(pk=self.job_id, status=FineTuneJob.Status.RUNNING).update(
                        heartbeat_at=timezone.now(), memory_bytes=memory.peak, memory_limit_bytes=memory.limit
                    )
                    memory.written()
                    last_beat = time.monotonic()
                except Exception as exc:  # the database may be restarting; the next beat retries
                    logger.warning("job %s heartbeat failed: %s", self.job_id, exc)
            if self._stop.wait(min(1.0, settings.MF_JOB_HEARTBEAT_SECONDS)):
                break
        connection.close()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if kind == "phase":
            self.peaks.phase(event["phase"])
            FineTuneEvent.objects.create(job_id=self.job_id, kind=FineTuneEvent.Kind.PHASE, data=event)
            fields["phase"] = event["phase"]
            fields["message"] = PHASE_MESSAGES.get(event["phase"], "")
            self.last_poll = 0.0
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
        if time.monotonic() - self.last_poll >= self.POLL_SECONDS:
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
    # torch and transformers: only a training worker loads them (and tests patch finetune.run_finetune)
    from modelfactory.training.finetune import FinetuneSpec, run_finetune
    from modelfactory.training.loop import Cancelled, TrainingError

    job = _claim(job_id, hostname=hostname)
    if job is None:
        return None
    resume = resume or job.attempts > 1
    versions = list(job.datanet_versions.select_related("datanet").order_by("pk"))
    rows, contributors = selectors.finetune_rows(versions=versions)
    spec = FinetuneSpec(
        base_model_dir=Path(job.base_model.path),
        rows=rows,
        hyperparameters=job.hyperparameters,
        preset=job.preset,
        init_adapter_dir=Path(job.parent_version.adapter_path) if job.parent_version_id else None,
        test_rows=selectors.finetune_rows(versions=list(job.test_versions.order_by("pk")))[0],
        base_model_name=job.base_model.name,
        model_name=job.name,
        datanet_versions=[
            {"name": v.datanet.name, "version": v.number, "manifest_hash": v.manifest_hash} for v in versions
        ],
        contributors=contributors,
        device=settings.MF_TRAINING_DEVICE,
        checkpoint_every=settings.MF_JOB_CHECKPOINT_EVERY,
        memory_budget_fraction=settings.MF_MEMORY_BUDGET_FRACTION,
        memory_limit_bytes=settings.MF_MEMORY_LIMIT_MB * 2**20,
    )
    hardware, device_type = _hardware(job.hyperparameters)
    with _JobProgress(job, gpu=device_type == "cuda") as progress:  # heartbeats through the later stages too
        try:
            result = run_finetune(
                spec, workdir=job.workdir, on_event=progress.on_event, control=progress.control, resume=resume
            )
        except Cancelled:
            return _end_cancelled(job)
        except TrainingError as exc:
            _finish(job_id, status=FineTuneJob.Status.FAILED, message=str(exc))
            return FineTuneJob.objects.get(pk=job_id)
        except Exception as exc:
            return _end_crashed(job_id, exc)
        try:
            stage_errors = _run_post_training_stages(job_id=job_id, result=result, peaks=progress.peaks)
        except _CancelledInStage:
            return _end_cancelled(job)
        peaks = progress.peaks.finish()

    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job_id)
        if job.control == FineTuneJob.Control.CANCEL:  # asked for during the last stage: still nothing is kept
            return _end_cancelled(job)
        trained = trained_model_create_from_job(job=job, result=result)
        stopped = result.stopped_early
        job.status = FineTuneJob.Status.SUCCEEDED
        job.metrics = {**result.metrics, "hardware": hardware, **({"peak_memory": peaks} if peaks else {})}
        job.samples = result.samples
        job.report = {**result.report, "stage_errors": stage_errors} if stage_errors else result.report
        job.progress = 1.0
        job.phase = "done"
        job.finished_at = timezone.now()
        job.message = _success_message(
            result.metrics, stopped=stopped, slug=trained.slug, resumed_from=result.resumed_from
        ) + "".join(f" Note: {error}" for error in stage_errors.values())
        job.save()
    return job


def _end_crashed(job_id: int, exc: Exception) -> FineTuneJob:
    """Training raised something other than a cancel or a worded TrainingError: the job fails with a plain message
    (what ran out and what to lower, for an out-of-memory error)."""
    if _out_of_memory(exc):  # raised outside the training step (which says so itself): loading, evaluation
        logger.warning("fine-tune job %s ran out of memory: %s", job_id, exc)
        job = FineTuneJob.objects.get(pk=job_id)
        message = memory.out_of_memory_message(phase=job.phase, hp=job.hyperparameters)
        _finish(job_id, status=FineTuneJob.Status.FAILED, message=message)
        return FineTuneJob.objects.get(pk=job_id)
    logger.exception("fine-tune job %s crashed", job_id)
    _finish(
        job_id,
        status=FineTuneJob.Status.FAILED,
        message="Training stopped because of an unexpected error on our side. It has been logged; "
        "try again, and tell an operator if it happens twice.",
    )
    return FineTuneJob.objects.get(pk=job_id)


def _out_of_memory(exc: BaseException) -> bool:
    from modelfactory.training.failures import is_out_of_memory  # loads torch, as the training worker has

    return is_out_of_memory(exc)


def _hardware(hyperparameters: dict[str, Any]) -> tuple[str, str]:
    """This worker's hardware in the words the estimate uses (runs on the same hardware calibrate the next ones),
    and the device type it trains on ("cpu", "cuda"; "" when it cannot train)."""
    from modelfactory.training.devices import HardwareError, describe_hardware, detect_capabilities

    caps = detect_capabilities()
    try:
        plan, _ = selectors.training_plan(caps=caps, quantization=hyperparameters.get("quantization", "none"))
    except HardwareError:
        return "", ""
    return describe_hardware(plan, caps), plan.device_type


class _CancelledInStage(Exception):  # noqa: N818 (a request, like training's Cancelled)
    """The owner cancelled the job during (or just before) a post-training stage."""


def _cancel_requested(job_id: int) -> bool:
    return FineTuneJob.objects.filter(pk=job_id, control=FineTuneJob.Control.CANCEL).exists()


def _end_cancelled(job: FineTuneJob) -> FineTuneJob:
    """Nothing is kept: what the stages wrote is discarded (their `discard` hooks), then the workdir."""
    for stage in hooks.post_training_stages:
        if stage.discard is not None:
            try:
                stage.discard(job=job)
            except Exception:
                logger.exception("discarding stage %s of cancelled job %s failed", stage.name, job.pk)
    shutil.rmtree(job.workdir, ignore_errors=True)
    _finish(job.pk, status=FineTuneJob.Status.CANCELLED, message="Cancelled: nothing was kept.")
    return FineTuneJob.objects.get(pk=job.pk)


def _run_post_training_stages(*, job_id: int, result, peaks: memory.StagePeaks | None = None) -> dict[str, str]:
    """Runs the stages other apps registered (modelfactory.hooks), each as a phase with its own progress. A stage
    that fails does not throw the trained adapter away: its error is kept and shown with the result. A cancel is
    honoured before each stage and at each progress report (raises _CancelledInStage)."""
    errors: dict[str, str] = {}
    for stage in hooks.post_training_stages:
        if _cancel_requested(job_id):
            raise _CancelledInStage
        FineTuneJob.objects.filter(pk=job_id).update(phase=stage.name, message=stage.label, heartbeat_at=timezone.now())
        FineTuneEvent.objects.create(job_id=job_id, kind=FineTuneEvent.Kind.PHASE, data={"phase": stage.name})
        if peaks is not None:
            peaks.phase(stage.name)

        def on_progress(done: int, total: int, stage=stage) -> None:
            FineTuneJob.objects.filter(pk=job_id).update(
                message=f"{stage.label} ({done} of {total})", heartbeat_at=timezone.now()
            )
            if _cancel_requested(job_id):
                raise _CancelledInStage

        try:
            stage.run(job=FineTuneJob.objects.get(pk=job_id), result=result, on_progress=on_progress)
        except _CancelledInStage:
            raise
        except Exception as exc:
            logger.exception("post-training stage %s of job %s failed", stage.name, job_id)
            errors[stage.name] = f"{stage.label} did not finish ({exc.__class__.__name__}: {exc})."
            if _out_of_memory(exc):  # the adapter is kept; the note says what ran out and what to lower
                hp = FineTuneJob.objects.values_list("hyperparameters", flat=True).get(pk=job_id)
                errors[stage.name] = memory.out_of_memory_message(phase=stage.name, hp=hp, kept=True)
    return errors


def _success_message(metrics: dict[str, Any], *, stopped: bool, slug: str, resumed_from: int = 0) -> str:
    start = "Stopped early as you asked; the adapter trained so far was kept. " if stopped else "Training finished. "
    if resumed_from:
        start += (
            f"The training worker stopped during the run; training resumed from the checkpoint at step "
            f"{resumed_from} instead of starting over. "
        )
    verdict = metrics.get("verdict") or judge(metrics)
    return start + verdict["headline"] + "".join(f" {advice}" for advice in verdict["advice"])


def trained_model_create_from_job(*, job: FineTuneJob, result) -> TrainedModel:
    """A new model with the job's adapter as version 1, or, for a job that continued training a model, that
    model's next version (same model, same address: what it serves and sells moves to the new version)."""
    if job.parent_version_id is not None:
        trained = TrainedModel.objects.select_for_update().get(pk=job.parent_version.model_id)
        number = (trained.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        _version_create(trained=trained, number=number, job=job, result=result)
        return trained
    base_slug = slugify(job.name)[:100] or f"model-{job.pk}"
    slug = base_slug
    n = 2
    while TrainedModel.objects.filter(slug=slug).exists():
        slug = f"{base_slug[:100]}-{n}"
        n += 1
    trained = TrainedModel.objects.create(owner=job.owner, slug=slug, name=job.name, base_model=job.base_model)
    _version_create(trained=trained, number=1, job=job, result=result)
    return trained


def _version_create(*, trained: TrainedModel, number: int, job: FineTuneJob, result) -> ModelVersion:
    return ModelVersion.objects.create(
        model=trained,
        number=number,
        job=job,
        adapter_path=str(result.adapter_dir),
        zip_path=str(result.zip_path),
        artifact_hash=result.artifact_hash,
        model_card=result.model_card,
        metrics=result.metrics,
    )
