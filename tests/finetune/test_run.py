"""The worker side on a tiny model: claim, train, evaluate, store; stop/cancel; dead workers."""

import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from modelfactory import services
from modelfactory.models import FineTuneJob, ModelVersion, TrainedModel
from tests.finetune.conftest import FAST, launch_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(cast, tiny_base, version):
    job, _ = launch_job(
        cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
        hyperparameters=FAST, name="Zorb expert", idempotency_key="run",
    )  # fmt: skip
    return job


def test_a_job_runs_to_a_published_adapter(job):
    done = services.finetune_run(job_id=job.pk, hostname="test-worker")
    assert done.status == FineTuneJob.Status.SUCCEEDED, done.message
    assert done.progress == 1.0
    assert done.attempts == 1
    assert done.worker == "test-worker"
    metrics = done.metrics
    assert metrics["eval_loss"] < metrics["base_eval_loss"]
    verdict = metrics["verdict"]
    assert done.message == "Training finished. " + verdict["headline"] + "".join(f" {a}" for a in verdict["advice"])
    # a 4% lower loss and babbled answers from a tiny model: honestly "barely changed", never "better"
    assert verdict["level"] == "barely" and "better" not in done.message
    assert f"its held-out loss went from {metrics['base_eval_loss']:.3f} to {metrics['eval_loss']:.3f}" in done.message
    assert len(done.samples) == metrics["answers_scored"] == 2  # 20% of 10 rows held out, every one answered
    assert {"prompt", "base", "tuned", "reference", "base_f1", "tuned_f1", "base_exact", "tuned_exact"} <= set(
        done.samples[0]
    )

    kinds = list(done.events.values_list("kind", flat=True))
    assert kinds.count("train") == done.total_steps == metrics["steps"]
    assert "eval" in kinds
    phases = [e.data["phase"] for e in done.events.filter(kind="phase")]
    assert phases == ["queued", "loading", "training", "evaluating", "saving", "indexing"]  # indexing: attribution

    model = TrainedModel.objects.get()
    version = ModelVersion.objects.get()
    assert (model.slug, model.owner, model.status, model.visibility) == ("zorb-expert", job.owner, "draft", "private")
    assert (version.number, version.job_id) == (1, job.pk)
    assert "Zorb facts" in version.model_card and version.artifact_hash in version.model_card
    with zipfile.ZipFile(version.zip_path) as archive:
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(archive.namelist())


def test_a_job_is_claimed_once(job):
    services.finetune_run(job_id=job.pk, hostname="first")
    assert services.finetune_run(job_id=job.pk, hostname="second") is None
    assert FineTuneJob.objects.get().worker == "first"


def test_stop_keeps_the_adapter(job):
    FineTuneJob.objects.filter(pk=job.pk).update(control="stop")
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == FineTuneJob.Status.SUCCEEDED
    assert done.message.startswith("Stopped early as you asked; the adapter trained so far was kept.")
    assert done.metrics["steps"] < done.metrics["total_steps"]
    assert TrainedModel.objects.count() == 1


def test_cancel_discards_everything(job):
    FineTuneJob.objects.filter(pk=job.pk).update(control="cancel")
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == FineTuneJob.Status.CANCELLED
    assert done.message == "Cancelled: nothing was kept."
    assert not done.workdir.exists()
    assert TrainedModel.objects.count() == 0


def test_control_of_a_queued_job_ends_it_at_once(cast, job):
    cancelled = services.finetune_control(user=cast.owner, job_id=job.pk, mode="cancel")
    assert cancelled.status == FineTuneJob.Status.CANCELLED
    assert services.finetune_run(job_id=job.pk, hostname="w") is None  # the queued task finds nothing to do
    with pytest.raises(services.JobStateError, match="This job has already ended"):
        services.finetune_control(user=cast.owner, job_id=job.pk, mode="stop")


def test_only_the_owner_controls_a_job(cast, job):
    with pytest.raises(FineTuneJob.DoesNotExist):
        services.finetune_control(user=cast.outsider, job_id=job.pk, mode="cancel")
    assert FineTuneJob.objects.get().status == FineTuneJob.Status.QUEUED


def test_training_error_is_shown_in_plain_words(job, monkeypatch):
    from modelfactory.training import finetune

    def boom(*args, **kwargs):
        raise finetune.TrainingError("Out of memory: lower the batch size.")

    monkeypatch.setattr(finetune, "run_finetune", boom)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert (done.status, done.message) == ("failed", "Out of memory: lower the batch size.")
    assert done.finished_at is not None


def test_unexpected_error_fails_the_job_and_is_logged(job, monkeypatch, caplog):
    from modelfactory.training import finetune

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(finetune, "run_finetune", boom)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == "failed"
    assert done.message.startswith("Training stopped because of an unexpected error on our side.")
    assert "fine-tune job" in caplog.text and "disk on fire" in caplog.text


def test_dead_worker_is_resumed_once_then_failed(job, enqueued, settings, django_capture_on_commit_callbacks):
    old = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS + 5)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=old, attempts=1, worker="dead")
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.finetune_reap_stale() == [job.pk]
    assert enqueued == [(job.pk, True)]
    job.refresh_from_db()
    assert job.status == "queued"
    assert job.message == (
        "The training worker stopped unexpectedly; the job is queued again and will resume from its last checkpoint."
    )

    # The re-queued task is claimed at once by the next free worker and finishes, from the checkpoint if any.
    done = services.finetune_run(job_id=job.pk, hostname="rescuer", resume=True)
    assert (done.status, done.worker, done.attempts) == ("succeeded", "rescuer", 2)

    FineTuneJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=old, attempts=2)
    services.finetune_reap_stale()
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.message.startswith("The training worker stopped unexpectedly (2 times), so the job was ended.")


def test_status_and_phase_agree_when_a_job_is_requeued_and_claimed(job, settings, api_client):
    from modelfactory.services.finetune_worker import _claim

    old = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS + 5)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", phase="indexing", heartbeat_at=old, attempts=1)
    services.finetune_reap_stale()
    api_client.force_authenticate(job.owner)
    shown = api_client.get(f"/api/v1/finetunes/{job.pk}/").json()
    assert (shown["status"], shown["phase"]) == ("queued", "queued")

    claimed = _claim(job.pk, hostname="w")
    assert (claimed.status, claimed.phase) == ("running", "loading")


def test_workdir_is_under_media(job, settings):
    assert job.workdir == Path(settings.MEDIA_ROOT) / "finetunes" / str(job.pk)


def test_post_training_stages_run_as_phases_and_a_failure_keeps_the_model(job, monkeypatch):
    from modelfactory import hooks

    seen = []

    def good(*, job, result, on_progress):
        on_progress(1, 2)
        seen.append((job.pk, result.adapter_dir.name))

    def bad(*, job, result, on_progress):
        raise OSError("disk full")

    monkeypatch.setattr(
        hooks,
        "post_training_stages",
        [
            hooks.PostTrainingStage("indexing", "Building the index", good),
            hooks.PostTrainingStage("extra", "Extra", bad),
        ],
    )
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert seen == [(job.pk, "adapter")]
    assert done.status == "succeeded"
    assert done.report["stage_errors"] == {"extra": "Extra did not finish (OSError: disk full)."}
    assert done.message.endswith(" Note: Extra did not finish (OSError: disk full).")
    phases = [e.data["phase"] for e in done.events.filter(kind="phase")]
    assert phases[-2:] == ["indexing", "extra"]
    assert TrainedModel.objects.count() == 1


def test_reading_a_dead_workers_job_writes_nothing_the_sweep_recovers_it(
    job, cast, client, enqueued, settings, django_capture_on_commit_callbacks
):
    from rest_framework.test import APIClient

    from core.sweeper import run_sweeps

    old = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS + 5)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=old, attempts=1, worker="dead")
    enqueued.clear()
    client.force_login(cast.owner)
    page = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "The training worker has not reported for a while." in page
    assert client.get("/train/").status_code == 200
    api = APIClient()
    api.force_authenticate(cast.owner)
    assert api.get(f"/api/v1/finetunes/{job.pk}/").json()["status"] == "running"
    assert api.get("/api/v1/finetunes/").json()["results"][0]["status"] == "running"
    job.refresh_from_db()
    assert (job.status, job.heartbeat_at, job.message, enqueued) == ("running", old, job.message, [])

    with django_capture_on_commit_callbacks(execute=True):
        swept = {result.path: result.finished for result in run_sweeps()}
    assert swept["modelfactory.services.finetune_reap_stale"] == [job.pk]
    assert enqueued == [(job.pk, True)]
    job.refresh_from_db()
    assert job.status == "queued"
    page = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "has not reported" not in page
