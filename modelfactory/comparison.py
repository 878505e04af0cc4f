"""Compare runs (a read): two or more of a user's fine-tune jobs on the same base model, with their loss curves
overlaid, the settings that differ and the held-out answers side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelfactory import selectors
from modelfactory.models import FineTuneJob
from modelfactory.training.presets import HYPERPARAMETERS

MAX_JOBS = 6


class CompareError(Exception):
    """The jobs cannot be compared; the message says why in plain words."""


@dataclass
class Comparison:
    jobs: list[FineTuneJob]
    differing: list[tuple[str, list[str]]]  # (setting, value per job) where the jobs differ
    same: list[tuple[str, str]]  # (setting, value) they share
    curves: dict  # the "loss-compare" chart's data: {"datasets": [{label, data: [{x, y}], job, kind}]}
    answers: list[dict] = field(default_factory=list)  # {prompt, reference, base, tuned: [answer per job]}


def _value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "–" if value in (None, "") else str(value)


def jobs_compare(*, user, job_ids: list[int]) -> Comparison:
    """CompareError unless 2..MAX_JOBS jobs, all the user's (or any, for staff), on one base model."""
    ids = sorted(set(job_ids))
    if len(ids) < 2:
        raise CompareError("Choose at least two training jobs to compare.")
    if len(ids) > MAX_JOBS:
        raise CompareError(f"Compare at most {MAX_JOBS} jobs at a time.")
    jobs = FineTuneJob.objects.select_related("base_model").prefetch_related("datanet_versions__datanet")
    if not user.is_staff:
        jobs = jobs.filter(owner=user)
    jobs = list(jobs.filter(pk__in=ids).order_by("pk"))
    if len(jobs) != len(ids):
        raise CompareError("Some of these jobs are not yours or no longer exist.")
    bases = sorted({job.base_model.name for job in jobs})
    if len(bases) > 1:
        raise CompareError(
            f"These jobs start from different base models ({', '.join(bases)}): their losses are not comparable. "
            "Choose jobs on the same base model."
        )
    rows = [("Preset", [job.preset for job in jobs]), ("Data", [_data_of(user, job) for job in jobs])]
    keys = [key for key in HYPERPARAMETERS if any(key in job.hyperparameters for job in jobs)]
    keys += sorted({key for job in jobs for key in job.hyperparameters} - set(keys))
    for key in keys:
        label = HYPERPARAMETERS[key].label if key in HYPERPARAMETERS else key
        rows.append((label, [_value(job.hyperparameters.get(key)) for job in jobs]))
    differing = [(label, values) for label, values in rows if len(set(values)) > 1]
    same = [(label, values[0]) for label, values in rows if len(set(values)) == 1]
    return Comparison(jobs=jobs, differing=differing, same=same, curves=_curves(jobs), answers=_answers(jobs))


def _data_of(user, job: FineTuneJob) -> str:
    versions = sorted(job.datanet_versions.all(), key=lambda v: v.pk)
    return ", ".join(selectors.version_names_for(user=user, versions=versions))


def _curves(jobs: list[FineTuneJob]) -> dict:
    datasets = []
    for index, job in enumerate(jobs):
        points = selectors.job_chart_points(job=job)
        datasets.append({"label": f"#{job.pk} training", "data": points["train"], "job": index, "kind": "train"})
        datasets.append({"label": f"#{job.pk} held-out", "data": points["eval"], "job": index, "kind": "eval"})
    return {"datasets": datasets}


def _answers(jobs: list[FineTuneJob]) -> list[dict]:
    """Held-out questions, in the first job's order, each with every job's answer ("–" where a job had no such
    row: jobs on different data hold out different rows)."""
    rows: dict[str, dict] = {}
    for index, job in enumerate(jobs):
        for sample in job.samples or []:
            row = rows.setdefault(
                sample["prompt"],
                {"prompt": sample["prompt"], "reference": sample.get("reference", ""), "base": sample.get("base", ""),
                 "tuned": ["–"] * len(jobs)},
            )  # fmt: skip
            row["tuned"][index] = sample.get("tuned", "")
    return list(rows.values())
