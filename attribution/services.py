"""Attribution writes: the index a training job builds, one attribution per answer, and the hand-off to settlement.

Rules (stored with every result, so a result can be recomputed):

- Which rows are indexed: the job's training rows only (result.train_row_ids), tokenised exactly as training did
  (modelfactory.training.data.build_examples with the job's max_length). The held-out eval rows did not shape the
  weights, so they earn no attribution; they are the queries of the curators' data valuation instead. The span
  index covers the same training rows.
- Settlement rule "settle-1": the engine's shares (method "poa-2") name who shaped the answer; the part it could
  not pin on anyone (`unattributed`) still belongs to the data contributors as a group, so it is spread over them by
  their row share of the model's training data (rows in the job's datanet versions, version_contributor_row_counts).
  settled share_c = share_c + unattributed * row_share_c. The ledger splits the contributors' part of the fee (70%
  by default) by these shares, exactly to the micro-unit.
- Fallback: an attribution that still fails after MF_ATTRIBUTION_MAX_RETRIES retries is stored as "fallback" and
  settled by row share alone; the ledger transaction's fallback_reason says so.
- No hold (nothing reserved) or a zero fee: there is nothing to settle; a zero-fee hold is released in full.
- Settlements batch when they queue (PostgreSQL): an answer's settlement takes along other finished answers waiting
  for theirs in one ledger call (`attribution_settle`); each is still its own ledger transaction.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from attribution import runtime
from attribution.models import Attribution, AttributionShare, ContributionValue, ModelIndex

logger = logging.getLogger(__name__)

SETTLEMENT_RULE = "settle-1"
INDEX_FOLDER = "attribution"


class AttributionRetry(Exception):
    """Computing the attribution failed; the task retries it (with backoff) before falling back."""


# --- Index (a post-training stage) ---------------------------------------------------------------------------------


def _job_rows(job) -> tuple[list[dict], dict]:
    """The job's rows (as training read them) and {record id: RowOwner(contributor, contribution)}."""
    from attribution.engine import RowOwner
    from datanets.selectors import version_records
    from modelfactory.selectors import finetune_rows

    versions = list(job.datanet_versions.order_by("pk"))
    rows, _ = finetune_rows(versions=versions)
    owners = {}
    for version in versions:
        for record in version_records(version_id=version.pk):
            owners[record.record_id] = RowOwner(record.contributor_id, record.contribution_id)
    return rows, owners


def _split_prompt(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt, answer) of a tokenised example: the answer runs from the first to the last trained token."""
    trained = [i for i, label in enumerate(labels) if label != -100]
    return input_ids[: trained[0]], input_ids[trained[0] : trained[-1] + 1]


def index_build(*, job, result, on_progress=None) -> ModelIndex:
    """Builds, saves and records the attribution index of a finished job, and the data valuation of its
    contributions on the held-out rows. Called inside the training job (the "indexing" stage)."""
    from attribution import engine
    from modelfactory.training.data import build_examples

    started = time.perf_counter()
    rows, owners = _job_rows(job)
    model, tokenizer = runtime.load_peft_model(base_dir=job.base_model.path, adapter_dir=result.adapter_dir)
    examples, _ = build_examples(tokenizer, rows, max_length=int(job.hyperparameters["max_length"]))
    train_ids, eval_ids = set(result.train_row_ids), set(result.eval_row_ids)
    train = [(e.row_id, e.input_ids, e.labels) for e in examples if e.row_id in train_ids]
    evals = [_split_prompt(e.input_ids, e.labels) for e in examples if e.row_id in eval_ids]
    total = len(train) + len(evals)

    def progress(done: int, _total: int) -> None:
        if on_progress is not None:
            on_progress(done, total)

    seed = int(job.hyperparameters.get("seed", 0))
    index = engine.build_index(
        model, train, k=settings.MF_ATTRIBUTION_K, seed=seed, pad_id=tokenizer.pad_token_id, on_progress=progress
    )
    spans = engine.SpanIndex.build(train)
    train_owners = {row_id: owners[row_id] for row_id, _, _ in train}
    report = engine.data_valuation(index, model, evals, train_owners, seed=seed) if evals else None
    progress(total, total)

    folder = Path(job.workdir) / INDEX_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    index.save(folder / runtime.INDEX_FILE)
    spans.save(folder / runtime.SPANS_FILE)
    runtime.write_owners(folder / runtime.OWNERS_FILE, train_owners)
    size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
    return _index_record(
        job=job,
        folder=folder,
        index=index,
        report=report,
        rows=len(train),
        size=size,
        seconds=time.perf_counter() - started,
        eval_rows=len(evals),
    )


def _index_record(*, job, folder: Path, index, report, rows: int, size: int, seconds: float, eval_rows: int):
    from attribution.engine import METHOD_VERSION
    from datanets.models import Contribution

    valuation = {}
    if report is not None:
        valuation = {
            "version": report.version,
            "method": report.method,
            "alpha": report.alpha,
            "draws": report.draws,
            "eval_rows": eval_rows,
        }
    with transaction.atomic():
        record, _ = ModelIndex.objects.update_or_create(
            job=job,
            defaults={
                "folder": str(folder),
                "index_path": str(folder / runtime.INDEX_FILE),
                "spans_path": str(folder / runtime.SPANS_FILE),
                "owners_path": str(folder / runtime.OWNERS_FILE),
                "method_version": METHOD_VERSION,
                "params": index.params(),
                "k": index.k,
                "seed": index.seed,
                "rows": rows,
                "bytes": size,
                "build_seconds": seconds,
                "valuation": valuation,
            },
        )
        record.values.all().delete()
        if report is not None:
            datanet_of = dict(
                Contribution.objects.filter(pk__in=[c.contribution_id for c in report.contributions]).values_list(
                    "pk", "datanet_id"
                )
            )
            ContributionValue.objects.bulk_create(
                ContributionValue(
                    index=record,
                    contribution_id=c.contribution_id,
                    contributor_id=c.contributor_id,
                    datanet_id=datanet_of[c.contribution_id],
                    value=c.value,
                    rows=c.rows,
                    z=c.z,
                    p=c.p,
                    harmful=c.harmful,
                )
                for c in report.contributions
            )
    return record


def index_stage_run(*, job, result, on_progress) -> None:
    """The post-training stage registered in AttributionConfig.ready()."""
    index_build(job=job, result=result, on_progress=on_progress)


# --- One attribution per answer ------------------------------------------------------------------------------------


def attribution_request(*, inference) -> Attribution:
    """Called inside the transaction that completes an inference: a pending row now, the task after commit."""
    attribution, _ = Attribution.objects.get_or_create(inference=inference)
    transaction.on_commit(lambda: _enqueue(inference.pk))
    return attribution


def _enqueue(inference_id: int) -> None:
    """A broker that is down loses nothing: the pending row stays and the sweep enqueues it later."""
    from attribution.tasks import inference_attribute_task

    try:
        inference_attribute_task.apply_async(args=[inference_id], retry=False)
    except Exception as exc:
        logger.warning("could not enqueue the attribution of inference %s: %s", inference_id, exc)


def _compute(inference) -> dict:
    """Runs the engine on one answer; returns the fields to store. Raises on any failure."""
    from attribution import engine

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
        "compute_ms": int((time.perf_counter() - started) * 1000),
    }


def training_row_shares(*, job) -> dict[int, float]:
    """{user id: share of the rows} over the job's datanet versions (the fallback basis)."""
    from datanets.selectors import version_contributor_row_counts

    counts: dict[int, int] = {}
    for version_id in job.datanet_versions.order_by("pk").values_list("pk", flat=True):
        for user_id, n in version_contributor_row_counts(version_id=version_id).items():
            counts[user_id] = counts.get(user_id, 0) + n
    total = sum(counts.values())
    return {user_id: n / total for user_id, n in sorted(counts.items())} if total else {}


def settlement_shares(*, contributor_shares: dict, unattributed: float, row_shares: dict[int, float]) -> dict:
    """Rule "settle-1" (module docstring): {str(user id): decimal string}, zero shares left out."""
    merged: dict[int, float] = {int(k): float(v) for k, v in contributor_shares.items()}
    for user_id, share in row_shares.items():
        merged[user_id] = merged.get(user_id, 0.0) + unattributed * share
    return {str(uid): f"{share:.12f}" for uid, share in sorted(merged.items()) if share > 5e-13}


def _store(*, attribution_id: int, fields: dict, status: str) -> Attribution:
    """Writes a finished attribution and its per-contributor rows, once (a finished one is never overwritten)."""
    with transaction.atomic():
        attribution = Attribution.objects.select_for_update().select_related("inference").get(pk=attribution_id)
        if attribution.is_finished:
            return attribution
        inference = attribution.inference
        job = inference.model_version.job
        row_shares = training_row_shares(job=job)
        shares = fields.get("contributor_shares", {})
        unattributed = fields.get("unattributed", 0.0) if status == Attribution.Status.DONE else 1.0
        settled = settlement_shares(
            contributor_shares=shares if status == Attribution.Status.DONE else {},
            unattributed=unattributed,
            row_shares=row_shares,
        )
        for name, value in fields.items():
            setattr(attribution, name, value)
        attribution.status = status
        attribution.settlement_rule = SETTLEMENT_RULE
        attribution.settlement_shares = settled
        attribution.finished_at = timezone.now()
        attribution.save()
        total = sum(float(v) for v in settled.values()) or 1.0
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
    return attribution


def attribution_run(*, inference_id: int, final_attempt: bool = False) -> Attribution | None:
    """Attributes one completed answer (once) and settles its fee (once). Raises AttributionRetry when the engine
    failed and attempts remain; on the final attempt the fee is settled by row share instead. Returns None for an
    inference that is not completed (nothing to attribute)."""
    from modelfactory.models import Inference

    inference = (
        Inference.objects.select_related("model", "model_version__job__base_model").filter(pk=inference_id).first()
    )
    if inference is None or inference.status != Inference.Status.COMPLETED:
        return None
    attribution, _ = Attribution.objects.get_or_create(inference=inference)
    if not attribution.is_finished:
        Attribution.objects.filter(pk=attribution.pk).update(attempts=F("attempts") + 1)
        try:
            fields = _compute(inference)
        except Exception as exc:
            logger.warning("attribution of inference %s failed: %s", inference_id, exc, exc_info=True)
            error = f"{exc.__class__.__name__}: {exc}"
            if not final_attempt:
                Attribution.objects.filter(
                    pk=attribution.pk, status__in=[Attribution.Status.PENDING, Attribution.Status.FAILED]
                ).update(status=Attribution.Status.FAILED, error=error)
                raise AttributionRetry(error) from exc
            attribution = _store(
                attribution_id=attribution.pk,
                fields={"error": error, "unattributed": 1.0},
                status=Attribution.Status.FALLBACK,
            )
        else:
            attribution = _store(
                attribution_id=attribution.pk, fields={**fields, "error": ""}, status=Attribution.Status.DONE
            )
    return attribution_settle(attribution_id=attribution.pk)


# --- Settlement ----------------------------------------------------------------------------------------------------


def _datanet_labels(*, job) -> dict[str, str]:
    """{str(user id): the names of the job's datanets the user has rows in} (labels for the wallet's charts)."""
    from datanets.selectors import version_contributor_row_counts

    labels: dict[str, list[str]] = {}
    for version in job.datanet_versions.select_related("datanet").order_by("pk"):
        for user_id in version_contributor_row_counts(version_id=version.pk):
            names = labels.setdefault(str(user_id), [])
            if version.datanet.name not in names:
                names.append(version.datanet.name)
    return {uid: ", ".join(names) for uid, names in sorted(labels.items())}


def _finish_settlement(attribution: Attribution, *, status: str, note: str, tx=None) -> Attribution:
    with transaction.atomic():
        fields = {"settlement_status": status, "settlement_note": note, "settlement_tx": tx}
        Attribution.objects.filter(pk=attribution.pk).update(**fields)
        if tx is not None:
            split = (tx.metadata.get("settlement") or {}).get("split", {}).get("contributors", {})
            for share in AttributionShare.objects.filter(attribution=attribution):
                share.amount_micro = int(split.get(str(share.contributor_id), 0))
                share.save(update_fields=["amount_micro"])
    attribution.refresh_from_db()
    return attribution


def attribution_settle(*, attribution_id: int) -> Attribution:
    """Hands a finished attribution's shares to the ledger, keyed by the inference (replaying settles once).

    On PostgreSQL the same ledger call also takes up to MF_ATTRIBUTION_SETTLE_BATCH - 1 other finished answers
    whose settlement is waiting (ledger.settlement_post_many: one round trip and one commit for all of them, each
    its own ledger transaction and answered on its own), so that when settlements queue up they go in batches,
    and when they do not a batch is this answer alone. The others are claimed with a session advisory lock, so
    two workers do not take the same ones; a dead worker's claims end with its connection, and anything left
    unsettled is found again by its own task or the sweep. This answer itself is always settled here, claimed or
    not (the ledger key makes a second settlement of it a replay)."""
    own = _settlement_candidate(attribution_id)
    if own is None:
        return Attribution.objects.get(pk=attribution_id)
    claimed = _claim_waiting(exclude=own.pk)
    try:
        batch = [own]
        for other_id in claimed:
            try:
                other = _settlement_candidate(other_id)
            except Exception:  # one answer's bad data must not stop this one; its own task reports it
                logger.exception("attribution %s: could not prepare its settlement in a batch", other_id)
                continue
            if other is not None:
                batch.append(other)
        _settle_batch(batch)
    finally:
        _release_claims(claimed)
    return Attribution.objects.get(pk=attribution_id)


def _settlement_candidate(attribution_id: int) -> Attribution | None:
    """The attribution, if its fee is still to be settled; answers with nothing to settle (no hold, a zero fee)
    are finished here as "skipped"."""
    from ledger import services as ledger

    attribution = Attribution.objects.select_related("inference__model", "inference__model_version__job").get(
        pk=attribution_id
    )
    if not attribution.is_finished or attribution.settlement_status in (
        Attribution.Settlement.SETTLED,
        Attribution.Settlement.SKIPPED,
    ):
        return None
    inference = attribution.inference
    if not inference.hold_key:
        _finish_settlement(
            attribution,
            status=Attribution.Settlement.SKIPPED,
            note="No fee was reserved for this answer, so there is nothing to settle.",
        )
        return None
    if inference.fee_micro == 0:
        with contextlib.suppress(ledger.HoldNotOpen):  # already released by the serving side
            ledger.hold_release(hold_key=inference.hold_key, memo="Nothing owed for this answer")
        _finish_settlement(
            attribution,
            status=Attribution.Settlement.SKIPPED,
            note="The fee was zero; the reserved credit went back to the caller.",
        )
        return None
    return attribution


def _settlement_request(attribution: Attribution):
    from ledger import services as ledger

    inference = attribution.inference
    fallback = None
    if attribution.status == Attribution.Status.FALLBACK:
        fallback = (
            f"Attribution failed after {attribution.attempts} attempts ({attribution.error[:300]}); the "
            "contributors' part is split by row share of the training data."
        )
    job = inference.model_version.job
    metadata = {
        "model": inference.model.slug,
        "datanets": _datanet_labels(job=job),
        "inference_id": inference.pk,
        "attribution": {
            "id": attribution.pk,
            "status": attribution.status,
            "method_version": attribution.method_version,
            "settlement_rule": attribution.settlement_rule,
            "unattributed": attribution.unattributed,
        },
    }
    return ledger.SettlementRequest(
        key=f"settle:inference:{inference.pk}",
        hold_key=inference.hold_key,
        fee_micro=inference.fee_micro,
        owner_user_id=inference.model.owner_id,
        contributor_shares={int(uid): share for uid, share in attribution.settlement_shares.items()},
        fallback_reason=fallback,
        metadata=metadata,
        memo=f"Answer {inference.pk} of {inference.model.slug}",
    )


def _settle_batch(attributions: list[Attribution]) -> None:
    """One ledger call for the batch, then each attribution marked settled or refused on its own."""
    from ledger import services as ledger
    from ledger.calc.money import format_credits

    outcomes = ledger.settlement_post_many(requests=[_settlement_request(a) for a in attributions])
    for attribution, outcome in zip(attributions, outcomes, strict=True):
        if isinstance(outcome, ledger.LedgerError):
            logger.error("settlement of inference %s refused: %s", attribution.inference_id, outcome)
            _finish_settlement(
                attribution,
                status=Attribution.Settlement.FAILED,
                note=f"The ledger refused the settlement: {outcome}",
            )
        else:
            note = f"{format_credits(attribution.inference.fee_micro)} credits settled."
            _finish_settlement(attribution, status=Attribution.Settlement.SETTLED, note=note, tx=outcome)


# Session advisory locks on (this number, attribution id) claim answers taken along in another answer's batch.
_CLAIM_LOCK_SPACE = 0x5E771E


def _claim_waiting(*, exclude: int) -> list[int]:
    """Up to MF_ATTRIBUTION_SETTLE_BATCH - 1 finished answers waiting for settlement, oldest first, that no other
    worker has claimed, now claimed by this connection (PostgreSQL; elsewhere none). The own answer is claimed too,
    so that other workers leave it to us."""
    limit = settings.MF_ATTRIBUTION_SETTLE_BATCH - 1
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_CLAIM_LOCK_SPACE, exclude])
        if not cursor.fetchone()[0]:
            return []  # another worker's batch has this answer: we settle it anyway (a replay), and take no others
        if limit <= 0:
            return [exclude]
        pending = Q(status__in=Attribution.FINISHED, settlement_status=Attribution.Settlement.PENDING)
        waiting = list(
            Attribution.objects.filter(pending).exclude(pk=exclude).order_by("pk").values_list("pk", flat=True)[:limit]
        )
        claimed = []
        if waiting:
            cursor.execute(
                "SELECT id FROM unnest(%s::integer[]) AS id WHERE pg_try_advisory_lock(%s, id) ORDER BY id",
                [waiting, _CLAIM_LOCK_SPACE],
            )
            claimed = [row[0] for row in cursor.fetchall()]
    return [exclude, *claimed]


def _release_claims(claimed: list[int]) -> None:
    if not claimed:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_unlock(%s, id) FROM unnest(%s::integer[]) AS id", [_CLAIM_LOCK_SPACE, claimed]
        )


# --- Never lost ----------------------------------------------------------------------------------------------------


def attribution_sweep_pending(*, older_than_minutes: int | None = None, limit: int = 500) -> list[int]:
    """Re-enqueues completed inferences older than N minutes whose attribution is missing, unfinished or not yet
    settled (a lost message, a dead worker). Returns the inference ids enqueued."""
    from modelfactory.models import Inference

    minutes = settings.MF_ATTRIBUTION_SWEEP_MINUTES if older_than_minutes is None else older_than_minutes
    cutoff = timezone.now() - timedelta(minutes=minutes)
    unfinished = (
        Q(attribution__isnull=True)
        | ~Q(attribution__status__in=Attribution.FINISHED)
        | Q(attribution__settlement_status=Attribution.Settlement.PENDING)
    )
    ids = list(
        Inference.objects.filter(status=Inference.Status.COMPLETED, completed_at__lt=cutoff)
        .filter(unfinished)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    for inference_id in ids:
        Attribution.objects.get_or_create(inference_id=inference_id)
        transaction.on_commit(lambda inference_id=inference_id: _enqueue(inference_id))
    return ids


def inference_completed(*, inference) -> None:
    """The modelfactory.hooks inference-completed handler (inside the completing transaction)."""
    attribution_request(inference=inference)
