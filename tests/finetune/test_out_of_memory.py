"""Out of memory is an answer, not a loop: a job whose worker vanished near its memory limit, or a stage that raised
an out-of-memory error, ends once with what ran out, at which stage, and what to lower."""

from datetime import timedelta

import pytest
from django.utils import timezone

from modelfactory import hooks, services
from modelfactory.models import FineTuneJob, ModelVersion
from modelfactory.services import finetune_worker
from modelfactory.services.finetune_worker import _claim, _MemorySampler
from tests.finetune.conftest import FAST, launch_job

pytestmark = pytest.mark.django_db
GB = 2**30


@pytest.fixture
def job(cast, tiny_base, version):
    job, _ = launch_job(
        cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
        hyperparameters=FAST, name="Zorb expert", idempotency_key="oom",
    )  # fmt: skip
    return job


def _died(job, settings, *, phase: str, held: int, limit: int) -> None:
    old = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS + 5)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="running", phase=phase, heartbeat_at=old, attempts=1, worker="dead",
        memory_bytes=held, memory_limit_bytes=limit,
    )  # fmt: skip


INDEX_KILLED = (
    "The computer ran out of memory while building the attribution index over the training rows (the worker held "
    "22.0 GB of the 23.0 GB it could use), so the system stopped the training worker. The job was not started again, "
    "since it would run out of memory the same way. Lower the batch size (now 4; try 2), the maximum length (now 192 "
    "tokens) or the adapter size (rank, now 4), then launch it again. An operator can also lower "
    "MF_MEMORY_BUDGET_FRACTION, the share of free memory each pass of this stage may use."
)


def test_a_worker_killed_near_its_memory_limit_fails_the_job_once_instead_of_queueing_it(job, settings, enqueued):
    _died(job, settings, phase="indexing", held=22 * GB, limit=23 * GB)
    enqueued.clear()
    assert services.finetune_reap_stale() == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.message) == ("failed", INDEX_KILLED)
    assert job.finished_at is not None
    assert enqueued == []
    assert services.finetune_reap_stale() == []  # ended: nothing more happens to it


def test_a_worker_that_died_far_from_its_limit_is_queued_again_as_before(
    job, settings, enqueued, django_capture_on_commit_callbacks
):  # noqa: E501
    _died(job, settings, phase="training", held=8 * GB, limit=23 * GB)
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.finetune_reap_stale()
    job.refresh_from_db()
    assert job.status == "queued" and job.message.startswith("The training worker stopped unexpectedly; the job is")
    assert enqueued == [(job.pk, True)]


def test_a_redelivered_task_does_not_take_over_a_job_killed_for_memory(job, settings):
    _died(job, settings, phase="training", held=20 * GB, limit=21 * GB)
    assert _claim(job.pk, hostname="rescuer") is None
    job.refresh_from_db()
    assert job.status == "failed" and job.attempts == 1 and job.worker == "dead"
    assert job.message.startswith(
        "The computer ran out of memory while training (the worker held 20.0 GB of the 21.0 GB it could use), so the "
        "system stopped the training worker."
    )
    assert "MF_MEMORY_BUDGET_FRACTION" not in job.message  # the batch size and max length are what bound training


def test_an_out_of_memory_error_in_evaluation_fails_the_job_with_what_to_lower(job, monkeypatch):
    from modelfactory.training import evaluate

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB. out of memory")

    monkeypatch.setattr(evaluate, "compare_base_and_tuned", out_of_memory)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert (done.status, done.phase) == ("failed", "evaluating")
    assert done.message == (
        "The computer ran out of memory while comparing the base model and the fine-tuned one on held-out rows. "
        "Lower the batch size (now 4; try 2), the maximum length (now 192 tokens) or the adapter size (rank, now 4), "
        "then launch it again. An operator can also lower MF_MEMORY_BUDGET_FRACTION, the share of free memory each "
        "pass of this stage may use."
    )
    assert not ModelVersion.objects.filter(job=job).exists()


def test_an_out_of_memory_error_in_the_index_stage_keeps_the_model_and_says_so(job, monkeypatch):
    (stage,) = [s for s in hooks.post_training_stages if s.name == "indexing"]

    def run(*, job, result, on_progress):
        raise MemoryError()

    monkeypatch.setattr(hooks, "post_training_stages", [hooks.PostTrainingStage(stage.name, stage.label, run)])
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == "succeeded"
    assert done.report["stage_errors"] == {
        "indexing": "The computer ran out of memory while building the attribution index over the training rows. The "
        "trained model is kept. Lower the batch size (now 4; try 2), the maximum length (now 192 tokens) or the "
        "adapter size (rank, now 4), then launch it again. An operator can also lower MF_MEMORY_BUDGET_FRACTION, the "
        "share of free memory each pass of this stage may use."
    }


def test_the_heartbeat_keeps_the_most_memory_held_since_the_last_beat(monkeypatch):
    samples = iter([3 * GB, 5 * GB, 4 * GB, 4 * GB, 4 * GB + GB // 2])
    monkeypatch.setattr(finetune_worker.memory, "rss_bytes", lambda: next(samples))
    sampler = _MemorySampler(simulated=10 * GB)
    sampler.sample()
    sampler.sample()
    sampler.sample()
    assert (sampler.peak, sampler.limit) == (5 * GB, 10 * GB)
    assert sampler.grew()  # 5 GB more than the last beat wrote (nothing): beat at once
    sampler.written()
    sampler.sample()
    assert sampler.peak == 4 * GB and not sampler.grew()  # the newest window: less than before
    sampler.sample()
    assert sampler.peak == 4 * GB + GB // 2 and not sampler.grew()  # -0.5 GB against the 5 GB written
