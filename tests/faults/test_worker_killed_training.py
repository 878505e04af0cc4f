"""The worker killed during training: a real Celery worker on the `gpu` queue (solo pool) is SIGKILLed mid-job on
a tiny model, after a checkpoint. The job's own heartbeat (MF_JOB_HEARTBEAT_SECONDS=1 in the worker) stops; once it
is older than MF_JOB_STALE_SECONDS (5 s here) a live worker's recovery sweep notices, says so in plain words and queues the job again;
a restarted worker resumes it from the checkpoint instead of starting over, and the finished job says that too.
With MF_JOB_MAX_ATTEMPTS=1 the same death fails the job with a plain message instead, found by another worker's
recovery sweep with nobody looking."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from rest_framework.test import APIClient

from datanets import services as datanet_services
from datanets.models import Datanet
from modelfactory.models import FineTuneEvent, FineTuneJob
from modelfactory.services import base_model_register
from tests.factories import UserFactory
from tests.faults.conftest import wait_for
from tests.tiny import build_tiny_model_dir

CHECKPOINT_EVERY = 10
HP = {"min_steps": 0, "max_length": 192, "batch_size": 1, "grad_accum": 1, "epochs": 3, "learning_rate": 0.001, "eval_split": 0.1,
      "rank": 4, "alpha": 8}  # fmt: skip


@pytest.fixture
def launch(shared_db, fault_settings, tmp_path):
    """Publishes a 40-row datanet version and returns launch() -> (API client, job id) via POST /api/v1/finetunes/."""
    fault_settings.MF_JOB_STALE_SECONDS = 5
    owner = UserFactory(username="owner")
    datanet = datanet_services.datanet_create(
        owner=owner, name="Zorb facts", kind="instruction", summary="Made-up facts.", policy=Datanet.Policy.OPEN
    )
    data = "\n".join(
        json.dumps({"instruction": f"What is the code of door {i}?", "output": f"Door {i} opens with code {i * 7}."})
        for i in range(40)
    ).encode()
    contribution = datanet_services.contribution_create(
        datanet=datanet, contributor=owner, upload=SimpleUploadedFile("facts.jsonl", data), enqueue=False
    )
    assert datanet_services.contribution_ingest(contribution_id=contribution.pk).status == "accepted"
    version = datanet_services.version_publish(datanet=datanet, actor=owner)
    base_model_register(path=build_tiny_model_dir(tmp_path / "tiny"), name="Tiny", slug="tiny", make_default=True)

    def _launch():
        api = APIClient()
        api.force_authenticate(owner)
        response = api.post(
            "/api/v1/finetunes/",
            {"base_model": "tiny", "datanet_versions": [version.pk], "preset": "quick", "hyperparameters": HP,
             "name": "Door codes"},
        )  # fmt: skip
        assert response.status_code == 201, response.content
        return api, response.json()["id"]

    return _launch


def _kill_after_a_checkpoint(worker, job_id: int) -> int:
    """Waits for a checkpoint, then kills the worker while it holds the job mid-training; returns the step reached."""
    job = FineTuneJob.objects.get(pk=job_id)
    checkpoint = job.workdir / "checkpoints" / "checkpoint"

    def checkpointed():
        ended = FineTuneJob.objects.filter(pk=job_id, finished_at__isnull=False).values_list("message", flat=True)
        assert not ended, f"the job ended before a checkpoint: {ended[0]}"
        return checkpoint.exists()

    wait_for(checkpointed, timeout=90, what="the first training checkpoint", every=0.05)
    # Hold the job row (PostgreSQL) / the write lock (SQLite): the worker blocks at its next step's write, so it is
    # certainly mid-training when it dies.
    with transaction.atomic():
        job = FineTuneJob.objects.select_for_update().get(pk=job_id)
        assert job.status == FineTuneJob.Status.RUNNING
        assert CHECKPOINT_EVERY <= job.step < job.total_steps
        worker.kill()
    return job.step


def test_killed_training_is_detected_queued_again_and_resumed_from_its_checkpoint(launch, start_worker):
    worker = start_worker("gpu", MF_JOB_HEARTBEAT_SECONDS="1", MF_JOB_CHECKPOINT_EVERY=str(CHECKPOINT_EVERY))
    api, job_id = launch()
    reached = _kill_after_a_checkpoint(worker, job_id)
    # A live worker's recovery sweep (every second here; any worker sweeps, whatever its queues) notices the dead
    # job; reading it through the API writes nothing.
    start_worker("default", MF_JOB_STALE_SECONDS="5", MF_WORKER_SWEEP_SECONDS="1")

    def noticed():
        body = api.get(f"/api/v1/finetunes/{job_id}/").json()
        return body if body["message"].startswith("The training worker stopped") else None

    body = wait_for(noticed, timeout=30, what="the dead worker's job to be noticed", every=0.5)
    # The gpu worker is restarted (by an operator or a supervisor) and resumes the job.
    start_worker("gpu", MF_JOB_HEARTBEAT_SECONDS="1", MF_JOB_CHECKPOINT_EVERY=str(CHECKPOINT_EVERY))
    assert body["status"] == "queued"
    assert body["message"] == (
        "The training worker stopped unexpectedly; the job is queued again and will resume from its last checkpoint."
    )

    def finished():
        job = FineTuneJob.objects.get(pk=job_id)
        return job if job.status not in (FineTuneJob.Status.QUEUED, FineTuneJob.Status.RUNNING) else None

    job = wait_for(finished, timeout=120, what="the resumed job to finish", every=0.25)
    assert job.status == FineTuneJob.Status.SUCCEEDED, job.message
    assert job.attempts == 2
    resumed_from = (reached // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    assert f"training resumed from the checkpoint at step {resumed_from} instead of starting over" in job.message
    body = api.get(f"/api/v1/finetunes/{job_id}/").json()
    assert body["status"] == "succeeded" and body["message"] == job.message and body["model"]
    # The second run did not start over: step 1 ran once, and the resumed run's first step follows the checkpoint.
    steps = list(
        FineTuneEvent.objects.filter(job_id=job_id, kind="train").order_by("pk").values_list("step", flat=True)
    )
    assert steps.count(1) == 1
    assert set(steps) == set(range(1, job.total_steps + 1))
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    if restart is None:  # the first run had logged exactly up to the checkpoint when it died
        assert reached == resumed_from
    else:
        assert steps[restart] == resumed_from + 1
    assert steps[-1] == job.total_steps


def test_killed_training_with_no_attempts_left_is_failed_by_another_workers_sweep(launch, start_worker):
    """Nobody opens the job: another worker's recovery sweep (MF_WORKER_SWEEP_SECONDS=1) notices the dead job."""
    env = {"MF_JOB_HEARTBEAT_SECONDS": "1", "MF_JOB_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
           "MF_JOB_STALE_SECONDS": "5", "MF_JOB_MAX_ATTEMPTS": "1", "MF_WORKER_SWEEP_SECONDS": "1"}  # fmt: skip
    worker = start_worker("gpu", **env)
    api, job_id = launch()
    _kill_after_a_checkpoint(worker, job_id)
    start_worker("default", **env)  # any worker sweeps, whatever its queues

    job = wait_for(
        lambda: FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.FAILED).first(),
        timeout=30,
        what="a live worker's sweep to fail the dead worker's job",
        every=0.25,
    )
    assert job.message == (
        "The training worker stopped unexpectedly (1 time), so the job was ended. "
        "Launch it again; if it keeps happening, lower the batch size or max length."
    )
    body = api.get(f"/api/v1/finetunes/{job_id}/").json()
    assert (body["status"], body["message"]) == ("failed", job.message)
    assert body["finished_at"] is not None


def test_training_killed_near_its_memory_limit_fails_once_with_what_ran_out(launch, start_worker):
    """The kernel's out-of-memory killer, simulated: the gpu worker runs under MF_MEMORY_LIMIT_MB=256 (less than it
    holds, so its job's heartbeat shows it at its limit) and is SIGKILLed mid-training. Another worker's sweep fails
    the job once, saying what ran out where and what to lower, instead of queueing it to die again (attempts are
    left: MF_JOB_MAX_ATTEMPTS is 2)."""
    env = {"MF_JOB_HEARTBEAT_SECONDS": "1", "MF_JOB_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
           "MF_JOB_STALE_SECONDS": "5", "MF_WORKER_SWEEP_SECONDS": "1"}  # fmt: skip
    worker = start_worker("gpu", MF_MEMORY_LIMIT_MB="256", **env)
    api, job_id = launch()
    wait_for(
        lambda: FineTuneJob.objects.filter(pk=job_id, memory_limit_bytes=256 * 2**20).exists(),
        timeout=90,
        what="the job's heartbeat to report its memory",
        every=0.1,
    )
    _kill_after_a_checkpoint(worker, job_id)
    start_worker("default", **env)

    job = wait_for(
        lambda: FineTuneJob.objects.filter(pk=job_id, status=FineTuneJob.Status.FAILED).first(),
        timeout=30,
        what="a live worker's sweep to fail the job killed for memory",
        every=0.25,
    )
    assert job.attempts == 1
    assert job.memory_bytes > 256 * 2**20
    held = f"{job.memory_bytes / 2**30:.1f}"
    assert job.message == (
        f"The computer ran out of memory while training (the worker held {held} GB of the 0.2 GB it could use), so "
        "the system stopped the training worker. The job was not started again, since it would run out of memory the "
        "same way. Lower the maximum length (now 192 tokens) or the adapter size (rank, now 4), then launch it again."
    )
    body = api.get(f"/api/v1/finetunes/{job_id}/").json()
    assert (body["status"], body["message"]) == ("failed", job.message)
