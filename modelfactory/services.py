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
from django.db.models import Case, F, Value, When
from django.template.defaultfilters import pluralize
from django.utils import timezone
from django.utils.text import slugify

from ledger.calc.money import format_credits as _credits
from modelfactory.models import BaseModel, FineTuneEvent, FineTuneJob, Inference, ModelVersion, TrainedModel
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
    if "quantization" not in hp_errors:
        from modelfactory.selectors import quantization_problem

        problem = quantization_problem(hp["quantization"])
        if problem:
            errors["hyperparameters.quantization"] = problem
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
        message=Case(
            When(attempts__gt=0, then=Value("Resuming from the last checkpoint.")), default=Value("Training started.")
        ),
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
        checkpoint_every=settings.MF_JOB_CHECKPOINT_EVERY,
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
        job.message = _success_message(
            result.metrics, stopped=stopped, slug=trained.slug, resumed_from=result.resumed_from
        ) + "".join(f" Note: {error}" for error in stage_errors.values())
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


def _success_message(metrics: dict[str, Any], *, stopped: bool, slug: str, resumed_from: int = 0) -> str:
    base, tuned = metrics.get("base_eval_loss"), metrics.get("eval_loss")
    start = "Stopped early as you asked; the adapter trained so far was kept. " if stopped else "Training finished. "
    if resumed_from:
        start += (
            f"The training worker stopped during the run; training resumed from the checkpoint at step "
            f"{resumed_from} instead of starting over. "
        )
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


RESUME_QUEUED_MESSAGE = (
    "The training worker stopped unexpectedly; the job is queued again and will resume from its last checkpoint."
)


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
            # Back to the queue, so that the next free worker claims it at once (a job left "running" with a fresh
            # heartbeat could not be claimed by an idle worker that picks the message up right away).
            updated = FineTuneJob.objects.filter(
                pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale_before
            ).update(
                status=FineTuneJob.Status.QUEUED,
                heartbeat_at=timezone.now(),
                worker="",
                message=RESUME_QUEUED_MESSAGE,
            )
            if updated:
                transaction.on_commit(lambda job_id=job_id: _enqueue(job_id, resume=True))
        else:
            FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.RUNNING).update(
                status=FineTuneJob.Status.FAILED,
                finished_at=timezone.now(),
                message=f"The training worker stopped unexpectedly ({attempts} {pluralize(attempts, 'time,times')}), "
                "so the job was ended. Launch it again; if it keeps happening, lower the batch size or max length.",
            )
    return [job_id for job_id, _ in stale]


# --- Publishing and inference -------------------------------------------------------------------------------------
#
# Who pays what, and when:
# - A caller pays for the tokens of its own prompt plus the tokens of the answer that reached it, at the model's
#   price when the call was made: fee = ceil(price_per_1k_tokens * (prompt_tokens + completion_tokens) / 1000)
#   micro-credits. Before generating, the most the call can cost (the answer at max_new_tokens) is held from the
#   caller's wallet in the transaction that creates the Inference row; a caller who cannot cover it gets nothing.
# - Owners pay for their own models like anyone else (the fee goes mostly back to them at settlement) and may also
#   call their draft (unpublished) models, e.g. in the playground; other people call only published public models.
# - A failed generation, a worker that never answers, or a timeout: the Inference is failed and the hold released
#   in full. Nothing is owed.
# - A streaming client that goes away mid-answer: generation stops, and the fee covers only the fewest tokens whose
#   text reached the client's connection; the Inference is completed with finish_reason "cancelled" so that
#   attribution settles the delivered part. If the web process dies without saying what it delivered, the tokens
#   the worker generated are billed.
# - The playground's base-model comparison is free, not recorded as an Inference and not attributed.
# - Settlement (hold -> owner, contributors, platform; the unused rest back to the caller) is done by the
#   inference-completed handlers (the attribution app), not here.


class ServingRefused(Exception):
    """The call was refused before or while generating; nothing is owed. `status` is the HTTP status to answer
    with, `code` a short machine-readable name, `param` the request field at fault (if any)."""

    def __init__(self, message: str, *, code: str, status: int = 400, param: str | None = None, details=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param
        self.details = details or {}


def fee_for_tokens(*, price_per_1k_tokens: int, tokens: int) -> int:
    """Micro-credits for `tokens` tokens, rounded up to the micro-credit."""
    return -(-price_per_1k_tokens * tokens // 1000)


def _owned_model(*, user, slug: str) -> TrainedModel:
    model = TrainedModel.objects.filter(slug=slug).first()
    if model is None or not (model.owner_id == user.pk or user.is_staff):
        raise ServingRefused(f"You have no model called “{slug}”.", code="not_found", status=404)
    return model


def trained_model_publish(*, user, slug: str, price_per_1k_tokens: int, visibility: str) -> TrainedModel:
    """Publishes the model's latest version at a price (micro-credits per 1,000 tokens) within the operators'
    bounds. Publishing again changes price and visibility; calls already made keep the price they were made at."""
    from modelfactory.models import ServingPolicy

    model = _owned_model(user=user, slug=slug)
    if model.latest_version is None:
        raise ServingRefused("This model has no trained version yet, so it cannot be published.", code="no_version")
    policy = ServingPolicy.current()
    if not policy.min_price_per_1k_tokens <= price_per_1k_tokens <= policy.max_price_per_1k_tokens:
        raise ServingRefused(
            f"The price must be between {_credits(policy.min_price_per_1k_tokens)} and "
            f"{_credits(policy.max_price_per_1k_tokens)} credits per 1,000 tokens "
            f"(you asked for {_credits(price_per_1k_tokens)}).",
            code="price_out_of_bounds",
            param="price_per_1k_tokens",
        )
    if visibility not in TrainedModel.Visibility.values:
        raise ServingRefused(
            f"Visibility must be one of {', '.join(TrainedModel.Visibility.values)} (got “{visibility}”).",
            code="invalid_visibility",
            param="visibility",
        )
    with transaction.atomic(durable=True):
        model = TrainedModel.objects.select_for_update().get(pk=model.pk)
        model.price_per_1k_tokens = price_per_1k_tokens
        model.visibility = visibility
        if model.status != TrainedModel.Status.PUBLISHED:
            model.status = TrainedModel.Status.PUBLISHED
            model.published_at = timezone.now()
        model.save(update_fields=["price_per_1k_tokens", "visibility", "status", "published_at"])
    return model


def trained_model_unpublish(*, user, slug: str) -> TrainedModel:
    """Back to draft: only the owner can call it now. Past inferences are kept."""
    model = _owned_model(user=user, slug=slug)
    with transaction.atomic(durable=True):
        TrainedModel.objects.filter(pk=model.pk).update(status=TrainedModel.Status.DRAFT)
    model.refresh_from_db()
    return model


_tokenizer_lock = threading.Lock()


def _count_prompt_tokens(*, base: BaseModel, messages: list[dict]) -> list[int]:
    """The prompt's token ids exactly as the inference worker builds them (chat template, assistant turn open)."""
    from modelfactory.selectors import base_tokenizer

    with _tokenizer_lock:
        tokenizer = base_tokenizer(base.path)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _clean_messages(*, messages, prompt) -> list[dict]:
    from modelfactory.serving.engine import ROLES

    if messages is not None and prompt is not None:
        raise ServingRefused("Send either messages or prompt, not both.", code="invalid_request", param="messages")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ServingRefused("The prompt must be text.", code="invalid_request", param="prompt")
        messages = [{"role": "user", "content": prompt}]
    if not messages:
        raise ServingRefused(
            "The prompt is empty: send a prompt or at least one message.", code="empty_prompt", param="messages"
        )
    if not isinstance(messages, list):
        raise ServingRefused("messages must be a list of {role, content}.", code="invalid_messages", param="messages")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ServingRefused(
                f"Message {index} must be an object with a text content.", code="invalid_messages", param="messages"
            )
        if message.get("role") not in ROLES:
            raise ServingRefused(
                f"Message {index} has role “{message.get('role')}”; use one of {', '.join(ROLES)}.",
                code="invalid_messages",
                param="messages",
            )
        clean.append({"role": message["role"], "content": message["content"]})
    if not any(message["content"].strip() for message in clean):
        raise ServingRefused("The prompt is empty: every message is blank.", code="empty_prompt", param="messages")
    return clean


def _is_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def inference_worker_alive() -> bool:
    """Whether a live worker listens on the inference queue (or generation runs in-process, in tests)."""
    from core.models import WorkerHeartbeat

    if settings.MF_INFERENCE_INLINE:
        return True
    fresh_after = timezone.now() - timedelta(seconds=settings.MF_WORKER_STALE_SECONDS)
    return any("inference" in w.queues for w in WorkerHeartbeat.objects.filter(last_seen__gte=fresh_after))


UNREACHABLE = (
    "The model server is not reachable right now, so nothing was generated and nothing was charged. "
    "Try again in a minute."
)


def model_servable(*, user, slug: str) -> TrainedModel:
    """A model the user may call: published and public, or their own (drafts included)."""
    model = TrainedModel.objects.select_related("base_model").filter(slug=slug).first()
    public = model is not None and model.status == TrainedModel.Status.PUBLISHED
    public = public and model.visibility == TrainedModel.Visibility.PUBLIC
    if model is None or not (public or model.owner_id == user.pk):
        raise ServingRefused(f"There is no published model called “{slug}”.", code="model_not_found", status=404)
    return model


def inference_start(
    *,
    user,
    slug: str,
    source: str,
    messages: list[dict] | None = None,
    prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    stream: bool = False,
) -> Inference:
    """Validates the call, counts the prompt's tokens, and in one transaction creates the pending Inference and
    holds the most it can cost; the worker is handed the job when that transaction commits. Raises ServingRefused
    (nothing created, nothing held)."""
    from ledger.services import InsufficientFunds, hold_create
    from modelfactory.models import Inference, ServingPolicy

    model = model_servable(user=user, slug=slug)
    version = model.latest_version
    if version is None:
        raise ServingRefused("This model has no trained version to answer with.", code="model_not_found", status=404)
    clean = _clean_messages(messages=messages, prompt=prompt)
    if temperature is None:
        temperature = 0.0
    if not _is_number(temperature) or temperature < 0:
        raise ServingRefused(
            f"temperature must be a number of 0 or more; 0 always picks the likeliest word (got {temperature!r}).",
            code="invalid_temperature",
            param="temperature",
        )
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ServingRefused(
            f"top_p must be above 0 and at most 1 (got {top_p!r}).", code="invalid_top_p", param="top_p"
        )
    policy = ServingPolicy.current()
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or not 1 <= max_new_tokens <= policy.max_new_tokens_cap
    ):
        raise ServingRefused(
            f"max_new_tokens must be a whole number from 1 to {policy.max_new_tokens_cap} (got {max_new_tokens!r}).",
            code="invalid_max_new_tokens",
            param="max_new_tokens",
        )
    base = model.base_model
    prompt_ids = _count_prompt_tokens(base=base, messages=clean)
    context = base.context_length
    if len(prompt_ids) >= context:
        raise ServingRefused(
            f"The prompt is {len(prompt_ids)} tokens long; this model reads at most {context} tokens. "
            "Shorten it or start a new conversation.",
            code="prompt_too_long",
            param="messages",
        )
    if max_new_tokens is None:
        max_new_tokens = min(policy.default_max_new_tokens, policy.max_new_tokens_cap, context - len(prompt_ids))
    elif len(prompt_ids) + max_new_tokens > context:
        raise ServingRefused(
            f"The prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({max_new_tokens}) is "
            f"{len(prompt_ids) + max_new_tokens} tokens, over this model's context length of {context}: ask for at "
            f"most {context - len(prompt_ids)} new tokens or shorten the prompt.",
            code="prompt_too_long",
            param="max_new_tokens",
        )
    if not inference_worker_alive():
        raise ServingRefused(UNREACHABLE, code="server_unreachable", status=503)
    inference_reap_stale()

    price = model.price_per_1k_tokens
    reserved = fee_for_tokens(price_per_1k_tokens=price, tokens=len(prompt_ids) + max_new_tokens)
    try:
        with transaction.atomic(durable=True):
            inference = Inference.objects.create(
                caller=user,
                model=model,
                model_version=version,
                source=source,
                messages=clean,
                parameters={
                    "max_new_tokens": max_new_tokens,
                    "temperature": float(temperature),
                    "top_p": top_p,
                    "stream": stream,
                },  # fmt: skip
                prompt_token_ids=prompt_ids,
                prompt_tokens=len(prompt_ids),
                price_per_1k_tokens=price,
                fee_reserved_micro=reserved,
            )
            if reserved > 0:
                inference.hold_key = f"inference:{inference.pk}"
                hold_create(
                    key=inference.hold_key,
                    payer_user_id=user.pk,
                    amount_micro=reserved,
                    memo=f"Fee reserved for an answer from {model.slug}",
                    metadata={"inference_id": inference.pk, "model": model.slug},
                )
                inference.save(update_fields=["hold_key"])
            transaction.on_commit(lambda: _dispatch(inference.pk))
    except InsufficientFunds as exc:
        raise ServingRefused(
            f"Not enough credit: this answer can cost up to {_credits(reserved)} credits ({len(prompt_ids)} prompt "
            f"tokens + up to {max_new_tokens} answer tokens at {_credits(price)} credits per 1,000 tokens), and you "
            f"have {_credits(exc.balance)} available. Add credit or ask for a shorter answer.",
            code="insufficient_credit",
            status=402,
            details={"needed": _credits(reserved), "available": _credits(exc.balance)},
        ) from None
    return inference


def _channel(inference_id: int) -> str:
    """Unique even if ids are reused (a fresh database next to an old cache): the row's creation time is part."""
    created = Inference.objects.filter(pk=inference_id).values_list("created_at", flat=True).first()
    return f"inference-{inference_id}-{int(created.timestamp() * 1_000_000) if created else 0}"


def _dispatch(inference_id: int) -> None:
    """Hands the inference to the inference queue (or, in tests, to a thread of this process running the same
    function the task runs). A broker that is down fails the inference at once, releasing its hold."""
    from modelfactory import streams

    if settings.MF_INFERENCE_INLINE:
        _run_inline(inference_generate, inference_id=inference_id)
        return
    from modelfactory.tasks import inference_generate_task

    try:
        inference_generate_task.apply_async(args=[inference_id], retry=False)
    except Exception as exc:
        logger.warning("could not enqueue inference %s: %s", inference_id, exc)
        inference_fail(inference_id=inference_id, error=f"queue unreachable: {exc.__class__.__name__}")
        streams.Publisher(_channel(inference_id)).publish(
            {"type": "error", "code": "server_unreachable", "message": UNREACHABLE}
        )


def _run_inline(function, **kwargs) -> None:
    from django.db import connection

    def run():
        try:
            function(**kwargs)
        finally:
            connection.close()

    threading.Thread(target=run, name="inline-inference", daemon=True).start()


def _generation_error_message(exc: BaseException) -> tuple[str, str]:
    from modelfactory.serving import ServingError

    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, TimeoutError):
        return "timeout", "The model took too long to answer; nothing was charged. Try a shorter answer."
    return "generation_failed", "The model server failed while answering; nothing was charged. Try again."


def inference_generate(*, inference_id: int) -> str:
    """The inference worker's job (the Celery task calls this; tests call it in a thread): generates with the
    warm base model and the version's adapter, publishes text deltas to the stream channel, and completes or fails
    the inference. Returns the final status."""
    from modelfactory import serving_runtime, streams
    from modelfactory.models import Inference
    from modelfactory.serving import FINISH_CANCELLED, GenerationRequest

    inference = Inference.objects.select_related("model_version", "model__base_model").get(pk=inference_id)
    if inference.status != Inference.Status.PENDING:
        return inference.status  # the web process gave up on it (timeout): nothing to do
    publisher = streams.Publisher(_channel(inference_id))
    publisher.publish({"type": "started"})
    params = inference.parameters
    stream = bool(params.get("stream"))
    deltas: list[str] = []
    last_check = [time.monotonic()]

    class ClientGone(Exception):
        pass

    def on_delta(text: str) -> None:
        deltas.append(text)
        publisher.publish({"type": "delta", "text": text})
        now = time.monotonic()
        if stream and now - last_check[0] >= 0.05:
            last_check[0] = now
            ack = publisher.ack()
            if ack is not None and ack["cancelled"]:
                raise ClientGone

    began = time.monotonic()
    try:
        batcher = serving_runtime.batcher_for(inference.model.base_model.path)
        result = batcher.generate(
            GenerationRequest(
                prompt=inference.messages,
                adapter=inference.model_version.adapter_path,
                max_new_tokens=int(params["max_new_tokens"]),
                temperature=float(params.get("temperature") or 0.0),
                top_p=params.get("top_p"),
                on_delta=on_delta,
            ),
            timeout=settings.MF_INFERENCE_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        logger.exception("inference %s failed", inference_id)
        code, message = _generation_error_message(exc)
        inference_fail(inference_id=inference_id, error=message)
        publisher.publish({"type": "error", "code": code, "message": message})
        return Inference.Status.FAILED
    latency_ms = int((time.monotonic() - began) * 1000)
    text, token_ids, finish_reason = result.text, list(result.token_ids), result.finish_reason
    if stream:
        publisher.publish({"type": "end", "finish_reason": finish_reason})
        ack = publisher.ack() or publisher.wait_ack(settings.MF_STREAM_ACK_SECONDS)
        if ack is not None and ack["delivered"] < len(deltas):
            text = "".join(deltas[: ack["delivered"]])
            token_ids = token_ids[: serving_runtime.delivered_prefix(batcher, token_ids, text)]
        if ack is not None and ack["cancelled"]:
            finish_reason = FINISH_CANCELLED
    try:
        done = inference_complete(
            inference_id=inference_id,
            output=text,
            output_token_ids=token_ids,
            finish_reason=finish_reason,
            latency_ms=latency_ms,
        )
    except Exception:  # the database is unusable: inference_reap_stale fails it and releases the hold later
        logger.exception("could not record inference %s", inference_id)
        publisher.publish({"type": "error", "code": "generation_failed", "message": _generation_error_message(None)[1]})
        return Inference.Status.PENDING
    if done is None:
        return Inference.objects.get(pk=inference_id).status
    publisher.publish(
        {
            "type": "done",
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "finish_reason": done.finish_reason,
            "fee_micro": done.fee_micro,
        }  # fmt: skip
    )
    return done.status


def _retry_transient(function):
    """Runs a whole durable transaction again after a transient database error (a deadlock, a serialization
    failure, SQLite's "locked"); the functions retried only change rows still pending, so a retry is safe."""
    import random

    from django.db import OperationalError

    def run(**kwargs):
        for attempt in range(1, 6):
            try:
                return function(**kwargs)
            except OperationalError:
                if attempt == 5:
                    raise
                time.sleep(random.uniform(0.005, 0.02) * attempt)  # noqa: S311 (jitter, not security)

    run.__doc__ = function.__doc__
    return run


@_retry_transient
def inference_complete(
    *, inference_id: int, output: str, output_token_ids: list[int], finish_reason: str, latency_ms: int
) -> Inference | None:
    """Records the answer and the fee owed for the prompt and the delivered tokens (never above the hold), and
    runs the inference-completed handlers in the same transaction. None if the inference was no longer pending
    (the web process had given up on it and released the hold)."""
    from modelfactory import hooks
    from modelfactory.models import Inference

    with transaction.atomic(durable=True):
        inference = Inference.objects.select_for_update().filter(pk=inference_id, status=Inference.Status.PENDING)
        inference = inference.first()
        if inference is None:
            return None
        inference.output = output
        inference.output_token_ids = list(output_token_ids)
        inference.completion_tokens = len(output_token_ids)
        inference.finish_reason = finish_reason
        inference.latency_ms = latency_ms
        owed = fee_for_tokens(
            price_per_1k_tokens=inference.price_per_1k_tokens,
            tokens=inference.prompt_tokens + inference.completion_tokens,
        )
        inference.fee_micro = min(owed, inference.fee_reserved_micro)
        inference.status = Inference.Status.COMPLETED
        inference.completed_at = timezone.now()
        inference.save()
        for handler in hooks.inference_completed_handlers:
            handler(inference=inference)
    return inference


@_retry_transient
def inference_fail(*, inference_id: int, error: str) -> Inference | None:
    """Marks a pending inference failed and gives its hold back in full. None if it was no longer pending."""
    from ledger.services import hold_release
    from modelfactory.models import Inference

    with transaction.atomic(durable=True):
        inference = Inference.objects.select_for_update().filter(pk=inference_id, status=Inference.Status.PENDING)
        inference = inference.first()
        if inference is None:
            return None
        inference.status = Inference.Status.FAILED
        inference.error = error
        inference.fee_micro = 0
        inference.completed_at = timezone.now()
        inference.save(update_fields=["status", "error", "fee_micro", "completed_at"])
        if inference.hold_key:
            hold_release(hold_key=inference.hold_key, memo="Answer failed: fee reservation released")
    return inference


def inference_reap_stale() -> list[int]:
    """Fails (and releases the holds of) inferences left pending long after any answer could still come, e.g. when
    both the web process and the worker died. Cheap: one indexed query, normally empty."""
    from modelfactory.models import Inference

    limit = settings.MF_INFERENCE_TIMEOUT_SECONDS + settings.MF_STREAM_ACK_SECONDS + 60
    stale = Inference.objects.filter(
        status=Inference.Status.PENDING, created_at__lt=timezone.now() - timedelta(seconds=limit)
    ).values_list("pk", flat=True)
    reaped = []
    for inference_id in list(stale[:100]):
        if inference_fail(inference_id=inference_id, error="No answer came in time; the reservation was released."):
            reaped.append(inference_id)
    return reaped


def inference_events(*, channel: str, inference_id: int | None = None):
    """The web side: yields the worker's events for one answer, ending with `done` or `error`. If no worker picks
    the job up (or it stops answering) within the timeouts, the inference is failed (hold released) and an
    `error` event with code server_unreachable / timeout ends the stream."""
    from modelfactory import streams

    try:
        # An `error` event comes after the worker failed the inference (or, if its database writes failed, the
        # inference stays pending until inference_reap_stale releases it).
        yield from streams.read(
            channel,
            start_timeout=settings.MF_INFERENCE_START_TIMEOUT_SECONDS,
            timeout=settings.MF_INFERENCE_TIMEOUT_SECONDS,
        )
    except streams.ChannelTimeout as exc:
        code, message = ("timeout", _generation_error_message(TimeoutError())[1]) if exc.started else (
            "server_unreachable", UNREACHABLE)  # fmt: skip
        if inference_id is not None:
            inference_fail(inference_id=inference_id, error=message)
        yield {"type": "error", "code": code, "message": message}


def inference_stream_ack(*, inference_id: int, delivered: int, cancelled: bool) -> None:
    """The web side tells the worker how many text deltas reached the client (see the billing rule above)."""
    from modelfactory import streams

    streams.acknowledge(_channel(inference_id), delivered=delivered, cancelled=cancelled)


ERROR_STATUS = {"server_unreachable": 503, "timeout": 504, "generation_failed": 500}


def inference_wait(*, inference: Inference) -> Inference:
    """Waits for a non-streamed answer; returns the completed Inference or raises ServingRefused."""
    from modelfactory.models import Inference

    for event in inference_events(channel=_channel(inference.pk), inference_id=inference.pk):
        if event["type"] == "error":
            raise ServingRefused(event["message"], code=event["code"], status=ERROR_STATUS.get(event["code"], 400))
    return Inference.objects.select_related("model", "model_version").get(pk=inference.pk)


def inference_channel(inference_id: int) -> str:
    return _channel(inference_id)


def base_compare_start(*, user, slug: str, messages: list[dict], max_new_tokens: int, temperature: float) -> str:
    """Playground: the same question to the base model alone, free and not recorded. Returns the channel id."""
    import uuid

    model = model_servable(user=user, slug=slug)
    if not inference_worker_alive():
        raise ServingRefused(UNREACHABLE, code="server_unreachable", status=503)
    channel = f"base-{uuid.uuid4().hex}"
    job = {"channel": channel, "base_path": model.base_model.path, "messages": messages,
           "max_new_tokens": max_new_tokens, "temperature": temperature}  # fmt: skip
    if settings.MF_INFERENCE_INLINE:
        _run_inline(base_generate, **job)
    else:
        from modelfactory.tasks import inference_base_task

        try:
            inference_base_task.apply_async(kwargs=job, retry=False)
        except Exception as exc:
            raise ServingRefused(UNREACHABLE, code="server_unreachable", status=503) from exc
    return channel


def base_generate(*, channel: str, base_path: str, messages: list[dict], max_new_tokens: int, temperature: float):
    """Worker side of the base-model comparison (no adapter, nothing recorded)."""
    from modelfactory import serving_runtime, streams
    from modelfactory.serving import GenerationRequest

    publisher = streams.Publisher(channel)
    publisher.publish({"type": "started"})
    try:
        result = serving_runtime.batcher_for(base_path).generate(
            GenerationRequest(
                prompt=messages,
                adapter=None,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                on_delta=lambda text: publisher.publish({"type": "delta", "text": text}),
            ),
            timeout=settings.MF_INFERENCE_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        code, message = _generation_error_message(exc)
        publisher.publish({"type": "error", "code": code, "message": message})
        return
    publisher.publish(
        {
            "type": "done",
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason,
            "fee_micro": 0,
        }  # fmt: skip
    )
