"""Exports of a model version (adapter, merged model, GGUF F16/Q8_0): asked for from the page or the API, made once
by a background task, kept and downloaded again. Each file is written under a temporary name in its own folder and
renamed when complete: a failure (missing model files, a worker that dies) leaves no half-written file behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from common.files import file_sha256
from core.jobs import claim_queued, enqueue_or_fail
from modelfactory import export_howto, selectors
from modelfactory.export import ExportError, gguf_file, merge
from modelfactory.models import ModelExport, TrainedModel
from modelfactory.services.errors import ServingRefused
from modelfactory.training.model_files import ModelFilesError

logger = logging.getLogger(__name__)

QUEUE_DOWN_MESSAGE = "The job queue could not be reached, so the file was not made. Ask for it again in a minute."
STALE_MESSAGE = "The worker making this file stopped unexpectedly; nothing was kept. Ask for the file again."
PROGRESS_EVERY_S = 0.5


def export_request(*, user, slug: str, format: str) -> tuple[ModelExport, bool]:
    """The export of the model's latest version in `format`: the one already made or being made (created False),
    or a new one queued after commit (created True). A failed export is queued again. Two requests at once make one
    export (a unique constraint on version and format). ServingRefused says why nothing was queued."""
    model = selectors.trained_models_visible(user=user).filter(slug=slug).first()
    if model is None:
        raise ServingRefused(f"There is no model called “{slug}”.", code="not_found", status=404)
    if not selectors.model_exportable_by(user=user, model=model):
        raise ServingRefused(
            f"The owner of {model.name} has not allowed others to download its files.",
            code="export_not_allowed",
            status=403,
        )
    if format not in ModelExport.Format.values:
        raise ServingRefused(
            f"Choose a format: {', '.join(ModelExport.Format.values)} (got “{format}”).",
            code="invalid_format",
            param="format",
        )
    version = model.latest_version
    if version is None:
        raise ServingRefused("This model has no trained version yet.", code="no_version", status=409)
    if format.startswith("gguf-"):
        _check_gguf_possible(model)
    existing = ModelExport.objects.filter(version=version, format=format).first()
    if existing is not None:
        return _again_if_failed(existing)
    try:
        with transaction.atomic():
            export = ModelExport.objects.create(
                version=version, format=format, requested_by=user if user.is_authenticated else None,
                message="Waiting for a free worker.",
            )  # fmt: skip
            transaction.on_commit(lambda: _enqueue(export.pk))
    except IntegrityError:  # a request at the same moment created it first
        return ModelExport.objects.get(version=version, format=format), False
    return export, True


def _check_gguf_possible(model: TrainedModel) -> None:
    config_path = Path(model.base_model.path) / "config.json"
    try:
        gguf_file.check_writable(json.loads(config_path.read_text()))
    except ExportError as exc:
        raise ServingRefused(str(exc), code="format_unsupported", status=422, param="format") from None
    except (OSError, ValueError):
        pass  # missing base files: the export itself fails with the plain message


def _again_if_failed(export: ModelExport) -> tuple[ModelExport, bool]:
    requeued = ModelExport.objects.filter(pk=export.pk, status=ModelExport.Status.FAILED).update(
        status=ModelExport.Status.QUEUED, progress=0.0, message="Waiting for a free worker.", finished_at=None,
        started_at=None, heartbeat_at=None,
    )  # fmt: skip
    if requeued:
        transaction.on_commit(lambda: _enqueue(export.pk))
    export.refresh_from_db()
    return export, bool(requeued)


def _enqueue(export_id: int) -> None:
    enqueue_or_fail(
        "modelfactory.tasks.export_run_task",
        args=[export_id],
        what=f"model export {export_id}",
        fail=lambda exc: ModelExport.objects.filter(pk=export_id, status=ModelExport.Status.QUEUED).update(
            status=ModelExport.Status.FAILED, finished_at=timezone.now(), message=QUEUE_DOWN_MESSAGE
        ),
    )


def export_run(*, export_id: int) -> ModelExport | None:
    """Claims a queued export (a conditional update: a second delivery does nothing) and makes its file."""
    if not claim_queued(ModelExport, export_id, message="Starting."):
        return None
    export = ModelExport.objects.select_related("version__model__base_model").get(pk=export_id)
    started = time.perf_counter()
    try:
        path, digest, size = _make_file(export, progress=_progress_writer(export.pk))
    except (ExportError, ModelFilesError) as exc:
        return _finish(export, status=ModelExport.Status.FAILED, message=str(exc))
    except Exception as exc:
        logger.exception("export %s failed", export_id)
        return _finish(
            export, status=ModelExport.Status.FAILED,
            message=f"The file could not be made ({exc.__class__.__name__}: {exc}); nothing was kept. "
            "Ask for it again; if it fails again, tell an operator.",
        )  # fmt: skip
    return _finish(
        export, status=ModelExport.Status.SUCCEEDED, message="Ready to download.", path=str(path), sha256=digest,
        bytes=size, seconds=round(time.perf_counter() - started, 3), progress=1.0,
    )  # fmt: skip


def _finish(export: ModelExport, *, status: str, **fields) -> ModelExport:
    ModelExport.objects.filter(pk=export.pk, status=ModelExport.Status.RUNNING).update(
        status=status, finished_at=timezone.now(), **fields
    )
    export.refresh_from_db()
    return export


def _progress_writer(export_id: int):
    last = [0.0]

    def write(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S and fraction < 1.0:
            return
        last[0] = now
        ModelExport.objects.filter(pk=export_id, status=ModelExport.Status.RUNNING).update(
            progress=min(max(fraction, 0.0), 0.99), message=message, heartbeat_at=timezone.now()
        )

    return write


def _make_file(export: ModelExport, *, progress) -> tuple[Path, str, int]:
    """Writes the export's file under a temporary name in its folder, hashes it and renames it into place."""
    version = export.version
    base_dir, adapter_dir = Path(version.model.base_model.path), Path(version.adapter_path)
    merge.check_sources(base_dir, adapter_dir)
    folder = export.folder
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)  # of a run whose worker died: only one run of an export at a time (the claim)
    final = folder / export.filename
    token = uuid.uuid4().hex[:12]
    part = folder / f".{export.filename}.{token}.part"
    workdir = folder / f".work-{token}"
    texts = {"HOW_TO_USE.md": export_howto.markdown(export), "MODEL_CARD.md": version.model_card}
    try:
        if export.format == ModelExport.Format.ADAPTER:
            progress(0.2, "Packing the adapter")
            merge.write_adapter_zip(adapter_dir, part, texts=texts)
        else:
            model, tokenizer = merge.merge_adapter(base_dir, adapter_dir, progress=progress)
            if export.format == ModelExport.Format.MERGED:
                merge.write_merged_zip(
                    model, tokenizer, base_dir=base_dir, workdir=workdir, zip_path=part, texts=texts,
                    progress=progress,
                )  # fmt: skip
            else:
                outtype = export.format.removeprefix("gguf-")
                gguf_file.write_gguf(
                    model, tokenizer, tokenizer_dir=base_dir, path=part, outtype=outtype,
                    name=f"{version.model.name} v{version.number}",
                    progress=lambda fraction, message: progress(0.35 + 0.55 * fraction, message),
                )  # fmt: skip
                stop = [tokenizer.eos_token] if tokenizer.eos_token else []
                text = gguf_file.modelfile(gguf_name=export.filename, chat_template=tokenizer.chat_template, stop=stop)
                (folder / "Modelfile").write_text(text, encoding="utf-8")
            del model
        progress(0.95, "Computing the file's SHA-256")
        digest, size = file_sha256(part)
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return final, digest, size


def _remove_leftovers(folder: Path) -> None:
    """Temporary files and folders (their names start with a dot) that a dead worker left in an export's folder."""
    if not folder.is_dir():
        return
    for path in folder.glob(".*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def export_reap_stale() -> list[int]:
    """Running exports whose worker went silent: failed with a message (asking again queues them anew)."""
    stale_before = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS)
    stale = list(
        ModelExport.objects.filter(status=ModelExport.Status.RUNNING, heartbeat_at__lt=stale_before).values_list(
            "pk", flat=True
        )
    )
    for export in ModelExport.objects.filter(pk__in=stale).select_related("version"):
        failed = ModelExport.objects.filter(pk=export.pk, status=ModelExport.Status.RUNNING).update(
            status=ModelExport.Status.FAILED, finished_at=timezone.now(), message=STALE_MESSAGE
        )
        if failed:
            _remove_leftovers(export.folder)
    return stale
