"""Datanet writes: create/update datanets, take uploads, run the ingest, review, publish versions."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.core.files.base import File
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from datanets.ingest import IngestError
from datanets.ingest.dedup import NearDuplicateIndex
from datanets.ingest.formats import HEAD_BYTES, detect_format
from datanets.ingest.manifest import merkle_root
from datanets.ingest.pipeline import ProcessedRow, RowProcessor
from datanets.ingest.readers import read_rows
from datanets.ingest.screen import ACTIONS, FLAG_KINDS
from datanets.ingest.tokens import TokenCounter, token_counter_for
from datanets.models import Contribution, Datanet, DatanetVersion, Record, Tag, VersionRecord
from datanets.selectors import datanet_can_contribute, datanet_can_curate

logger = logging.getLogger(__name__)
STAGE_BATCH = 1000
PROGRESS_EVERY_SECONDS = 1.0


class DatanetError(Exception):
    """A refused request, with a plain-language message. `code` is stable for the API."""

    status = 400
    STATUS_BY_CODE = {"file_too_large": 413, "duplicate_file": 409, "slug_taken": 409}

    def __init__(self, message: str, *, code: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = self.STATUS_BY_CODE.get(code, type(self).status)


class NotAllowed(DatanetError):
    status = 403

    def __init__(self, message: str):
        super().__init__(message, code="permission_denied")


# --- Datanets -------------------------------------------------------------------------------------------------------


def _tags(names) -> list[Tag]:
    cleaned = []
    for name in names or []:
        slug = slugify(name)[:50]
        if slug and slug not in cleaned:
            cleaned.append(slug)
    return [Tag.objects.get_or_create(name=n)[0] for n in cleaned[:20]]


# Paths under /datanets/ that are not datanets.
RESERVED_SLUGS = {"new", "contributions", "rows"}


def _unique_slug(name: str) -> str:
    base = slugify(name)[:90] or "datanet"
    if base in RESERVED_SLUGS:
        base = f"{base}-datanet"
    slug, n = base, 2
    while Datanet.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def _check_flag_actions(actions: dict | None) -> dict:
    actions = actions or {}
    for kind, action in actions.items():
        if kind not in FLAG_KINDS:
            raise DatanetError(f"Unknown flag kind '{kind}'; known: {', '.join(FLAG_KINDS)}.")
        if action not in ACTIONS:
            raise DatanetError(f"'{action}' is not an action for '{kind}'; use keep, redact or drop.")
        if action == "redact" and not FLAG_KINDS[kind][1]:
            raise DatanetError(f"'{kind}' cannot be redacted; choose keep or drop.")
    return actions


def datanet_create(
    *,
    owner,
    name: str,
    kind: str,
    summary: str,
    description: str = "",
    tags=(),
    licence: str = "CC-BY-4.0",
    visibility: str = Datanet.Visibility.PUBLIC,
    policy: str = Datanet.Policy.APPROVAL,
    slug: str | None = None,
    flag_actions: dict | None = None,
) -> Datanet:
    if kind not in Datanet.Kind.values:
        raise DatanetError(f"Unknown kind '{kind}'; use instruction, chat or text.")
    with transaction.atomic(durable=True):
        if slug:
            slug = slugify(slug)[:100]
            if slug in RESERVED_SLUGS or Datanet.objects.filter(slug=slug).exists():
                raise DatanetError(f"The address '{slug}' is taken; choose another.", code="slug_taken")
        datanet = Datanet.objects.create(
            slug=slug or _unique_slug(name),
            name=name.strip(),
            kind=kind,
            summary=summary.strip(),
            description=description,
            licence=licence or "CC-BY-4.0",
            visibility=visibility,
            policy=policy,
            owner=owner,
            flag_actions={**Datanet._meta.get_field("flag_actions").default(), **_check_flag_actions(flag_actions)},
        )
        datanet.tags.set(_tags(tags))
    return datanet


UPDATABLE = ("name", "summary", "description", "licence", "visibility", "policy")


def datanet_update(
    *, datanet: Datanet, actor, tags=None, curators=None, flag_actions: dict | None = None, **fields
) -> Datanet:
    """Curators may edit; only the owner (or staff) changes the curators. `curators` is a list of usernames."""
    if not datanet_can_curate(user=actor, datanet=datanet):
        raise NotAllowed("Only the datanet's owner and curators can change it.")
    unknown = set(fields) - set(UPDATABLE)
    if unknown:
        raise DatanetError("These fields cannot be changed: " + ", ".join(sorted(unknown)) + ".")
    with transaction.atomic(durable=True):
        datanet = Datanet.objects.select_for_update().get(pk=datanet.pk)
        for key, value in fields.items():
            setattr(datanet, key, value.strip() if isinstance(value, str) and key != "description" else value)
        if flag_actions is not None:
            datanet.flag_actions = {**datanet.flag_actions, **_check_flag_actions(flag_actions)}
        datanet.save()
        if tags is not None:
            datanet.tags.set(_tags(tags))
        if curators is not None:
            if not (actor.is_staff or actor.pk == datanet.owner_id):
                raise NotAllowed("Only the owner can choose the curators.")
            from django.contrib.auth import get_user_model

            users = list(get_user_model().objects.filter(username__in=curators))
            missing = set(curators) - {u.username for u in users}
            if missing:
                raise DatanetError("No such user: " + ", ".join(sorted(missing)) + ".")
            datanet.curators.set(users)
    return datanet


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
    from django.template.defaultfilters import filesizeformat

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
            if enqueue:
                transaction.on_commit(lambda: _enqueue_ingest(contribution.pk))
    except IntegrityError:  # the same file raced in from another request
        contribution.file.delete(save=False)
        raise DatanetError("This file is already being uploaded to this datanet.", code="duplicate_file") from None
    if enqueue:
        contribution.refresh_from_db()  # a broker that was down has failed it already (_enqueue_ingest)
    return contribution


def _same_file_message(earlier: Contribution, user) -> str:
    who = "You" if earlier.contributor_id == user.pk else "Someone"
    return (
        f"{who} already uploaded this exact file to this datanet on {earlier.created_at:%d %b %Y} "
        f"(contribution #{earlier.pk}); it was recognised by its SHA-256 fingerprint."
    )


QUEUE_DOWN_MESSAGE = (
    "The job queue could not be reached, so checking this file did not start. Your file was kept: "
    "press “Try again” in a minute, or ask an operator to check the broker (see /healthz)."
)


def _enqueue_ingest(contribution_id: int) -> None:
    """Hands the ingest to the default queue. A broker that is down leaves the contribution failed with a plain
    message (the stored file is kept, so "Try again" works once the broker is back): nothing says "waiting" while
    no worker will ever see it."""
    from datanets.tasks import contribution_ingest_task

    try:
        contribution_ingest_task.apply_async(args=[contribution_id], retry=False)
    except Exception as exc:
        logger.warning("could not enqueue the ingest of contribution %s: %s", contribution_id, exc)
        Contribution.objects.filter(pk=contribution_id, status=Contribution.Status.UPLOADED).update(
            status=Contribution.Status.FAILED, message=QUEUE_DOWN_MESSAGE, finished_at=timezone.now()
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
        transaction.on_commit(lambda: _enqueue_ingest(contribution.pk))
    contribution.refresh_from_db()
    return contribution


# --- Ingest -------------------------------------------------------------------------------------------------------


def _token_counter() -> TokenCounter:
    # A folder from settings, not the base-model registry: datanets knows nothing of models (DESIGN.md arrows).
    return token_counter_for(str(settings.MF_TOKEN_COUNT_MODEL_DIR))


def _fail(contribution_id: int, message: str, report: dict | None = None) -> None:
    """Marks a contribution failed and removes its staged rows, in one transaction."""
    with transaction.atomic():
        Record.objects.filter(contribution_id=contribution_id, status=Record.Status.STAGED).delete()
        Contribution.objects.filter(pk=contribution_id).update(
            status=Contribution.Status.FAILED,
            message=message,
            finished_at=timezone.now(),
            **({"report": report} if report is not None else {}),
        )


def _stage(contribution: Contribution, rows: list[ProcessedRow], counter: TokenCounter) -> int:
    counts = counter.count([r.text for r in rows])
    Record.objects.bulk_create(
        [
            Record(
                datanet_id=contribution.datanet_id,
                contribution_id=contribution.pk,
                contributor_id=contribution.contributor_id,
                line=r.line,
                content=r.content,
                text=r.text,
                content_hash=r.hash,
                token_count=n,
                flags=r.flags,
                flag_details=r.details,
                status=Record.Status.STAGED,
            )
            for r, n in zip(rows, counts, strict=True)
        ]
    )
    return sum(counts)


def contribution_ingest(*, contribution_id: int, worker_hostname: str = "") -> Contribution | None:
    """Validates, normalises, de-duplicates and screens an uploaded file. Rows are written as invisible `staged`
    rows while the file streams, then made visible together in one transaction at the end; on any failure the
    staged rows are deleted. Claims the contribution with a conditional update, so a repeated task is harmless."""
    now = timezone.now()
    claimed = Contribution.objects.filter(pk=contribution_id, status=Contribution.Status.UPLOADED).update(
        status=Contribution.Status.VALIDATING, started_at=now, heartbeat_at=now, worker_hostname=worker_hostname
    )
    if not claimed:
        return None
    contribution = Contribution.objects.select_related("datanet").get(pk=contribution_id)
    try:
        _ingest(contribution)
    except IngestError as exc:
        if exc.code == "stopped":  # already marked failed elsewhere: only clean up what this run staged
            Record.objects.filter(contribution_id=contribution_id, status=Record.Status.STAGED).delete()
        else:
            _fail(contribution_id, exc.message, {"error": exc.message, "code": exc.code, **exc.details})
    except Exception:
        logger.exception("ingest of contribution %s failed", contribution_id)
        _fail(contribution_id, "Something went wrong on our side while reading the file; it has been logged.")
    contribution.refresh_from_db()
    return contribution


def _ingest(contribution: Contribution) -> None:
    datanet = contribution.datanet
    live = Record.objects.filter(datanet=datanet, status__in=Record.LIVE)
    existing = set(live.values_list("content_hash", flat=True).iterator(chunk_size=5000))
    near_index = NearDuplicateIndex()
    for record_id, text in live.values_list("id", "text").iterator(chunk_size=2000):
        near_index.add(("record", record_id), text)
    counter = _token_counter()
    processor = RowProcessor(
        kind=datanet.kind,
        flag_actions=datanet.flag_actions,
        existing_hashes=existing,
        row_max_chars=settings.MF_INGEST_ROW_MAX_CHARS,
        near_index=near_index,
    )
    report = processor.report
    tokens = 0
    with contribution.file.open("rb") as raw:
        fmt, notices = detect_format(raw.read(HEAD_BYTES), contribution.original_name, total_size=contribution.size)
        raw.seek(0)
        report.format = fmt
        report.notices.extend(notices)
        Contribution.objects.filter(pk=contribution.pk).update(detected_format=fmt, heartbeat_at=timezone.now())
        batch: list[ProcessedRow] = []
        last = time.monotonic()
        rows = read_rows(
            raw,
            fmt,
            kind=datanet.kind,
            row_max_chars=settings.MF_INGEST_ROW_MAX_CHARS,
            column_mapping=contribution.column_mapping,
            notices=report.notices,
            max_unpacked=settings.MF_INGEST_MAX_UNPACKED_BYTES,
            document_row_chars=settings.MF_INGEST_DOCUMENT_ROW_CHARS,
        )
        for line, raw_row, error in rows:
            row = processor.process(line, raw_row, error)
            if row is not None:
                batch.append(row)
                if len(batch) >= STAGE_BATCH:
                    tokens += _stage(contribution, batch, counter)
                    batch = []
            if time.monotonic() - last >= PROGRESS_EVERY_SECONDS:
                last = time.monotonic()
                _progress(contribution, report.rows_total, raw)
        if batch:
            tokens += _stage(contribution, batch, counter)
        _progress(contribution, report.rows_total, raw)
    _finalise(contribution, processor, tokens, counter.estimated)


def _progress(contribution: Contribution, rows: int, raw) -> None:
    try:
        position = raw.tell()
    except (OSError, ValueError):
        position = 0
    updated = Contribution.objects.filter(pk=contribution.pk, status=Contribution.Status.VALIDATING).update(
        rows_processed=rows, bytes_read=min(position, contribution.size), heartbeat_at=timezone.now()
    )
    if not updated:  # marked failed by the stale-ingest sweep (or otherwise ended): stop working on it
        raise IngestError("This upload was stopped before it finished.", code="stopped")


def _finalise(contribution: Contribution, processor: RowProcessor, tokens: int, estimated: bool) -> None:
    report = processor.report
    with transaction.atomic(durable=True):
        Datanet.objects.select_for_update().get(pk=contribution.datanet_id)  # one finalisation per datanet at a time
        current = Contribution.objects.select_for_update().get(pk=contribution.pk)
        if current.status != Contribution.Status.VALIDATING:
            raise IngestError("This upload was stopped before it finished.", code="stopped")
        staged = Record.objects.filter(contribution=contribution, status=Record.Status.STAGED)
        # Rows that another upload made live while this one ran are duplicates now.
        clash = staged.filter(
            content_hash__in=Record.objects.filter(datanet_id=contribution.datanet_id, status__in=Record.LIVE).values(
                "content_hash"
            )
        )
        late = list(clash.values_list("line", "token_count"))
        if late:
            clash.delete()
            report.rows_accepted -= len(late)
            report.duplicates_total += len(late)
            tokens -= sum(n for _, n in late)
            report.duplicates.extend({"line": line, "kind": "exact", "in_datanet": True} for line, _ in late)
        datanet = contribution.datanet
        flagged = staged.exclude(flags=[]).exists()
        clean = report.errors_total == 0 and not flagged
        if report.rows_accepted == 0:
            status, record_status = Contribution.Status.FAILED, None
            message = "No row of this file could be used; the report says why for each row."
        elif datanet.policy == Datanet.Policy.OPEN and clean:
            status, record_status, message = Contribution.Status.ACCEPTED, Record.Status.ACCEPTED, ""
        else:
            status, record_status, message = Contribution.Status.NEEDS_REVIEW, Record.Status.PENDING, ""
        if record_status is None:
            staged.delete()
        else:
            staged.update(status=record_status)
            _rows_changed(contribution.datanet_id)
        data = report.as_dict()
        data.update(tokens=tokens, tokens_estimated=estimated)
        Contribution.objects.filter(pk=contribution.pk).update(
            status=status,
            message=message,
            report=data,
            rows_total=report.rows_total,
            rows_accepted=report.rows_accepted,
            rows_invalid=report.errors_total,
            duplicates=report.duplicates_total,
            rows_processed=report.rows_total,
            bytes_read=contribution.size,
            tokens=tokens,
            tokens_estimated=estimated,
            finished_at=timezone.now(),
        )


def contribution_fail_stale(*, now=None) -> list[int]:
    """Marks failed every ingest whose worker is gone: its worker's heartbeat is stale or missing, its progress has
    not moved for MF_INGEST_STALE_SECONDS, or it ran past MF_INGEST_TIME_LIMIT_SECONDS. Their staged rows are
    deleted, so none of their rows ever become visible. Returns the ids marked failed."""
    from core.models import WorkerHeartbeat

    now = now or timezone.now()
    fresh_workers = WorkerHeartbeat.objects.filter(
        last_seen__gte=now - timedelta(seconds=settings.MF_WORKER_STALE_SECONDS)
    ).values("hostname")
    stale = (
        Contribution.objects.filter(status=Contribution.Status.VALIDATING)
        .filter(
            (~Q(worker_hostname="") & ~Q(worker_hostname__in=fresh_workers))
            | Q(heartbeat_at__lt=now - timedelta(seconds=settings.MF_INGEST_STALE_SECONDS))
            | Q(started_at__lt=now - timedelta(seconds=settings.MF_INGEST_TIME_LIMIT_SECONDS))
        )
        .values_list("pk", flat=True)
    )
    failed = []
    for pk in list(stale):
        with transaction.atomic(durable=True):
            if not Contribution.objects.select_for_update().filter(pk=pk, status=Contribution.Status.VALIDATING):
                continue
            _fail(
                pk,
                "The worker checking this file stopped before it finished (it may have been restarted). "
                "None of its rows were kept. Press “Try again” to check it again.",
            )
        failed.append(pk)
    return failed


# --- Review -------------------------------------------------------------------------------------------------------


def _rows_changed(datanet_id: int) -> None:
    """Marks the datanet's rows as changed (its `updated_at`), which is what keys the cached stats of its page
    (selectors.datanet_stats). Every service that makes rows live, or stops them being live, calls it."""
    Datanet.objects.filter(pk=datanet_id).update(updated_at=timezone.now())


def _require_curator(user, datanet: Datanet) -> None:
    if not datanet_can_curate(user=user, datanet=datanet):
        raise NotAllowed("Only the datanet's owner and curators can review contributions.")


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
    contribution.refresh_from_db()
    return contribution


def contribution_reject(*, contribution: Contribution, curator, reason: str) -> Contribution:
    _require_curator(curator, contribution.datanet)
    reason = (reason or "").strip()
    if not reason:
        raise DatanetError("Say why the contribution is rejected; the contributor will see it.", code="reason_required")
    with transaction.atomic(durable=True):
        updated = Contribution.objects.filter(
            pk=contribution.pk, status__in=[Contribution.Status.NEEDS_REVIEW, Contribution.Status.ACCEPTED]
        ).update(status=Contribution.Status.REJECTED, message=reason, reviewed_by=curator, reviewed_at=timezone.now())
        if not updated:
            raise DatanetError("This contribution cannot be rejected in its current state.", code="not_reviewable")
        Record.objects.filter(contribution=contribution, status__in=Record.LIVE).update(status=Record.Status.REJECTED)
        _rows_changed(contribution.datanet_id)
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


# --- Versions -----------------------------------------------------------------------------------------------------


def version_publish(*, datanet: Datanet, actor, notes: str = "") -> DatanetVersion:
    """Freezes the datanet's accepted rows into a new immutable version whose manifest hash is the Merkle root
    of their row hashes. Refuses an empty version and one identical to the previous version."""
    _require_curator(actor, datanet)
    with transaction.atomic(durable=True):
        Datanet.objects.select_for_update().get(pk=datanet.pk)
        rows = list(
            Record.objects.filter(datanet=datanet, status=Record.Status.ACCEPTED).values_list(
                "id", "content_hash", "contributor_id", "token_count"
            )
        )
        if not rows:
            raise DatanetError("There are no accepted rows to publish yet.", code="empty_version")
        manifest = merkle_root(h for _, h, _, _ in rows)
        previous = datanet.versions.order_by("-number").first()
        if previous is not None and previous.manifest_hash == manifest:
            raise DatanetError(
                f"Nothing changed since version {previous.number}; there is nothing new to publish.",
                code="unchanged",
            )
        version = DatanetVersion.objects.create(
            datanet=datanet,
            number=(previous.number + 1) if previous else 1,
            manifest_hash=manifest,
            row_count=len(rows),
            contributor_count=len({c for _, _, c, _ in rows}),
            token_count=sum(t for _, _, _, t in rows),
            created_by=actor,
            notes=notes.strip(),
        )
        VersionRecord.objects.bulk_create(
            [VersionRecord(version=version, record_id=pk) for pk, _, _, _ in rows], batch_size=5000
        )
    return version


def version_manifest_recompute(*, version: DatanetVersion) -> str:
    """The manifest hash recomputed from the rows the version froze (equal to version.manifest_hash)."""
    hashes = Record.objects.filter(
        pk__in=VersionRecord.objects.filter(version=version).values("record_id")
    ).values_list("content_hash", flat=True)
    return merkle_root(hashes.iterator(chunk_size=5000))


# --- Demo data ----------------------------------------------------------------------------------------------------


def demo_datanet_seed(*, owner) -> Datanet | None:
    """On first run only: the demo datanet with three contributors' rows, reviewed and published as version 1,
    going through the same upload -> ingest -> review -> publish path as real data. Returns None when it exists."""
    import json

    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile

    from datanets.demo_data import CONTRIBUTORS, DEMO_DESCRIPTION, DEMO_SLUG

    if Datanet.objects.filter(slug=DEMO_SLUG).exists():
        return None
    datanet = datanet_create(
        owner=owner,
        slug=DEMO_SLUG,
        name="Home gardening",
        kind=Datanet.Kind.INSTRUCTION,
        summary="Short, practical answers about growing vegetables and herbs at home.",
        description=DEMO_DESCRIPTION,
        tags=["gardening", "vegetables", "herbs"],
        licence="CC-BY-4.0",
        visibility=Datanet.Visibility.PUBLIC,
        policy=Datanet.Policy.APPROVAL,
    )
    User = get_user_model()
    for username, pairs in CONTRIBUTORS.items():
        user, created = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        body = "".join(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n" for q, a in pairs)
        upload = ContentFile(body.encode(), name=f"{username}.jsonl")
        contribution = contribution_create(datanet=datanet, contributor=user, upload=upload, enqueue=False)
        contribution = contribution_ingest(contribution_id=contribution.pk)
        if contribution.status == Contribution.Status.NEEDS_REVIEW:
            contribution_approve(contribution=contribution, curator=owner, note="Demo data")
    version_publish(datanet=datanet, actor=owner, notes="Demo data from three contributors.")
    return datanet
