"""Running the ingest of an uploaded file: claim it, stream its rows through the pipeline into staged rows, then
make them visible together (or fail it and delete them); and failing the ingests whose worker is gone."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.models import WorkerHeartbeat
from datanets import hooks
from datanets.ingest import IngestError
from datanets.ingest.dedup import CopySources, NearDuplicateIndex
from datanets.ingest.formats import HEAD_BYTES, detect_format
from datanets.ingest.pipeline import ProcessedRow, Report, RowProcessor
from datanets.ingest.readers import read_rows
from datanets.ingest.tokens import TokenCounter, token_counter_for
from datanets.ingest.validate import answer_text
from datanets.models import Contribution, Datanet, Record
from datanets.services.common import _rows_changed

logger = logging.getLogger(__name__)
STAGE_BATCH = 1000
PROGRESS_EVERY_SECONDS = 1.0


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
        hooks.on_decided(contribution_id)


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
                copy_of_id=r.details["copied"]["record_id"] if "copied" in r.details else None,
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


def _processor(datanet: Datanet, contributor_id: int | None = None) -> RowProcessor:
    """A row processor that knows the datanet's live rows, for exact and near-duplicate detection, and for rows
    that copy another contributor's earlier row (flagged "copied" with that row)."""
    live = Record.objects.filter(datanet=datanet, status__in=Record.LIVE)
    existing = set(live.values_list("content_hash", flat=True).iterator(chunk_size=5000))
    near_index = NearDuplicateIndex()
    sources = CopySources()
    rows = live.values_list("id", "contributor_id", "text", "content").iterator(chunk_size=2000)
    for record_id, owner_id, text, content in rows:
        near_index.add(("record", record_id), text)
        sources.add(record_id, owner_id, text, answer_text(datanet.kind, content))
    return RowProcessor(
        kind=datanet.kind,
        flag_actions=datanet.flag_actions,
        existing_hashes=existing,
        row_max_chars=settings.MF_INGEST_ROW_MAX_CHARS,
        near_index=near_index,
        copy_sources=sources,
        contributor_id=contributor_id,
    )


def _ingest(contribution: Contribution) -> None:
    datanet = contribution.datanet
    processor = _processor(datanet, contribution.contributor_id)
    counter = _token_counter()
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


def _drop_late_duplicates(contribution: Contribution, staged, report: Report) -> int:
    """Rows that another upload made live while this one ran are duplicates now: deletes them from the staged rows,
    counts them in the report, and returns their tokens."""
    clash = staged.filter(
        content_hash__in=Record.objects.filter(datanet_id=contribution.datanet_id, status__in=Record.LIVE).values(
            "content_hash"
        )
    )
    late = list(clash.values_list("line", "token_count"))
    if not late:
        return 0
    clash.delete()
    report.rows_accepted -= len(late)
    report.duplicates_total += len(late)
    report.duplicates.extend({"line": line, "kind": "exact", "in_datanet": True} for line, _ in late)
    return sum(n for _, n in late)


def _outcome(datanet: Datanet, report: Report, flagged: bool) -> tuple[str, str | None, str]:
    """The contribution's status, its rows' status (None: delete them) and its message."""
    clean = report.errors_total == 0 and not flagged
    if report.rows_accepted == 0:
        return Contribution.Status.FAILED, None, "No row of this file could be used; the report says why for each row."
    if datanet.policy == Datanet.Policy.OPEN and clean:
        return Contribution.Status.ACCEPTED, Record.Status.ACCEPTED, ""
    return Contribution.Status.NEEDS_REVIEW, Record.Status.PENDING, ""


def _finalise(contribution: Contribution, processor: RowProcessor, tokens: int, estimated: bool) -> None:
    report = processor.report
    with transaction.atomic(durable=True):
        Datanet.objects.select_for_update().get(pk=contribution.datanet_id)  # one finalisation per datanet at a time
        current = Contribution.objects.select_for_update().get(pk=contribution.pk)
        if current.status != Contribution.Status.VALIDATING:
            raise IngestError("This upload was stopped before it finished.", code="stopped")
        staged = Record.objects.filter(contribution=contribution, status=Record.Status.STAGED)
        tokens -= _drop_late_duplicates(contribution, staged, report)
        status, record_status, message = _outcome(contribution.datanet, report, staged.exclude(flags=[]).exists())
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
        if status != Contribution.Status.NEEDS_REVIEW:
            hooks.on_decided(contribution.pk)


def contribution_fail_stale(*, now=None) -> list[int]:
    """Marks failed every ingest whose worker is gone: its worker's heartbeat is stale or missing, its progress has
    not moved for MF_INGEST_STALE_SECONDS, or it ran past MF_INGEST_TIME_LIMIT_SECONDS. Their staged rows are
    deleted, so none of their rows ever become visible. Returns the ids marked failed."""
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
