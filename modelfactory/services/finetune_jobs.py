"""Fine-tuning jobs from the web side: launch (validate, create, enqueue), stop/cancel, and the sweep that resumes
or fails jobs whose worker died. The worker side (claim, train, heartbeat) is in finetune_worker."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.template.defaultfilters import pluralize
from django.utils import timezone

from core.jobs import enqueue_or_fail
from datanets.models import Datanet
from ledger.calc.canonical import canonical_json, jsonable, sha256_hex
from modelfactory import selectors
from modelfactory.models import BaseModel, FineTuneEvent, FineTuneJob
from modelfactory.selectors import PRIVATE_DATANET
from modelfactory.training import memory, model_files
from modelfactory.training.presets import PRESETS, validate_hyperparameters

logger = logging.getLogger(__name__)


class LaunchError(Exception):
    """The launch was refused; `errors` maps a form/API field to a plain-language message. Nothing was created."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


class IdempotencyConflict(LaunchError):
    """The idempotency key already launched a job from a different request. Nothing was created. A LaunchError, so a
    page shows it as any refused launch; the API answers 409."""

    def __init__(self, *, key: str, job: FineTuneJob):
        self.job = job
        message = (
            f"The idempotency key “{key}” was already used to launch job #{job.pk} with different settings; "
            "send a new key to launch another job, or the same settings to get that job back."
        )
        super().__init__({"idempotency_key": message})


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
    parent_version=None,
    test_version_ids: list[int] | None = None,
) -> tuple[FineTuneJob, bool]:
    """Validates everything, creates a queued job and enqueues it after commit. Returns (job, created).

    The same idempotency key from the same user with the same request returns the job created the first time (a
    double-submitted form or a retried API call launches one job); with a different request it raises
    IdempotencyConflict rather than pass off the first job as this one. Raises LaunchError with per-field messages;
    nothing is created then."""
    fingerprint = launch_fingerprint(
        base_model_slug=base_model_slug,
        version_ids=version_ids,
        preset=preset,
        hyperparameters=hyperparameters,
        name=name,
        parent_version_id=parent_version.pk if parent_version else None,
        test_version_ids=test_version_ids,
    )
    existing = FineTuneJob.objects.filter(owner=user, idempotency_key=idempotency_key).first()
    if existing is not None:
        return _replayed(existing, key=idempotency_key, fingerprint=fingerprint), False
    base, preset, hp, versions = _launch_validated(
        user=user,
        base_model_slug=base_model_slug,
        version_ids=version_ids,
        preset=preset,
        hyperparameters=hyperparameters,
    )
    test_versions = test_set_versions_validated(user=user, version_ids=test_version_ids or [])
    name = (name or "").strip() or _default_name(base, versions)
    try:
        with transaction.atomic():
            job = FineTuneJob.objects.create(
                owner=user,
                name=name[:200],
                base_model=base,
                preset=preset,
                hyperparameters=hp,
                idempotency_key=idempotency_key,
                request_fingerprint=fingerprint,
                phase="queued",
                message="Waiting for a free training worker.",
                estimate=_launch_estimate(base=base, versions=versions, hp=hp),
                parent_version=parent_version,
            )
            job.datanet_versions.set(versions)
            job.test_versions.set(test_versions)
            FineTuneEvent.objects.create(job=job, kind=FineTuneEvent.Kind.PHASE, data={"phase": "queued"})
            transaction.on_commit(lambda: _enqueue(job.pk))
    except IntegrityError:  # a concurrent submit with the same key won the race
        winner = FineTuneJob.objects.get(owner=user, idempotency_key=idempotency_key)
        return _replayed(winner, key=idempotency_key, fingerprint=fingerprint), False
    job.refresh_from_db()
    return job, True


def _launch_estimate(*, base, versions, hp: dict[str, Any]) -> dict[str, Any]:
    """The estimate the review step showed, kept with the job so that its page shows it beside the actual. {} when
    it cannot be made (the launch does not depend on it)."""
    try:
        estimate = selectors.wizard_estimate(base=base, versions=versions, hyperparameters=hp)
    except Exception:
        logger.exception("no estimate for a launch on %s", base.slug)
        return {}
    keep = ("steps", "tokens", "peak_memory_bytes", "device", "run_seconds", "run_low", "run_high", "run_method",
            "run_runs", "warnings", "training_memory_bytes", "evaluation_memory_bytes", "index_memory_bytes",
            "memory_stage", "memory_bytes", "memory_low", "memory_high", "memory_method", "memory_runs")  # fmt: skip
    return {key: estimate[key] for key in keep if key in estimate}


def _default_name(base: BaseModel, versions) -> str:
    """Like "Tiny base on Zorb facts v1, a private datanet v2": a private datanet is not named, as the model's name
    is shown to everyone once it is published (in its address too)."""
    used = (f"{_public_name(v.datanet)} v{v.number}" for v in versions)
    return f"{base.name} on {', '.join(used)}"


def _public_name(datanet: Datanet) -> str:
    return datanet.name if datanet.visibility == Datanet.Visibility.PUBLIC else PRIVATE_DATANET


def launch_fingerprint(
    *,
    base_model_slug: str,
    version_ids: list[int],
    preset: str,
    hyperparameters: dict[str, Any] | None,
    name: str,
    parent_version_id: int | None = None,
    test_version_ids: list[int] | None = None,
) -> str:
    """SHA-256 of the canonical JSON of a launch request as given: what "the same request" means for a replayed
    idempotency key. The order and repeats of version ids and an absent or empty name or settings do not count."""
    request = {
        "base_model": base_model_slug,
        "datanet_versions": sorted({str(v) for v in version_ids}, key=lambda v: (len(v), v)),
        "preset": preset,
        "hyperparameters": hyperparameters or {},
        "name": (name or "").strip(),
    }
    if parent_version_id is not None:  # absent for a fresh adapter, so older fingerprints still match
        request["parent_version"] = parent_version_id
    if test_version_ids:  # absent without a test set, as above
        request["test_versions"] = sorted({int(v) for v in test_version_ids})
    return sha256_hex(canonical_json(jsonable(request)))


def _replayed(job: FineTuneJob, *, key: str, fingerprint: str) -> FineTuneJob:
    # Jobs launched before fingerprints were kept have none: the key alone decides for them, as it did then.
    if job.request_fingerprint and job.request_fingerprint != fingerprint:
        raise IdempotencyConflict(key=key, job=job)
    return job


def test_set_versions_validated(*, user, version_ids: list[int]) -> list:
    """The datanet versions of a chosen test set: the user may use them, and they hold questions with expected
    answers (instruction or chat rows). LaunchError on "test_versions" otherwise, before anything is created."""
    if not version_ids:
        return []
    versions, error = selectors.versions_usable_by(user=user, version_ids=version_ids)
    if error:
        raise LaunchError({"test_versions": error})
    for version in versions:
        if version.datanet.kind == "text":
            raise LaunchError(
                {"test_versions": f"“{version.datanet.name}” holds plain text, not questions with expected answers: "
                 "a test set needs instruction or chat rows."}
            )  # fmt: skip
        if version.row_count == 0:
            raise LaunchError({"test_versions": f"Version {version.number} of “{version.datanet.name}” has no rows."})
    return versions


def _launch_validated(
    *, user, base_model_slug: str, version_ids: list[int], preset: str, hyperparameters: dict[str, Any] | None
) -> tuple[BaseModel, str, dict[str, Any], list]:
    """(base model, preset, clean hyperparameters, datanet versions) of a launch, or LaunchError with every field
    at fault. A preset's max_length longer than the base model reads is cut to what it reads."""
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
        problem = selectors.quantization_problem(hp["quantization"])
        if problem:
            errors["hyperparameters.quantization"] = problem
    if base is not None and "max_length" not in hp_errors and hp.get("max_length", 0) > base.context_length:
        if (hyperparameters or {}).get("max_length") in (None, ""):
            hp["max_length"] = base.context_length  # the preset's default does not fit this model: use all it reads
        else:
            errors["hyperparameters.max_length"] = (
                f"must be at most {base.context_length}, the longest input {base.name} can read"
            )
    versions, version_error = selectors.versions_usable_by(user=user, version_ids=version_ids)
    if version_error:
        errors["datanet_versions"] = version_error
    elif sum(v.row_count for v in versions) == 0:
        errors["datanet_versions"] = "The chosen datanet versions have no rows. Publish a version with rows first."
    if errors:
        raise LaunchError(errors)
    return base, preset, hp, versions


QUEUE_DOWN_MESSAGE = (
    "The job queue could not be reached, so training did not start. Nothing was lost: "
    "launch again in a minute, or ask an operator to check the broker (see /healthz)."
)


def _enqueue(job_id: int, *, resume: bool = False) -> None:
    """Hands the job to the gpu queue. A broker that is down leaves the job failed with a clear message, so
    nothing says "queued" while no worker will ever see it."""
    enqueue_or_fail(
        "modelfactory.tasks.finetune_run_task",
        args=[job_id],
        kwargs={"resume": resume},
        what=f"fine-tune job {job_id}",
        fail=lambda exc: FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.QUEUED).update(
            status=FineTuneJob.Status.FAILED, finished_at=timezone.now(), message=QUEUE_DOWN_MESSAGE
        ),
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
            training = job.phase in ("", "queued", "loading", "training")
            if mode == FineTuneJob.Control.STOP:
                job.message = (
                    "Stopping at the next step; the adapter trained so far will be kept and evaluated."
                    if training
                    else "Training has already finished; the adapter will be kept."
                )
            else:
                job.message = (
                    "Cancelling at the next step; nothing will be kept."
                    if training
                    else "Cancelling; nothing will be kept."
                )
            job.save(update_fields=["control", "message"])
        else:
            raise JobStateError(f"This job has already ended ({job.get_status_display().lower()}).")
    return job


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
        if finetune_fail_if_out_of_memory(job_id=job_id, stale_before=stale_before):
            continue
        if attempts < settings.MF_JOB_MAX_ATTEMPTS:
            # Back to the queue, so that the next free worker claims it at once (a job left "running" with a fresh
            # heartbeat could not be claimed by an idle worker that picks the message up right away).
            updated = FineTuneJob.objects.filter(
                pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale_before
            ).update(
                status=FineTuneJob.Status.QUEUED,
                phase="queued",  # the phase it was in ("Building the index") is not where it stands now
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


def finetune_fail_if_out_of_memory(*, job_id: int, stale_before) -> bool:
    """A running job whose worker stopped beating while it held nearly all the memory it could have was killed for
    memory (the kernel's out-of-memory killer leaves no other trace): it fails once, with what ran out at which
    stage and what to lower, instead of being queued again to run out the same way. True when it did."""
    job = (
        FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale_before)
        .only("phase", "hyperparameters", "memory_bytes", "memory_limit_bytes")
        .first()
    )
    if job is None or not memory.near_limit(job.memory_bytes, job.memory_limit_bytes):
        return False
    message = memory.out_of_memory_message(
        phase=job.phase, hp=job.hyperparameters, held=job.memory_bytes, limit=job.memory_limit_bytes, killed=True
    )
    return bool(
        FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=stale_before).update(
            status=FineTuneJob.Status.FAILED, finished_at=timezone.now(), message=message
        )
    )
