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
from dataclasses import dataclass
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

    hp = job.hyperparameters
    seed = int(hp.get("seed", 0))
    batch_size = int(hp.get("batch_size", 16))
    index = engine.build_index(
        model,
        train,
        k=settings.MF_ATTRIBUTION_K,
        seed=seed,
        batch_size=batch_size,
        # at most what one training micro-batch may hold: the job's hardware held that much already
        max_tokens=batch_size * int(hp["max_length"]),
        pad_id=tokenizer.pad_token_id,
        on_progress=progress,
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


@dataclass(frozen=True)
class _ToSettle:
    """What settling one finished attribution needs (read in one query per batch, no model instances)."""

    pk: int
    inference_id: int
    status: str
    attempts: int
    error: str
    method_version: str
    settlement_rule: str
    settlement_shares: dict
    unattributed: float
    hold_key: str
    fee_micro: int
    model_slug: str
    owner_id: int
    job_id: int


def _finish_settlements(finished: list[tuple[int, str, str, object]]) -> None:
    """Marks each (attribution id, settlement status, note, ledger transaction or None) in one database
    transaction, and writes the amount paid to each contributor of those settled (from the transaction's split)."""
    if not finished:
        return
    paid = {
        pk: (tx.metadata.get("settlement") or {}).get("split", {}).get("contributors", {})
        for pk, _, _, tx in finished
        if tx is not None
    }
    with transaction.atomic():
        shares = list(
            AttributionShare.objects.filter(attribution_id__in=paid).values_list(
                "pk", "attribution_id", "contributor_id"
            )
        )
        amounts = [(pk, int(paid[attribution_id].get(str(user_id), 0))) for pk, attribution_id, user_id in shares]
        if connection.vendor == "postgresql":  # one statement each (bulk_update's CASE is slow to build)
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE attribution_attribution a SET settlement_status = v.status, "
                    "settlement_note = v.note, settlement_tx_id = v.tx "
                    "FROM unnest(%s::integer[], %s::text[], %s::text[], %s::bigint[]) AS v(id, status, note, tx) "
                    "WHERE a.id = v.id",
                    [[f[0] for f in finished], [f[1] for f in finished], [f[2] for f in finished],
                     [f[3].pk if f[3] is not None else None for f in finished]],
                )  # fmt: skip
                if amounts:
                    cursor.execute(
                        "UPDATE attribution_attributionshare s SET amount_micro = v.amount "
                        "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, amount) WHERE s.id = v.id",
                        [[pk for pk, _ in amounts], [amount for _, amount in amounts]],
                    )
        else:
            for pk, status, note, tx in finished:
                Attribution.objects.filter(pk=pk).update(
                    settlement_status=status, settlement_note=note, settlement_tx=tx
                )
            for pk, amount in amounts:
                AttributionShare.objects.filter(pk=pk).update(amount_micro=amount)


def attribution_settle(*, attribution_id: int) -> Attribution:
    """Hands a finished attribution's shares to the ledger, keyed by the inference (replaying settles once).

    On PostgreSQL the same ledger call also takes up to MF_ATTRIBUTION_SETTLE_BATCH - 1 other finished answers
    whose settlement is waiting (ledger.settlement_post_many: one round trip and one commit for all of them, each
    its own ledger transaction and answered on its own), so that when settlements queue up they go in batches,
    and when they do not a batch is this answer alone. The others are claimed with a session advisory lock, so
    two workers do not take the same ones; a dead worker's claims end with its connection, and anything left
    unsettled is found again by its own task or the sweep. This answer itself is always settled here, claimed or
    not (the ledger key makes a second settlement of it a replay)."""
    attribution = Attribution.objects.get(pk=attribution_id)
    if not attribution.is_finished or attribution.settlement_status in (
        Attribution.Settlement.SETTLED,
        Attribution.Settlement.SKIPPED,
    ):
        return attribution  # not ready, or done already (often by another answer's batch): one query
    batch = _settlement_candidates([attribution_id])
    if batch:
        claimed = _claim_waiting(exclude=attribution_id)
        try:
            others = [pk for pk in claimed if pk != attribution_id]
            if others:
                try:
                    batch += _settlement_candidates(others)
                except Exception:  # the others' data must not stop this answer; their own tasks report it
                    logger.exception("attributions %s: could not prepare their settlements in a batch", others)
            _settle_batch(batch)
        finally:
            _release_claims(claimed)
    return Attribution.objects.get(pk=attribution_id)


def _settlement_candidates(ids: list[int]) -> list[_ToSettle]:
    """The attributions among `ids` (in id order) whose fee is still to be settled; answers with nothing to settle
    (no hold, a zero fee) are finished here as "skipped"."""
    from ledger import services as ledger

    rows = (
        Attribution.objects.filter(pk__in=ids, status__in=Attribution.FINISHED)
        .exclude(settlement_status__in=[Attribution.Settlement.SETTLED, Attribution.Settlement.SKIPPED])
        .order_by("pk")
        .values_list(
            "pk",
            "inference_id",
            "status",
            "attempts",
            "error",
            "method_version",
            "settlement_rule",
            "settlement_shares",
            "unattributed",
            "inference__hold_key",
            "inference__fee_micro",
            "inference__model__slug",
            "inference__model__owner_id",
            "inference__model_version__job_id",
        )  # fmt: skip
    )
    result, skipped = [], []
    for row in rows:
        candidate = _ToSettle(*row)
        if not candidate.hold_key:
            skipped.append((candidate.pk, "No fee was reserved for this answer, so there is nothing to settle."))
        elif candidate.fee_micro == 0:
            with contextlib.suppress(ledger.HoldNotOpen):  # already released by the serving side
                ledger.hold_release(hold_key=candidate.hold_key, memo="Nothing owed for this answer")
            skipped.append((candidate.pk, "The fee was zero; the reserved credit went back to the caller."))
        else:
            result.append(candidate)
    _finish_settlements([(pk, Attribution.Settlement.SKIPPED, note, None) for pk, note in skipped])
    return result


def _settlement_request(candidate: _ToSettle, labels: dict[str, str]):
    from ledger import services as ledger

    fallback = None
    if candidate.status == Attribution.Status.FALLBACK:
        fallback = (
            f"Attribution failed after {candidate.attempts} attempts ({candidate.error[:300]}); the "
            "contributors' part is split by row share of the training data."
        )
    metadata = {
        "model": candidate.model_slug,
        "datanets": labels,
        "inference_id": candidate.inference_id,
        "attribution": {
            "id": candidate.pk,
            "status": candidate.status,
            "method_version": candidate.method_version,
            "settlement_rule": candidate.settlement_rule,
            "unattributed": candidate.unattributed,
        },
    }
    return ledger.SettlementRequest(
        key=f"settle:inference:{candidate.inference_id}",
        hold_key=candidate.hold_key,
        fee_micro=candidate.fee_micro,
        owner_user_id=candidate.owner_id,
        contributor_shares={int(uid): share for uid, share in candidate.settlement_shares.items()},
        fallback_reason=fallback,
        metadata=metadata,
        memo=f"Answer {candidate.inference_id} of {candidate.model_slug}",
    )


def _settle_batch(candidates: list[_ToSettle]) -> None:
    """One ledger call for the batch, then every attribution marked settled or refused (one database
    transaction)."""
    from ledger import services as ledger
    from ledger.calc.money import format_credits
    from modelfactory.models import FineTuneJob

    labels: dict[int, dict[str, str]] = {}
    for candidate in candidates:
        if candidate.job_id not in labels:
            labels[candidate.job_id] = _datanet_labels(job=FineTuneJob(pk=candidate.job_id))
    outcomes = ledger.settlement_post_many(requests=[_settlement_request(c, labels[c.job_id]) for c in candidates])
    finished = []
    for candidate, outcome in zip(candidates, outcomes, strict=True):
        if isinstance(outcome, ledger.LedgerError):
            logger.error("settlement of inference %s refused: %s", candidate.inference_id, outcome)
            finished.append(
                (candidate.pk, Attribution.Settlement.FAILED, f"The ledger refused the settlement: {outcome}", None)
            )
        else:
            note = f"{format_credits(candidate.fee_micro)} credits settled."
            finished.append((candidate.pk, Attribution.Settlement.SETTLED, note, outcome))
    _finish_settlements(finished)


# Session advisory locks on (this number, attribution id) claim answers taken along in another answer's batch.
_CLAIM_LOCK_SPACE = 0x5E771E
CLAIM_CANDIDATES = 4


def _claim_waiting(*, exclude: int) -> list[int]:
    """This answer and up to MF_ATTRIBUTION_SETTLE_BATCH - 1 finished answers waiting for settlement, oldest first,
    that no other worker has claimed, now claimed by this connection (PostgreSQL; elsewhere none). The own answer is
    claimed too, so that other workers leave it to us; if another worker has it, we claim nothing."""
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
        # More candidates than places: concurrent workers look at the same oldest answers and skip each other's.
        waiting = list(
            Attribution.objects.filter(pending)
            .exclude(pk=exclude)
            .order_by("pk")
            .values_list("pk", flat=True)[: limit * CLAIM_CANDIDATES]
        )
        claimed: list[int] = []
        if waiting:
            cursor.execute(
                "SELECT id FROM unnest(%s::integer[]) AS id WHERE pg_try_advisory_lock(%s, id)",
                [waiting, _CLAIM_LOCK_SPACE],
            )
            claimed = sorted(row[0] for row in cursor.fetchall())
            _release_claims(claimed[limit:])
    return [exclude, *claimed[:limit]]


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
