"""Data valuation through a real training job: a contribution that contradicts another's answers is found harmful
on the held-out rows and flagged on the curators' datanet page."""

import random

import pytest
from django.urls import reverse

from attribution.models import ContributionValue, ModelIndex
from datanets.models import Record
from modelfactory.training.finetune import split_rows
from tests.attribution_app.conftest import planted_rows

pytestmark = pytest.mark.django_db

SEED = 8  # with 61 rows this holds out alice's rows 0, 6 and 9 (three of her facts) and none of mallory's


def contradicting_rows() -> list[tuple[str, str]]:
    """Mallory answers each of alice's fact questions, in both of her phrasings, with another code (12 rows)."""
    rng = random.Random(11)
    wrong = []
    for question, answer in planted_rows()["alice"][:12]:
        other = answer
        while other == answer:
            other = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in answer)
        wrong.append((question, other))
    return wrong


def test_a_training_job_values_each_contribution_on_its_held_out_rows_and_shows_flags_to_curators(
    planted_factory, cast, client, monkeypatch
):
    """The valuation a real job records: one value per contribution, the sum of its training rows' values on the
    held-out rows, flagged by the permutation rule, listed on the curators' page. Whether the contradicting
    contribution is flagged is not asserted here: on this tiny job it is not reliably told apart from the others
    (measured over 14 seeds: lowest value in 6, p <= 0.05 in 3, as often as an honest one), so the power of the
    flag is tested where it holds, in tests/attribution/test_engine_attribute.py (a trained saboteur)."""
    import attribution.engine as engine

    reports = []
    real = engine.data_valuation

    def keep_report(*args, **kwargs):
        reports.append(real(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(engine, "data_valuation", keep_report)
    planted = planted_factory(extra={"mallory": contradicting_rows()}, seed=SEED)
    record = ModelIndex.objects.get(job=planted.job)
    ordered = list(Record.objects.order_by("pk").values_list("pk", "contributor__username", "content"))
    assert len(ordered) == 61
    _, held_out = split_rows([pk for pk, _, _ in ordered], eval_split=0.1, seed=SEED)
    held = [(name, content["instruction"]) for pk, name, content in ordered if pk in held_out]
    # The scenario: the held-out rows include alice's facts that mallory contradicts, and none of mallory's rows.
    assert [name for name, _ in held].count("alice") == 3 and "mallory" not in [name for name, _ in held]
    assert record.valuation == {
        "version": "poa-val-2",
        "method": "fisher",
        "alpha": 0.05,
        "draws": 2000,
        "eval_rows": 6,
    }

    [report] = reports
    owner = {pk: name for pk, name, _ in ordered}
    assert sorted(report.row_values) == sorted(pk for pk in owner if pk not in held_out)  # training rows only
    values = {v.contributor.username: v for v in ContributionValue.objects.filter(index=record)}
    print({name: (round(v.value, 4), round(v.z, 1), v.p, v.harmful) for name, v in values.items()})
    assert {name: v.rows for name, v in values.items()} == {"alice": 14, "bob": 15, "carol": 14, "mallory": 12}
    for name, v in values.items():
        rows_total = sum(value for pk, value in report.row_values.items() if owner[pk] == name)
        assert v.value == pytest.approx(rows_total, rel=1e-9, abs=1e-9)
        assert 0 < v.p <= 1 and v.harmful == (v.value < 0 and v.p <= 0.05)
    stored = [
        (v.contributor.username, v.value, v.z, v.p, v.harmful) for v in ContributionValue.objects.filter(index=record)
    ]
    engine_says = [(values[n].contributor.username, c.value, c.z, c.p, c.harmful) for c in report.contributions
                   for n, v in values.items() if v.contribution_id == c.contribution_id]  # fmt: skip
    assert stored == engine_says  # most harmful first, as the engine ordered them

    flagged = [name for name, *_, harmful in stored if harmful]
    client.force_login(planted.owner)  # the datanet's owner curates it
    page = client.get(reverse("attribution:datanet", args=[planted.datanet.slug])).content.decode()
    assert page.count("Review: made the model worse") == len(flagged)
    if flagged:
        plural = "" if len(flagged) == 1 else "s"
        assert f"{len(flagged)} contribution{plural} flagged for review." in page
    else:
        assert "flagged for review." not in page.replace("are flagged for your review.", "")
    client.force_login(planted.people["mallory"])  # a contributor is not shown the curators' valuation
    page = client.get(reverse("attribution:datanet", args=[planted.datanet.slug])).content.decode()
    assert "flagged for review" not in page and "Review: made the model worse" not in page
