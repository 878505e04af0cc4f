"""The "indexing" post-training stage on a real tiny job."""

from pathlib import Path

import pytest

from attribution import runtime
from attribution.engine import METHOD_VERSION, AttributionIndex, SpanIndex
from attribution.models import ContributionValue, ModelIndex
from attribution.services import index_files_digest
from datanets.models import Contribution

pytestmark = pytest.mark.django_db


def test_the_training_job_builds_and_records_the_index(planted):
    job = planted.job
    phases = [e.data["phase"] for e in job.events.filter(kind="phase")]
    assert phases == ["queued", "loading", "training", "evaluating", "saving", "indexing"]
    assert "stage_errors" not in job.report

    record = ModelIndex.objects.get(job=job)
    index = AttributionIndex.load(record.index_path)
    owners = runtime.read_owners(record.owners_path)
    rows_total = sum(len(part) for part in planted.rows.values())
    held_out = round(rows_total * 0.1)
    assert record.rows == index.size == len(owners) == rows_total - held_out
    assert set(index.row_ids.tolist()) == set(owners)
    assert (record.k, record.seed, record.method_version) == (
        index.k,
        planted.job.hyperparameters["seed"],
        METHOD_VERSION,
    )
    # the index's parameters, and the digest of each file as built (attribution_verify checks the files against it)
    assert record.params == {**index.params(), "files_sha256": index_files_digest(record.folder)}
    assert sorted(record.params["files_sha256"]) == ["attribution.safetensors", "owners.json", "spans.npz"]
    assert Path(record.folder) == job.workdir / "attribution"
    assert record.bytes == sum(p.stat().st_size for p in Path(record.folder).iterdir())
    assert record.build_seconds > 0
    assert SpanIndex.load(record.spans_path) is not None
    users = {u.pk for u in planted.people.values()}
    assert {owner.contributor_id for owner in owners.values()} == users
    contributions = dict(Contribution.objects.values_list("pk", "contributor_id"))
    assert all(contributions[o.contribution_id] == o.contributor_id for o in owners.values())
    assert job.message.startswith("Training finished.")


def test_data_valuation_is_stored_per_contribution(planted):
    record = ModelIndex.objects.get(job=planted.job)
    values = list(ContributionValue.objects.filter(index=record))
    assert {v.contributor_id for v in values} == {u.pk for u in planted.people.values()}
    assert all(v.datanet_id == planted.datanet.pk for v in values)
    assert sum(v.rows for v in values) == record.rows
    assert record.valuation["version"] == "poa-val-2"
    assert (record.valuation["alpha"], record.valuation["draws"]) == (0.05, 2000)
    assert record.valuation["eval_rows"] == sum(len(p) for p in planted.rows.values()) - record.rows
    assert [v.z for v in values] == sorted(v.z for v in values)
    for v in values:
        assert 0 < v.p <= 1
        assert v.harmful == (v.value < 0 and v.p <= record.valuation["alpha"])


def test_a_failing_index_stage_keeps_the_model_and_says_why(cast, pretrained_dir, monkeypatch, planted_factory):
    from attribution import engine

    def boom(*args, **kwargs):
        raise engine.EngineError("No training rows to index.")

    monkeypatch.setattr(engine, "build_index", boom)
    planted = planted_factory()
    assert planted.job.status == "succeeded"
    assert not ModelIndex.objects.exists()
    assert planted.job.report["stage_errors"] == {
        "indexing": "Building the attribution index over the training rows did not finish "
        "(EngineError: No training rows to index.)."
    }


def test_an_index_stage_failing_after_the_passes_leaves_no_features_file(monkeypatch, planted_factory):
    """The build writes the features to a file in the index folder (not to memory); a failure after the passes
    (here data valuation) removes it with the stage, as a saved index does."""
    from attribution import engine

    built = []
    real_build = engine.build_index

    def build(*args, **kwargs):
        built.append(Path(kwargs["features_file"]))
        index = real_build(*args, **kwargs)
        assert built[0].stat().st_size == index.size * index.k  # the features are in the file
        return index

    def boom(*args, **kwargs):
        raise engine.EngineError("Data valuation needs at least one held-out eval example.")

    monkeypatch.setattr(engine, "build_index", build)
    monkeypatch.setattr(engine, "data_valuation", boom)
    planted = planted_factory()
    assert planted.job.status == "succeeded" and not ModelIndex.objects.exists()
    assert "indexing" in planted.job.report["stage_errors"]
    assert built == [planted.job.workdir / "attribution" / "features.building"]
    assert not built[0].exists()
