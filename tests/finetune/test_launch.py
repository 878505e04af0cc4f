import pytest

from datanets.models import Datanet, DatanetVersion
from modelfactory import services
from modelfactory.models import FineTuneEvent, FineTuneJob
from tests.finetune.conftest import FAST, launch_job, publish_version

pytestmark = pytest.mark.django_db


def launch(user, version, **kwargs):
    args = {"base_model_slug": "tiny-base", "version_ids": [version.pk], "preset": "quick",
            "hyperparameters": FAST, "idempotency_key": "k1"}  # fmt: skip
    args.update(kwargs)
    return launch_job(user, **args)


def test_launch_creates_a_queued_job_and_enqueues_it_after_commit(cast, tiny_base, version, enqueued):
    job, created = launch(cast.owner, version)
    assert created
    assert job.status == FineTuneJob.Status.QUEUED
    assert job.message == "Waiting for a free training worker."
    assert list(job.datanet_versions.all()) == [version]
    assert job.hyperparameters["learning_rate"] == 0.01
    assert job.hyperparameters["rank"] == 4
    assert job.name == "Tiny base on Zorb facts v1"
    assert enqueued == [(job.pk, False)]
    assert list(job.events.values_list("kind", flat=True)) == ["phase"]


def test_same_key_launches_one_job(cast, tiny_base, version, enqueued):
    first, created = launch(cast.owner, version)
    again, created_again = launch(cast.owner, version)
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    assert FineTuneJob.objects.count() == 1
    assert enqueued == [(first.pk, False)]


def _refused(user, version, expected: dict, **kwargs):
    with pytest.raises(services.LaunchError) as err:
        launch(user, version, **kwargs)
    assert err.value.errors == expected
    assert FineTuneJob.objects.count() == 0
    assert FineTuneEvent.objects.count() == 0


def test_hyperparameters_out_of_range_name_each_field(cast, tiny_base, version):
    _refused(
        cast.owner,
        version,
        {
            "hyperparameters.rank": "must be between 1 and 256",
            "hyperparameters.learning_rate": "must be between 1e-06 and 0.01",
            "hyperparameters.colour": "is not a setting we know",
        },
        hyperparameters={"rank": 0, "learning_rate": 5, "colour": "blue"},
    )


def test_unknown_preset_and_base_model(cast, tiny_base, version):
    _refused(
        cast.owner,
        version,
        {"base_model": "There is no base model called “nope”.", "preset": "Choose one of: quick, balanced, thorough."},
        base_model_slug="nope",
        preset="extreme",
    )


def test_base_model_with_missing_files(cast, tiny_base, version):
    from pathlib import Path

    (Path(tiny_base.path) / "model.safetensors").unlink()
    with pytest.raises(services.LaunchError) as err:
        launch(cast.owner, version)
    assert err.value.errors["base_model"].startswith("The files of Tiny base are missing or broken:")
    assert "has no weights" in err.value.errors["base_model"]
    assert FineTuneJob.objects.count() == 0


def test_someone_elses_private_datanet_is_refused_as_if_it_did_not_exist(cast, tiny_base):
    private = publish_version(
        owner=cast.teammate, contributors=[cast.teammate], name="Secret", visibility=Datanet.Visibility.PRIVATE
    )
    missing = private.pk + 1000
    assert not DatanetVersion.objects.filter(pk=missing).exists()
    with pytest.raises(services.LaunchError) as hidden:
        launch(cast.outsider, private)
    with pytest.raises(services.LaunchError) as absent:
        launch(cast.outsider, private, version_ids=[missing])
    # Same words as for an id that does not exist, the id aside: nothing tells the datanet exists or names it.
    assert hidden.value.errors == {"datanet_versions": f"There is no datanet version {private.pk}."}
    assert absent.value.errors == {"datanet_versions": f"There is no datanet version {missing}."}
    assert "Secret" not in str(hidden.value.errors) and "private" not in str(hidden.value.errors)
    assert FineTuneJob.objects.count() == 0
    # Its owner trains on it.
    job, created = launch(cast.teammate, private)
    assert created and list(job.datanet_versions.all()) == [private]


def test_no_versions_and_unknown_version(cast, tiny_base, version):
    _refused(cast.owner, version, {"datanet_versions": "Choose at least one datanet version."}, version_ids=[])
    _refused(cast.owner, version, {"datanet_versions": "There is no datanet version 999999."}, version_ids=[999999])


def test_version_with_no_rows(cast, tiny_base, version):
    DatanetVersion.objects.filter(pk=version.pk).update(row_count=0)
    _refused(
        cast.owner,
        version,
        {"datanet_versions": "The chosen datanet versions have no rows. Publish a version with rows first."},
    )


def test_broker_down_fails_the_job_with_a_clear_message(cast, tiny_base, version, monkeypatch):
    from modelfactory import tasks

    monkeypatch.undo()  # the real _enqueue, with a broker that refuses

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("Connection refused")

    monkeypatch.setattr(tasks.finetune_run_task, "apply_async", refuse)
    job, created = launch(cast.owner, version)
    assert created
    job.refresh_from_db()
    assert job.status == FineTuneJob.Status.FAILED
    assert job.message.startswith("The job queue could not be reached, so training did not start. Nothing was lost")


def test_same_key_with_a_different_request_is_refused_and_creates_nothing(cast, tiny_base, version, enqueued):
    job, created = launch(cast.owner, version)
    with pytest.raises(services.IdempotencyConflict) as refused:
        launch(cast.owner, version, preset="balanced")
    assert refused.value.job == job
    assert list(refused.value.errors) == ["idempotency_key"]
    assert FineTuneJob.objects.count() == 1 and enqueued == [(job.pk, False)]
    assert launch(cast.owner, version) == (job, False)


def test_a_job_launched_before_fingerprints_were_kept_is_returned_for_its_key(cast, tiny_base, version):
    job, _ = launch(cast.owner, version)
    FineTuneJob.objects.filter(pk=job.pk).update(request_fingerprint="")
    assert launch(cast.owner, version, preset="balanced") == (job, False)
