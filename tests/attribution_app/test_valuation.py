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


def test_a_contradicting_contribution_is_flagged_for_review_on_the_datanet_page(planted_factory, cast, client):
    planted = planted_factory(extra={"mallory": contradicting_rows()}, seed=SEED)
    job = planted.job
    record = ModelIndex.objects.get(job=job)
    ordered = list(Record.objects.order_by("pk").values_list("pk", "contributor__username", "content"))
    assert len(ordered) == 61
    _, held_out = split_rows([pk for pk, _, _ in ordered], eval_split=0.1, seed=SEED)
    held = [(name, content["instruction"]) for pk, name, content in ordered if pk in held_out]
    # The scenario: the held-out rows include alice's facts that mallory contradicts, and none of mallory's rows.
    assert [name for name, _ in held].count("alice") == 3 and "mallory" not in [name for name, _ in held]
    assert record.valuation["eval_rows"] == len(held) == 6

    values = {v.contributor.username: v for v in ContributionValue.objects.filter(index=record)}
    print({name: (round(v.value, 4), round(v.z, 1), v.p, v.harmful) for name, v in values.items()})
    assert sorted(values) == ["alice", "bob", "carol", "mallory"]
    assert values["mallory"].value < 0 and values["mallory"].harmful
    assert values["mallory"].p <= record.valuation["alpha"] == 0.05 and values["mallory"].z < 0
    assert values["alice"].value > 0 and not values["alice"].harmful
    assert [v.contributor.username for v in ContributionValue.objects.filter(index=record, harmful=True)] == ["mallory"]
    assert ContributionValue.objects.filter(index=record).first().contributor.username == "mallory"  # most harmful

    client.force_login(planted.owner)  # the datanet's owner curates it
    page = client.get(reverse("attribution:datanet", args=[planted.datanet.slug])).content.decode()
    assert "1 contribution flagged for review." in page
    flagged = page.split("Review: made the model worse")
    assert len(flagged) == 2 and "mallory" in flagged[0].rsplit("<tr>", 1)[-1]
    client.force_login(planted.people["mallory"])  # a contributor is not shown the curators' valuation
    page = client.get(reverse("attribution:datanet", args=[planted.datanet.slug])).content.decode()
    assert "flagged for review" not in page and "Review: made the model worse" not in page
