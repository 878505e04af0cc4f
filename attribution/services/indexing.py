"""The "indexing" stage of a fine-tune: the attribution index of the finished job and the data valuation of its
contributions, built inside the training job after training succeeded.

Which rows are indexed: the job's training rows only (result.train_row_ids) and, for a model trained again from an
earlier version, the training rows of every job in its lineage; tokenised exactly as training did
(modelfactory.training.data.build_examples with the job's max_length). The held-out eval rows did not shape the
weights, so they earn no attribution; they are the queries of the curators' data valuation instead. The span index
covers the same training rows.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from attribution import runtime
from attribution.models import ContributionValue, ModelIndex
from attribution.services.verify import DIGEST_KEY, index_files_digest
from datanets.models import Contribution
from datanets.selectors import version_copy_credit, version_records
from modelfactory.selectors import finetune_rows
from modelfactory.services import lineage_jobs
from modelfactory.training.data import build_examples
from modelfactory.training.finetune import split_rows
from modelfactory.training.memory import budget_bytes

INDEX_FOLDER = "attribution"
FEATURES_BUILDING = "features.building"  # the index's features as the build writes them, until the index is saved


def _lineage_versions(job) -> list:
    """The datanet versions of the job and of every job its adapter continued from (each once)."""
    versions = {}
    for ancestor in lineage_jobs(job=job):
        versions.update({v.pk: v for v in ancestor.datanet_versions.all()})
    return [versions[pk] for pk in sorted(versions)]


def _ancestors_train_ids(job, examples) -> set[int]:
    """The rows the jobs before this one in its lineage trained on: each one's split of its own rows (split_rows
    with its own settings, as its training did)."""
    built = {e.row_id for e in examples}
    ids: set[int] = set()
    for ancestor in lineage_jobs(job=job)[:-1]:
        rows, _ = finetune_rows(versions=list(ancestor.datanet_versions.order_by("pk")))
        hp = ancestor.hyperparameters
        usable = [int(r["id"]) for r in rows if int(r["id"]) in built]
        train, _ = split_rows(usable, eval_split=float(hp["eval_split"]), seed=int(hp["seed"]))
        ids |= train
    return ids


def _job_rows(job) -> tuple[list[dict], dict]:
    """The rows of the job's lineage (as training read them) and {record id: RowOwner(contributor, contribution)}. A
    row that copies another contributor's earlier row (Record.copy_of) is owned by the original's contributor and
    contribution: its credit goes to them, never to the copier."""
    from attribution.engine import RowOwner  # the engine loads torch: only the training process needs it

    versions = _lineage_versions(job)
    rows, _ = finetune_rows(versions=versions)
    owners = {}
    for version in versions:
        credit = version_copy_credit(version_id=version.pk)
        for record in version_records(version_id=version.pk):
            owner = credit.get(record.record_id, (record.contributor_id, record.contribution_id))
            owners[record.record_id] = RowOwner(*owner)
    return rows, owners


def _split_prompt(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt, answer) of a tokenised example: the answer runs from the first to the last trained token."""
    trained = [i for i, label in enumerate(labels) if label != -100]
    return input_ids[: trained[0]], input_ids[trained[0] : trained[-1] + 1]


def _stage_memory_budget() -> int:
    """Bytes one pass of this stage may add (settings.MF_MEMORY_BUDGET_FRACTION of what is free now)."""
    return budget_bytes(fraction=settings.MF_MEMORY_BUDGET_FRACTION, simulated=settings.MF_MEMORY_LIMIT_MB * 2**20)


def index_build(*, job, result, on_progress=None) -> ModelIndex:
    """Builds, saves and records the attribution index of a finished job, and the data valuation of its
    contributions on the held-out rows. Called inside the training job (the "indexing" stage)."""
    from attribution import engine  # loads torch: only the training process needs it

    started = time.perf_counter()
    rows, owners = _job_rows(job)
    model, tokenizer = runtime.load_peft_model(base_dir=job.base_model.path, adapter_dir=result.adapter_dir)
    examples, _ = build_examples(tokenizer, rows, max_length=int(job.hyperparameters["max_length"]))
    # a continued model also carries what its earlier versions learned: their training rows stay credited
    train_ids = set(result.train_row_ids) | _ancestors_train_ids(job, examples)
    eval_ids = set(result.eval_row_ids) - train_ids
    train = [(e.row_id, e.input_ids, e.labels) for e in examples if e.row_id in train_ids]
    evals = [_split_prompt(e.input_ids, e.labels) for e in examples if e.row_id in eval_ids]
    total = len(train) + len(evals)

    def progress(done: int, _total: int) -> None:
        if on_progress is not None:
            on_progress(done, total)

    hp = job.hyperparameters
    seed = int(hp.get("seed", 0))
    batch_size = int(hp.get("batch_size", 16))
    longest = max(len(ids) for _, ids, _ in train)
    folder = Path(job.workdir) / INDEX_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    building = folder / FEATURES_BUILDING  # the features go to this file as they are built, not to memory
    try:
        index = engine.build_index(
            model,
            train,
            k=settings.MF_ATTRIBUTION_K,
            seed=seed,
            batch_size=batch_size,
            # at most what the largest training micro-batch held (batch size x the longest row, not x max length:
            # with short rows that would be hundreds of rows in one pass), and within this stage's memory budget
            max_tokens=batch_size * longest,
            memory_budget=_stage_memory_budget(),
            pad_id=tokenizer.pad_token_id,
            on_progress=progress,
            # the noise floor is also measured on the model's own answers to everyday questions (rule poa-3)
            **engine.calibration_inputs(model, tokenizer),
            features_file=building,
        )
        spans = engine.SpanIndex.build(train)
        train_owners = {row_id: owners[row_id] for row_id, _, _ in train}
        report = engine.data_valuation(index, model, evals, train_owners, seed=seed) if evals else None
        progress(total, total)
        index.save(folder / runtime.INDEX_FILE)  # copies the features from `building` into the index file
        spans.save(folder / runtime.SPANS_FILE)
        runtime.write_owners(folder / runtime.OWNERS_FILE, train_owners)
    finally:
        building.unlink(missing_ok=True)
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
    from attribution.engine import METHOD_VERSION  # the engine loads torch: only the training process needs it

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
                # the digest of the files as built: attribution_verify tells a changed index from a recomputation
                "params": {**index.params(), DIGEST_KEY: index_files_digest(folder)},
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


def index_stage_discard(*, job) -> None:
    """The job was cancelled: its index record goes (its files go with the job's workdir)."""
    ModelIndex.objects.filter(job=job).delete()
