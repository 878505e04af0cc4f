"""Train again from a model: a new version of the same model, trained on newer data starting from its adapter."""

from __future__ import annotations

from modelfactory.models import FineTuneJob, ModelVersion, TrainedModel
from modelfactory.services.finetune_jobs import LaunchError, finetune_launch


def finetune_continue(
    *, user, model_slug: str, version_ids: list[int], idempotency_key: str, name: str = ""
) -> tuple[FineTuneJob, bool]:
    """Launches a job that continues training the newest version of the user's model `model_slug` on the datanet
    versions `version_ids`, with the settings of the job that made that version (the adapter's size and layers must
    stay the same). The result becomes the model's next version (modelfactory.services.trained_model_create_from_job).
    Returns (job, created); LaunchError with per-field messages, nothing created, otherwise."""
    model = TrainedModel.objects.filter(slug=model_slug, owner=user).select_related("base_model").first()
    parent = model.latest_version if model else None
    if parent is None:
        raise LaunchError({"from_model": f"You have no trained model called “{model_slug}”."})
    job = parent.job
    return finetune_launch(
        user=user,
        base_model_slug=model.base_model.slug,
        version_ids=version_ids,
        preset=job.preset,
        hyperparameters=job.hyperparameters,
        name=(name or "").strip() or model.name,
        idempotency_key=idempotency_key,
        parent_version=parent,
    )


def model_lineage(*, version: ModelVersion) -> list[ModelVersion]:
    """The versions this one was trained from, oldest first, then itself: [v1, v2, v3]."""
    return [job.model_version for job in lineage_jobs(job=version.job)]


def lineage_jobs(*, job: FineTuneJob) -> list[FineTuneJob]:
    """The jobs whose adapters this job's adapter carries on from, oldest first, then the job itself."""
    jobs = [job]
    while jobs[-1].parent_version_id is not None:
        jobs.append(jobs[-1].parent_version.job)
    return list(reversed(jobs))
