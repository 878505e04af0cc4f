"""Compare runs: two or more of a user's jobs on one base model, their loss curves overlaid, the settings that
differ and the held-out answers side by side; refusals in plain words."""

from __future__ import annotations

import json

import pytest

from modelfactory.comparison import CompareError, jobs_compare
from modelfactory.models import FineTuneEvent, FineTuneJob
from modelfactory.services import base_model_register
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db

HP = {"rank": 8, "alpha": 16, "learning_rate": 0.0002, "epochs": 2}


@pytest.fixture
def base(tmp_path):
    return base_model_register(path=build_tiny_model_dir(tmp_path / "base"), name="Tiny base", slug="tiny-base")


def _job(owner, base, key, *, hp, samples, losses):
    job = FineTuneJob.objects.create(
        owner=owner, name=f"run {key}", base_model=base, preset="balanced", hyperparameters=hp, idempotency_key=key,
        status=FineTuneJob.Status.SUCCEEDED, samples=samples, metrics={"base_eval_loss": 3.0, "eval_loss": losses[-1]},
    )  # fmt: skip
    for step, loss in enumerate(losses, start=1):
        FineTuneEvent.objects.create(job=job, kind="train", step=step, loss=loss)
    FineTuneEvent.objects.create(job=job, kind="eval", step=len(losses), eval_loss=losses[-1] + 0.1)
    return job


def _sample(prompt, tuned):
    return {"row_id": 1, "prompt": prompt, "reference": "green", "base": "blue?", "tuned": tuned}


@pytest.fixture
def three(cast, base):
    return [
        _job(cast.owner, base, "a", hp=HP, samples=[_sample("Sky on Zorb?", "green")], losses=[2.0, 1.0]),
        _job(cast.owner, base, "b", hp={**HP, "rank": 16}, samples=[_sample("Sky on Zorb?", "greenish")],
             losses=[2.1, 1.5, 1.2]),
        _job(cast.owner, base, "c", hp={**HP, "learning_rate": 0.001}, samples=[_sample("Moons?", "three")],
             losses=[1.9]),
    ]  # fmt: skip


def test_three_jobs_side_by_side(cast, three):
    a, b, c = three
    result = jobs_compare(user=cast.owner, job_ids=[c.pk, a.pk, b.pk, a.pk])
    assert result.jobs == [a, b, c]
    assert result.differing == [
        ("Adapter size (LoRA rank)", ["8", "16", "8"]),
        ("Learning rate", ["0.0002", "0.0002", "0.001"]),
    ]
    assert ("Epochs", "2") in result.same and ("Preset", "balanced") in result.same
    assert [d["label"] for d in result.curves["datasets"]] == [
        f"#{a.pk} training", f"#{a.pk} held-out", f"#{b.pk} training", f"#{b.pk} held-out",
        f"#{c.pk} training", f"#{c.pk} held-out",
    ]  # fmt: skip
    assert result.curves["datasets"][2]["data"] == [{"x": 1, "y": 2.1}, {"x": 2, "y": 1.5}, {"x": 3, "y": 1.2}]
    assert result.answers == [
        {"prompt": "Sky on Zorb?", "reference": "green", "base": "blue?", "tuned": ["green", "greenish", "–"]},
        {"prompt": "Moons?", "reference": "green", "base": "blue?", "tuned": ["–", "–", "three"]},
    ]


@pytest.mark.parametrize(
    ("pick", "message"),
    [
        (lambda jobs, other: [jobs[0].pk], "Choose at least two training jobs to compare."),
        (lambda jobs, other: [jobs[0].pk, other.pk], "Some of these jobs are not yours or no longer exist."),
        (lambda jobs, other: [jobs[0].pk, 999_999], "Some of these jobs are not yours or no longer exist."),
    ],
)
def test_refusals(cast, base, three, pick, message):
    other = _job(cast.outsider, base, "x", hp=HP, samples=[], losses=[1.0])
    with pytest.raises(CompareError) as error:
        jobs_compare(user=cast.owner, job_ids=pick(three, other))
    assert str(error.value) == message


def test_jobs_on_different_base_models_are_refused(cast, base, three, tmp_path):
    other_base = base_model_register(path=build_tiny_model_dir(tmp_path / "b2"), name="Other base", slug="other-base")
    other = _job(cast.owner, other_base, "y", hp=HP, samples=[], losses=[1.0])
    with pytest.raises(CompareError) as error:
        jobs_compare(user=cast.owner, job_ids=[three[0].pk, other.pk])
    assert str(error.value).startswith("These jobs start from different base models (Other base, Tiny base)")


def test_the_page_overlays_the_curves_and_lists_the_answers(client, cast, three):
    a, b, c = three
    client.force_login(cast.owner)
    listing = client.get("/train/").content.decode()
    assert listing.count('name="jobs"') == 3 and "Compare the chosen jobs" in listing
    response = client.get(f"/train/compare/?jobs={a.pk}&jobs={b.pk}&jobs={c.pk}")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'data-chart="loss-compare"' in page
    data = page.split('<script id="compare-data" type="application/json">')[1].split("</script>")[0]
    assert len(json.loads(data)["datasets"]) == 6
    assert "<td>Adapter size (LoRA rank)</td><td>8</td><td>16</td><td>8</td>" in page
    assert (
        '<td>Sky on Zorb?</td><td class="muted">green</td><td>blue?</td><td>green</td><td>greenish</td><td>–</td>'
        in page
    )


def test_the_page_says_why_it_cannot_compare(client, cast, three):
    client.force_login(cast.outsider)
    response = client.get(f"/train/compare/?jobs={three[0].pk}&jobs={three[1].pk}")
    assert response.status_code == 400
    assert '<p role="alert">Some of these jobs are not yours or no longer exist.</p>' in response.content.decode()
