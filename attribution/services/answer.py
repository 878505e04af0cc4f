"""One attribution per answer: a pending row when an inference completes (its task enqueued after commit), then the
engine's result (or, after the last retry, the fallback) stored once and handed to settlement."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from attribution import runtime
from attribution.models import Attribution, AttributionRow, AttributionShare, ModelIndex
from attribution.services.row_earnings import attribution_rows_for, original_rows
from attribution.services.settlement import (
    RETRIEVAL_SETTLEMENT_RULE,
    SETTLEMENT_RULE,
    attribution_settle,
    citation_weights,
    retrieval_part,
    settlement_shares,
    training_row_shares,
)
from core.jobs import enqueue_or_fail
from modelfactory.models import Inference

logger = logging.getLogger(__name__)


class AttributionRetry(Exception):
    """Computing the attribution failed; the task retries it (with backoff) before falling back."""


def attribution_request(*, inference) -> Attribution:
    """Called inside the transaction that completes an inference: a pending row now, the task after commit."""
    attribution, _ = Attribution.objects.get_or_create(inference=inference)
    transaction.on_commit(lambda: _enqueue(inference.pk))
    return attribution


def inference_completed(*, inference) -> None:
    """The modelfactory.hooks inference-completed handler (inside the completing transaction)."""
    attribution_request(inference=inference)


def _enqueue(inference_id: int) -> None:
    """A broker that is down loses nothing: the pending row stays and the sweep enqueues it later."""
    enqueue_or_fail(
        "attribution.tasks.inference_attribute_task",
        args=[inference_id],
        what=f"the attribution of inference {inference_id}",
    )


def attribution_compute(inference) -> dict:
    """Runs the engine on one answer; returns the fields to store. Raises on any failure."""
    from attribution import engine  # loads torch: only the attribution worker needs it

    version = inference.model_version
    index_row = ModelIndex.objects.filter(job_id=version.job_id).first()
    if index_row is None:
        raise engine.EngineError("This model version has no attribution index (its indexing stage did not finish).")
    if not inference.output_token_ids or not inference.prompt_token_ids:
        raise engine.EngineError("The answer has no token ids to attribute.")
    entry = runtime.loaded(
        key=(index_row.pk, index_row.folder, index_row.build_seconds),  # a rebuilt index is reloaded
        base_dir=version.job.base_model.path,
        adapter_dir=version.adapter_path,
        folder=index_row.folder,
        size=settings.MF_ATTRIBUTION_CACHE_SIZE,
    )
    started = time.perf_counter()
    result = engine.attribute(
        entry.index, entry.spans, entry.model, inference.prompt_token_ids, inference.output_token_ids, entry.owners
    )
    offsets = runtime.char_offsets(entry.tokenizer, list(inference.output_token_ids), inference.output)
    spans = [
        {
            "start": start,
            "end": end,
            "record_id": row_id,
            "char_start": offsets[start] if offsets else None,
            "char_end": offsets[end] if offsets else None,
        }
        for start, end, row_id in result.spans
    ]
    return {
        "method_version": result.method_version,
        "params": result.params,
        "contributor_shares": {str(k): float(v) for k, v in result.contributor_shares.items()},
        "contribution_shares": {str(k): float(v) for k, v in result.contribution_shares.items()},
        "unattributed": float(min(1.0, max(0.0, result.unattributed))),
        "span_coverage": float(result.span_coverage),
        "gradient_attributed": float(result.gradient_attributed),
        "top_rows": [
            {"record_id": row_id, "contributor_id": entry.owners[row_id].contributor_id, "score": score}
            for row_id, score in result.top_rows
        ],
        "spans": spans,
        "row_shares": [
            {"record_id": row_id, "contributor_id": entry.owners[row_id].contributor_id, "share": float(share)}
            for row_id, share in result.row_shares.items()
        ],
        "compute_ms": int((time.perf_counter() - started) * 1000),
    }


def _store(*, attribution_id: int, fields: dict, status: str) -> Attribution:
    """Writes a finished attribution and its per-contributor rows, once (a finished one is never overwritten)."""
    with transaction.atomic():
        attribution = Attribution.objects.select_for_update().select_related("inference").get(pk=attribution_id)
        if attribution.is_finished:
            return attribution
        inference = attribution.inference
        job = inference.model_version.job
        fields = dict(fields)
        credited_rows = fields.pop("row_shares", [])  # the engine's rows (none in a fallback)
        rule = SETTLEMENT_RULE if inference.retrieval is None else RETRIEVAL_SETTLEMENT_RULE
        row_shares = training_row_shares(job=job) if rule == "settle-1" else {}
        shares = fields.get("contributor_shares", {})
        unattributed = fields.get("unattributed", 0.0) if status == Attribution.Status.DONE else 1.0
        weights = citation_weights(inference.retrieval) if rule == "settle-3" else {}
        settled = settlement_shares(
            contributor_shares=shares if status == Attribution.Status.DONE else {},
            unattributed=unattributed,
            row_shares=row_shares,
            rule=rule,
            weights=weights,
        )
        for name, value in fields.items():
            setattr(attribution, name, value)
        attribution.status = status
        attribution.settlement_rule = rule
        attribution.settlement_shares = settled
        attribution.citation_weights = weights
        attribution.finished_at = timezone.now()
        attribution.save()
        # settle-2's shares are fractions of the contributors' part as they are (the rest went to the owner).
        total = (sum(float(v) for v in settled.values()) or 1.0) if rule == "settle-1" else 1.0
        users = sorted({int(k) for k in shares} | {int(k) for k in settled})
        AttributionShare.objects.bulk_create(
            AttributionShare(
                attribution=attribution,
                contributor_id=uid,
                model_id=inference.model_id,
                share=float(shares.get(str(uid), 0.0)),
                settled_share=float(settled.get(str(uid), 0)) / total,
                created_at=inference.created_at,
            )
            for uid in users
        )
        rows = attribution_rows_for(
            row_shares=credited_rows,
            rule=rule,
            retrieval_part=retrieval_part(weights),
            citations=(inference.retrieval or {}).get("citations") or [],
            settled=settled,
        )
        AttributionRow.objects.bulk_create(
            AttributionRow(
                attribution=attribution,
                record_id=row["record_id"],
                contributor_id=row["contributor_id"],
                share=row["share"],
                settled_share=row["settled_share"],
            )
            for row in original_rows(rows=rows)
        )
    return attribution


def attribution_run(*, inference_id: int, final_attempt: bool = False) -> Attribution | None:
    """Attributes one completed answer (once) and settles its fee (once). Raises AttributionRetry when the engine
    failed and attempts remain; on the final attempt the fee is settled by row share instead. Returns None for an
    inference that is not completed (nothing to attribute)."""
    inference = (
        Inference.objects.select_related("model", "model_version__job__base_model").filter(pk=inference_id).first()
    )
    if inference is None or inference.status != Inference.Status.COMPLETED:
        return None
    attribution, _ = Attribution.objects.get_or_create(inference=inference)
    if not attribution.is_finished:
        attribution = _attribute(inference=inference, attribution=attribution, final_attempt=final_attempt)
    return attribution_settle(attribution_id=attribution.pk)


def _attribute(*, inference, attribution: Attribution, final_attempt: bool) -> Attribution:
    """One attempt at an unfinished attribution: the engine's result stored, or on failure AttributionRetry (attempts
    remain) or the fallback stored (the final attempt)."""
    Attribution.objects.filter(pk=attribution.pk).update(attempts=F("attempts") + 1)
    try:
        fields = attribution_compute(inference)
    except Exception as exc:
        logger.warning("attribution of inference %s failed: %s", inference.pk, exc, exc_info=True)
        error = f"{exc.__class__.__name__}: {exc}"
        if not final_attempt:
            Attribution.objects.filter(
                pk=attribution.pk, status__in=[Attribution.Status.PENDING, Attribution.Status.FAILED]
            ).update(status=Attribution.Status.FAILED, error=error)
            raise AttributionRetry(error) from exc
        return _store(
            attribution_id=attribution.pk,
            fields={"error": error, "unattributed": 1.0},
            status=Attribution.Status.FALLBACK,
        )
    return _store(attribution_id=attribution.pk, fields={**fields, "error": ""}, status=Attribution.Status.DONE)
