"""Cancel is honoured in every phase of a job (training, evaluation, the post-training stages): the job ends
cancelled, and nothing is kept (no trained model, no index record, no workdir)."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from attribution.models import ModelIndex
from modelfactory import hooks, services
from modelfactory.models import FineTuneJob, ModelVersion, TrainedModel
from modelfactory.services import finetune_worker
from modelfactory.training import evaluate
from tests.finetune.conftest import FAST, launch_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(cast, tiny_base, version):
    job, _ = launch_job(
        cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
        hyperparameters=FAST, name="Zorb expert", idempotency_key="run",
    )  # fmt: skip
    return job


@pytest.fixture(autouse=True)
def _poll_every_time(monkeypatch):
    monkeypatch.setattr(finetune_worker._JobProgress, "POLL_SECONDS", 0.0)


def cancel_by_api(job):
    client = APIClient()
    client.force_authenticate(job.owner)
    response = client.post(f"/api/v1/finetunes/{job.pk}/cancel/", {"mode": "cancel"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "running"


def cancel_by_page(job):
    client = Client()
    client.force_login(job.owner)
    response = client.post(f"/train/jobs/{job.pk}/control/", {"mode": "cancel"})
    assert response.status_code in (200, 302), response.content
    assert FineTuneJob.objects.get(pk=job.pk).control == "cancel"


def test_what_cancel_and_stop_say_follows_the_phase(job):
    said = {}
    for phase in ("training", "evaluating", "indexing"):
        for mode in ("cancel", "stop"):
            FineTuneJob.objects.filter(pk=job.pk).update(status="running", phase=phase, control="")
            said[phase, mode] = services.finetune_control(user=job.owner, job_id=job.pk, mode=mode).message
    assert said == {
        ("training", "cancel"): "Cancelling at the next step; nothing will be kept.",
        ("training", "stop"): "Stopping at the next step; the adapter trained so far will be kept and evaluated.",
        ("evaluating", "cancel"): "Cancelling; nothing will be kept.",
        ("evaluating", "stop"): "Training has already finished; the adapter will be kept.",
        ("indexing", "cancel"): "Cancelling; nothing will be kept.",
        ("indexing", "stop"): "Training has already finished; the adapter will be kept.",
    }


def cancel_at_phase(monkeypatch, job, phase, cancel=cancel_by_api):
    """The owner presses Cancel as soon as the job reports `phase`."""
    original = finetune_worker._JobProgress.on_event

    def on_event(self, event):
        original(self, event)
        if event.get("type") == "phase" and event["phase"] == phase:
            cancel(job)

    monkeypatch.setattr(finetune_worker._JobProgress, "on_event", on_event)


def assert_nothing_kept(done):
    assert done.status == FineTuneJob.Status.CANCELLED
    assert done.message == "Cancelled: nothing was kept."
    assert not done.workdir.exists()
    assert TrainedModel.objects.count() == 0
    assert ModelVersion.objects.count() == 0
    assert ModelIndex.objects.count() == 0


def phases(job):
    return [e.data["phase"] for e in job.events.filter(kind="phase").order_by("pk")]


def test_cancel_during_training(monkeypatch, job):
    original = finetune_worker._JobProgress.on_event

    def on_event(self, event):
        original(self, event)
        if event.get("type") == "train" and event["step"] == 1:
            cancel_by_api(job)

    monkeypatch.setattr(finetune_worker._JobProgress, "on_event", on_event)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert_nothing_kept(done)
    assert done.step == 1 < done.total_steps
    assert phases(done) == ["queued", "loading", "training"]


@pytest.mark.parametrize("cancel", [cancel_by_api, cancel_by_page])
def test_cancel_as_evaluation_starts(monkeypatch, job, cancel):
    cancel_at_phase(monkeypatch, job, "evaluating", cancel=cancel)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert_nothing_kept(done)
    assert phases(done) == ["queued", "loading", "training", "evaluating"]


def test_cancel_between_evaluation_batches(monkeypatch, job):
    calls = []
    original = evaluate.greedy_answers

    def greedy_answers(*args, **kwargs):
        calls.append(1)
        answers = original(*args, **kwargs)
        cancel_by_api(job)  # while the base model's answers are being written
        return answers

    monkeypatch.setattr(evaluate, "greedy_answers", greedy_answers)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert_nothing_kept(done)
    assert calls == [1]  # the fine-tuned side was never evaluated
    assert phases(done)[-1] == "evaluating"


def test_cancel_before_the_post_training_stages(monkeypatch, job):
    cancel_at_phase(monkeypatch, job, "saving")
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert_nothing_kept(done)
    assert phases(done) == ["queued", "loading", "training", "evaluating", "saving"]  # indexing never started


def wrap_indexing(monkeypatch, *, before: bool):
    (stage,) = [s for s in hooks.post_training_stages if s.name == "indexing"]
    progress = []

    def run(*, job, result, on_progress):
        def counted(done, total):
            progress.append(done)
            on_progress(done, total)

        if before:
            cancel_by_api(job)
        stage.run(job=job, result=result, on_progress=counted)
        if not before:
            assert ModelIndex.objects.filter(job=job).exists()
            cancel_by_api(job)

    wrapped = hooks.PostTrainingStage(stage.name, stage.label, run, discard=stage.discard)
    monkeypatch.setattr(hooks, "post_training_stages", [wrapped])
    return progress


def test_cancel_during_indexing_stops_the_stage(monkeypatch, job):
    progress = wrap_indexing(monkeypatch, before=True)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert_nothing_kept(done)
    assert len(progress) == 1  # the first progress report saw the cancel
    assert phases(done)[-1] == "indexing"


def test_cancel_after_the_last_stage_discards_what_it_wrote(monkeypatch, job):
    wrap_indexing(monkeypatch, before=False)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert_nothing_kept(done)  # the index record the stage wrote is gone too


def test_stop_during_evaluation_still_keeps_the_adapter(monkeypatch, job):
    def stop(job):
        services.finetune_control(user=job.owner, job_id=job.pk, mode="stop")

    cancel_at_phase(monkeypatch, job, "evaluating", cancel=stop)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == FineTuneJob.Status.SUCCEEDED
    assert TrainedModel.objects.count() == 1
