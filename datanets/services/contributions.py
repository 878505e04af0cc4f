"""A contributor's upload and what happens to it around the ingest: storing it and queueing its check, trying a
failed one again, and the curators' review (accept or reject a contribution, drop one row)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zipfile

from django.conf import settings
from django.core.files.base import File
from django.db import IntegrityError, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from core.jobs import enqueue_or_fail
from datanets import hooks
from datanets.ingest.formats import HEAD_BYTES, unreadable_reason
from datanets.models import Contribution, Datanet, Record
from datanets.selectors import datanet_can_contribute, datanet_can_curate
from datanets.services.common import DatanetError, NotAllowed, _require_curator, _rows_changed

# --- Uploads ------------------------------------------------------------------------------------------------------


def clean_filename(name: str) -> str:
    """The last path component only, without control characters, at most 200 characters."""
    name = unicodedata.normalize("NFC", name or "").replace("\\", "/").split("/")[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip().lstrip(".") or "upload"
    return name[-200:]


def _hash_upload(upload) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in upload.chunks():
        digest.update(chunk)
        size += len(chunk)
        if size > settings.MF_UPLOAD_MAX_BYTES:
            raise DatanetError(_too_large_message(), code="file_too_large")
    upload.seek(0)
    return digest.hexdigest(), size


def _too_large_message() -> str:
    return f"The file is larger than the upload limit of {filesizeformat(settings.MF_UPLOAD_MAX_BYTES)}."


def contribution_create(
    *, datanet: Datanet, contributor, upload, column_mapping: dict | None = None, enqueue: bool = True
) -> Contribution:
    """Stores an uploaded file and queues its ingest. Refuses (DatanetError) empty and over-limit files and a file
    already uploaded to this datanet, before anything is stored."""
    if not datanet_can_contribute(user=contributor, datanet=datanet):
        raise NotAllowed("Only the owner and curators can add rows to a private datanet.")
    if upload is None:
        raise DatanetError("Choose a file to upload.", code="no_file")
    if getattr(upload, "size", None) is not None and upload.size > settings.MF_UPLOAD_MAX_BYTES:
        raise DatanetError(_too_large_message(), code="file_too_large")
    sha256, size = _hash_upload(upload)
    if size == 0:
        raise DatanetError("The file is empty.", code="empty_file")
    earlier = (
        Contribution.objects.filter(datanet=datanet, sha256=sha256)
        .exclude(status__in=[Contribution.Status.FAILED, Contribution.Status.REJECTED])
        .first()
    )
    if earlier is not None:
        raise DatanetError(_same_file_message(earlier, contributor), code="duplicate_file")
    _refuse_unreadable(upload, size)
    contribution = Contribution(
        datanet=datanet,
        contributor=contributor,
        original_name=clean_filename(getattr(upload, "name", "")),
        size=size,
        sha256=sha256,
        column_mapping=column_mapping or None,
    )
    contribution.file.save("upload", File(upload), save=False)
    try:
        with transaction.atomic(durable=True):
            contribution.save()
            hooks.run_upload_handlers(contribution)  # e.g. the datanet's bond, held from the wallet
            if enqueue:
                transaction.on_commit(lambda: _enqueue_ingest(contribution.pk))
    except IntegrityError:  # the same file raced in from another request
        contribution.file.delete(save=False)
        raise DatanetError("This file is already being uploaded to this datanet.", code="duplicate_file") from None
    except DatanetError:  # refused by an upload handler: nothing of it is kept
        contribution.file.delete(save=False)
        raise
    if enqueue:
        contribution.refresh_from_db()  # a broker that was down has failed it already (_enqueue_ingest)
    return contribution


def _zip_names(upload):
    """The names in an uploaded zip (DOCX, XLSX...), or None when it cannot be opened; the upload is rewound."""
    try:
        return zipfile.ZipFile(upload).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    finally:
        upload.seek(0)


def _refuse_unreadable(upload, size: int) -> None:
    """Refuses, before anything is stored, a file of a type that cannot be read (an image, a spreadsheet, an
    archive, text that is not UTF-8...), naming it and the accepted types."""
    head = upload.read(HEAD_BYTES)
    upload.seek(0)
    reason = unreadable_reason(
        head, getattr(upload, "name", "") or "", total_size=size, zip_names=lambda: _zip_names(upload)
    )
    if reason:
        code, message = reason
        raise DatanetError(message, code=code)


def _same_file_message(earlier: Contribution, user) -> str:
    who = "You" if earlier.contributor_id == user.pk else "Someone"
    return (
        f"{who} already uploaded this exact file to this datanet on {earlier.created_at:%d %b %Y} "
        f"(upload #{earlier.pk}); it was recognised by its fingerprint (SHA-256)."
    )


QUEUE_DOWN_MESSAGE = (
    "The job queue could not be reached, so checking this file did not start. Your file was kept: "
    "press “Try again” in a minute, or ask an operator to check the broker (see /healthz)."
)


def _enqueue_ingest(contribution_id: int) -> None:
    """Hands the ingest to the default queue. A broker that is down leaves the contribution failed with a plain
    message (the stored file is kept, so "Try again" works once the broker is back): nothing says "waiting" while
    no worker will ever see it."""
    enqueue_or_fail(
        "datanets.tasks.contribution_ingest_task",
        args=[contribution_id],
        what=f"the ingest of contribution {contribution_id}",
        fail=lambda exc: Contribution.objects.filter(pk=contribution_id, status=Contribution.Status.UPLOADED).update(
            status=Contribution.Status.FAILED, message=QUEUE_DOWN_MESSAGE, finished_at=timezone.now()
        ),
    )


def contribution_retry(*, contribution: Contribution, actor, column_mapping: dict | None = None) -> Contribution:
    """Runs a failed contribution's ingest again (optionally with a CSV column mapping), reusing the stored file."""
    if actor.pk != contribution.contributor_id and not datanet_can_curate(user=actor, datanet=contribution.datanet):
        raise NotAllowed("Only the contributor or a curator can retry this upload.")
    with transaction.atomic(durable=True):
        updated = Contribution.objects.filter(pk=contribution.pk, status=Contribution.Status.FAILED).update(
            status=Contribution.Status.UPLOADED,
            message="",
            report={},
            rows_processed=0,
            bytes_read=0,
            column_mapping=column_mapping or contribution.column_mapping,
            started_at=None,
            finished_at=None,
            worker_hostname="",
        )
        if not updated:
            raise DatanetError("Only a failed upload can be retried.", code="not_failed")
        if (
            Contribution.objects.filter(datanet=contribution.datanet, sha256=contribution.sha256)
            .exclude(pk=contribution.pk)
            .exclude(status__in=[Contribution.Status.FAILED, Contribution.Status.REJECTED])
            .exists()
        ):
            raise DatanetError("The same file has been uploaded again since; see that upload.", code="duplicate_file")
        hooks.run_upload_handlers(contribution)  # a failed upload's bond was returned: the retry posts one again
        transaction.on_commit(lambda: _enqueue_ingest(contribution.pk))
    contribution.refresh_from_db()
    return contribution


# --- Review -------------------------------------------------------------------------------------------------------


def contribution_approve(*, contribution: Contribution, curator, note: str = "") -> Contribution:
    _require_curator(curator, contribution.datanet)
    with transaction.atomic(durable=True):
        updated = Contribution.objects.filter(pk=contribution.pk, status=Contribution.Status.NEEDS_REVIEW).update(
            status=Contribution.Status.ACCEPTED, message=note.strip(), reviewed_by=curator, reviewed_at=timezone.now()
        )
        if not updated:
            raise DatanetError("Only a contribution waiting for review can be accepted.", code="not_reviewable")
        Record.objects.filter(contribution=contribution, status=Record.Status.PENDING).update(
            status=Record.Status.ACCEPTED
        )
        _rows_changed(contribution.datanet_id)
        hooks.on_decided(contribution.pk)
    contribution.refresh_from_db()
    return contribution


def contribution_reject(
    *,
    contribution: Contribution,
    curator,
    reason: str,
    grounds: str = Contribution.RejectedAs.NOT_A_FIT,
    from_finding: bool = False,
) -> Contribution:
    """Rejects a contribution on `grounds` (Contribution.REJECT_CHOICES): "not_a_fit" returns its bond, "spam"
    forfeits it to the datanet's pool (the decided handlers do, after commit). "harmful" (forfeits it too) only
    `from_finding`: a curator's confirmed finding (attribution.penalties), never a plain reject."""
    _require_curator(curator, contribution.datanet)
    reason = (reason or "").strip()
    allowed = Contribution.RejectedAs.values if from_finding else Contribution.REJECT_CHOICES
    if grounds not in allowed:
        choices = " or ".join(f"“{c.value}” ({c.label.lower()})" for c in Contribution.REJECT_CHOICES)
        raise DatanetError(f"Reject as {choices}.", code="invalid_grounds")
    if not reason:
        raise DatanetError("Say why the contribution is rejected; the contributor will see it.", code="reason_required")
    with transaction.atomic(durable=True):
        updated = Contribution.objects.filter(
            pk=contribution.pk, status__in=[Contribution.Status.NEEDS_REVIEW, Contribution.Status.ACCEPTED]
        ).update(
            status=Contribution.Status.REJECTED,
            message=reason,
            rejected_as=grounds,
            reviewed_by=curator,
            reviewed_at=timezone.now(),
        )
        if not updated:
            raise DatanetError("This contribution cannot be rejected in its current state.", code="not_reviewable")
        Record.objects.filter(contribution=contribution, status__in=Record.LIVE).update(status=Record.Status.REJECTED)
        _rows_changed(contribution.datanet_id)
        hooks.on_decided(contribution.pk)
    contribution.refresh_from_db()
    return contribution


def record_drop(*, record: Record, curator, reason: str = "") -> Record:
    """Drops one row. Versions already published keep it; the next version will not contain it."""
    _require_curator(curator, record.datanet)
    with transaction.atomic(durable=True):
        updated = Record.objects.filter(pk=record.pk, status__in=Record.LIVE).update(
            status=Record.Status.DROPPED, drop_reason=(reason or "dropped by a curator").strip()[:300]
        )
        if not updated:
            raise DatanetError("Only a row waiting for review or accepted can be dropped.", code="not_droppable")
        _rows_changed(record.datanet_id)
    record.refresh_from_db()
    return record
