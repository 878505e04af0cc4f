""" "Evaluate again": the owner of a finished model has it answer a test set chosen after training (datanet versions
of the right kind, or an uploaded file), base and tuned side by side, on the gpu queue like the evaluation at the end
of training. Bad input is refused before anything is created; rows the model trained on are counted and left out of
the score. Every evaluation is kept with the model version it scored."""

from __future__ import annotations

import io
import logging
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.jobs import claim_queued, enqueue_or_fail
from datanets.ingest.errors import IngestError
from datanets.ingest.formats import HEAD_BYTES, detect_format
from datanets.ingest.readers import read_rows
from datanets.ingest.validate import RowInvalid, validate_row
from modelfactory import selectors
from modelfactory.models import FineTuneJob, ModelEvaluation
from modelfactory.services.continue_training import lineage_jobs
from modelfactory.services.finetune_jobs import LaunchError, test_set_versions_validated
from modelfactory.training.presets import validate_hyperparameters

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 5 * 2**20
MAX_UPLOAD_ROWS = 2000
ROW_MAX_CHARS = 64 * 1024
QUEUE_DOWN_MESSAGE = (
    "The job queue could not be reached, so the evaluation did not start. Ask for it again in a minute."
)
STALE_MESSAGE = "The worker running this evaluation stopped unexpectedly. Ask for it again."
PROGRESS_EVERY_S = 1.0
TOO_BIG = f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB; use a smaller test set."


class EvaluationRefused(Exception):
    """Nothing was created: `errors` says why, per field ("job", "test_versions", "file"), in plain words;
    `status` is the HTTP status an API answers with."""

    def __init__(self, errors: dict[str, str], *, status: int = 400):
        super().__init__("; ".join(errors.values()))
        self.errors = errors
        self.status = status


def _evaluable_job(*, user, job_id: int) -> FineTuneJob:
    job = FineTuneJob.objects.filter(pk=job_id, owner=user).select_related("model_version").first()
    if job is None:
        raise EvaluationRefused({"job": "You have no training job with this number."}, status=404)
    if job.status != FineTuneJob.Status.SUCCEEDED or not hasattr(job, "model_version"):
        raise EvaluationRefused(
            {"job": "Only a finished training job that made a model can be evaluated again."}, status=409
        )
    return job


def upload_rows_read(*, name: str, data: bytes) -> list[dict]:
    """The rows of an uploaded test set as the training core reads them ({"id": line, "kind", "content"}): instruction
    rows, or else chat rows, from JSONL, JSON, CSV, TSV or Parquet. EvaluationRefused on "file" when the file cannot
    be read, is too big, or holds no row with a question and an expected answer."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise EvaluationRefused(
            {"file": f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB; use a smaller one."}
        )
    try:
        fmt, _ = detect_format(data[:HEAD_BYTES], name, total_size=len(data))
    except IngestError as exc:
        raise EvaluationRefused({"file": str(exc)}) from None
    first_reason = ""
    for kind in ("instruction", "chat"):
        try:
            raw = read_rows(io.BytesIO(data), fmt, kind=kind, row_max_chars=ROW_MAX_CHARS)
            rows, reason = _valid_rows(raw, kind)
        except IngestError as exc:
            if exc.code == "wrong_kind":
                raise EvaluationRefused(
                    {"file": "A document holds plain text, not questions with expected answers: a test set needs "
                     "instruction rows (instruction, output) or chat rows (messages)."}
                ) from None  # fmt: skip
            raise EvaluationRefused({"file": str(exc)}) from None
        if rows:
            return rows
        first_reason = first_reason or reason
    raise EvaluationRefused(
        {"file": "The file has no row with a question and an expected answer (instruction and output, or messages "
         f"with an assistant answer){': ' + first_reason if first_reason else ''}."}
    )  # fmt: skip


def _valid_rows(raw, kind: str) -> tuple[list[dict], str]:
    rows: list[dict] = []
    reason = ""
    for number, row, error in raw:
        if error is not None or row is None:
            reason = reason or f"line {number}: {error}"
            continue
        try:
            content, _ = validate_row(kind, row)
        except RowInvalid as exc:
            reason = reason or f"line {number}: {exc}"
            continue
        answer = content.get("output") if kind == "instruction" else content["messages"][-1]["content"]
        if not (answer or "").strip():
            reason = reason or f"line {number}: the expected answer is empty"
            continue
        rows.append({"id": int(number), "kind": kind, "content": content})
        if len(rows) > MAX_UPLOAD_ROWS:
            raise EvaluationRefused({"file": f"The file has more than {MAX_UPLOAD_ROWS} rows; use a smaller test set."})
    return rows, reason


def evaluation_request(*, user, job_id: int, version_ids: list[int] | None = None, upload=None) -> ModelEvaluation:
    """Queues an evaluation of the model the job made on datanet versions (ones the user may use, with instruction or
    chat rows) or on an uploaded file (`upload`: a Django UploadedFile), never both. EvaluationRefused, nothing
    created, otherwise."""
    job = _evaluable_job(user=user, job_id=job_id)
    version_ids = list(version_ids or [])
    if version_ids and upload is not None:
        raise EvaluationRefused({"test_versions": "Choose datanet versions or upload a file, not both."})
    if not version_ids and upload is None:
        raise EvaluationRefused({"test_versions": "Choose a datanet version or upload a file to evaluate on."})
    rows: list[dict] = []
    versions: list = []
    upload_name = ""
    if upload is not None:
        if upload.size > MAX_UPLOAD_BYTES:  # before reading it into memory
            raise EvaluationRefused({"file": TOO_BIG})
        upload_name = upload.name or "upload"
        rows = upload_rows_read(name=upload_name, data=upload.read())
    else:
        try:
            versions = test_set_versions_validated(user=user, version_ids=version_ids)
        except LaunchError as exc:
            raise EvaluationRefused(dict(exc.errors)) from None
    with transaction.atomic():
        evaluation = ModelEvaluation.objects.create(
            version=job.model_version,
            requested_by=user,
            upload_name=upload_name[:255],
            upload_rows=rows,
            rows=len(rows) or sum(v.row_count for v in versions),
            message="Waiting for a free worker.",
        )
        evaluation.test_versions.set(versions)
        transaction.on_commit(lambda: _enqueue(evaluation.pk))
    return evaluation


def _enqueue(evaluation_id: int) -> None:
    enqueue_or_fail(
        "modelfactory.tasks.evaluation_run_task",
        args=[evaluation_id],
        what=f"model evaluation {evaluation_id}",
        fail=lambda exc: ModelEvaluation.objects.filter(pk=evaluation_id, status=ModelEvaluation.Status.QUEUED).update(
            status=ModelEvaluation.Status.FAILED, finished_at=timezone.now(), message=QUEUE_DOWN_MESSAGE
        ),
    )


def evaluation_cancel(*, user, evaluation_id: int) -> ModelEvaluation:
    """A queued evaluation ends at once; a running one stops at its next batch. ModelEvaluation.DoesNotExist when
    it is not the user's; EvaluationRefused (409) when it has already ended."""
    with transaction.atomic():
        evaluation = ModelEvaluation.objects.select_for_update().get(pk=evaluation_id, requested_by=user)
        if evaluation.status == ModelEvaluation.Status.QUEUED:
            evaluation.status = ModelEvaluation.Status.CANCELLED
            evaluation.finished_at = timezone.now()
            evaluation.message = "Cancelled before it started."
        elif evaluation.status == ModelEvaluation.Status.RUNNING:
            evaluation.cancel_requested = True
            evaluation.message = "Cancelling at the next batch."
        else:
            raise EvaluationRefused(
                {"status": f"This evaluation has already ended ({evaluation.get_status_display().lower()})."},
                status=409,
            )
        evaluation.save(update_fields=["status", "finished_at", "message", "cancel_requested"])
    return evaluation


class _Cancelled(Exception):  # noqa: N818 (a request, like training's Cancelled)
    pass


def _progress_writer(evaluation_id: int):
    last = [0.0]

    def write(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        ModelEvaluation.objects.filter(pk=evaluation_id, status=ModelEvaluation.Status.RUNNING).update(
            progress=min(max(fraction, 0.0), 0.99), heartbeat_at=timezone.now()
        )
        if ModelEvaluation.objects.filter(pk=evaluation_id, cancel_requested=True).exists():
            raise _Cancelled

    return write


def evaluation_run(*, evaluation_id: int) -> ModelEvaluation | None:
    """Claims a queued evaluation (a conditional update: a second delivery does nothing), has the model answer the
    test set and writes the scores. None when it was not claimed."""
    # torch and transformers: only the worker that runs an evaluation loads them
    from modelfactory.training.loop import TrainingError
    from modelfactory.training.reevaluate import EvaluationSpec, TrainedData, evaluate_adapter

    message = "Loading the model and answering the test set with the base model and the fine-tuned one."
    if not claim_queued(ModelEvaluation, evaluation_id, message=message):
        return None
    evaluation = ModelEvaluation.objects.select_related("version__job__base_model").get(pk=evaluation_id)
    job = evaluation.version.job
    test_rows = (
        evaluation.upload_rows or selectors.finetune_rows(versions=list(evaluation.test_versions.order_by("pk")))[0]
    )
    trained = [
        TrainedData(
            rows=selectors.finetune_rows(versions=list(j.datanet_versions.order_by("pk")))[0],
            hyperparameters=_settings_of(j),
        )
        for j in lineage_jobs(job=job)
    ]
    spec = EvaluationSpec(
        base_model_dir=Path(job.base_model.path), adapter_dir=Path(evaluation.version.adapter_path),
        hyperparameters=_settings_of(job), test_rows=test_rows, trained=trained,
        device=settings.MF_TRAINING_DEVICE, memory_budget_fraction=settings.MF_MEMORY_BUDGET_FRACTION,
        memory_limit_bytes=settings.MF_MEMORY_LIMIT_MB * 2**20,
    )  # fmt: skip
    try:
        result = evaluate_adapter(spec, on_progress=_progress_writer(evaluation_id))
    except _Cancelled:
        return _finish(evaluation, status=ModelEvaluation.Status.CANCELLED, message="Cancelled: nothing was kept.")
    except TrainingError as exc:
        return _finish(evaluation, status=ModelEvaluation.Status.FAILED, message=str(exc))
    except Exception as exc:
        logger.exception("evaluation %s failed", evaluation_id)
        return _finish(
            evaluation, status=ModelEvaluation.Status.FAILED,
            message=f"The evaluation stopped because of an unexpected error ({exc.__class__.__name__}). "
            "Ask for it again; if it fails again, tell an operator.",
        )  # fmt: skip
    samples = result.pop("samples")
    return _finish(
        evaluation, status=ModelEvaluation.Status.SUCCEEDED, progress=1.0, rows=result["rows"],
        overlap=result["overlap"], metrics=result, samples=samples, message=_summary(result),
    )  # fmt: skip


def _settings_of(job: FineTuneJob) -> dict:
    """The job's settings over its preset's defaults (a job saved before a setting existed lacks it)."""
    defaults, errors = validate_hyperparameters({}, preset=job.preset)
    if errors:  # a preset that no longer exists
        defaults, _ = validate_hyperparameters({})
    return {**defaults, **job.hyperparameters}


def _summary(result: dict) -> str:
    overlap = result["overlap"]
    left_out = (
        f" {overlap} of the {result['rows']} rows were also in the training data and are left out of the score."
        if overlap
        else ""
    )
    if not result.get("answers_scored"):
        return "Finished, but no row of the test set could be scored." + left_out
    return (
        f"Finished: {result['answers_scored']} questions answered by both. Answers that match the expected ones: "
        f"base {round(100 * result['base_token_f1'])}% → fine-tuned {round(100 * result['token_f1'])}% of the words."
        + left_out
    )


def _finish(evaluation: ModelEvaluation, *, status: str, **fields) -> ModelEvaluation:
    ModelEvaluation.objects.filter(pk=evaluation.pk, status=ModelEvaluation.Status.RUNNING).update(
        status=status, finished_at=timezone.now(), **fields
    )
    evaluation.refresh_from_db()
    return evaluation


def evaluation_reap_stale() -> list[int]:
    """Running evaluations whose worker went silent: failed with a message (asking again makes a new one)."""
    stale_before = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS)
    stale = list(
        ModelEvaluation.objects.filter(
            status=ModelEvaluation.Status.RUNNING, heartbeat_at__lt=stale_before
        ).values_list("pk", flat=True)
    )
    ModelEvaluation.objects.filter(pk__in=stale, status=ModelEvaluation.Status.RUNNING).update(
        status=ModelEvaluation.Status.FAILED, finished_at=timezone.now(), message=STALE_MESSAGE
    )
    return stale
