"""`manage.py demo --tiny`: the whole chain through the real services, on a tiny model."""

from io import StringIO

import pytest
from django.core.management import call_command

from attribution.models import Attribution
from ledger.models import Posting
from modelfactory.models import Inference

pytestmark = pytest.mark.django_db(transaction=True)


def test_demo_runs_the_whole_chain(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MF_BASE_MODEL_DIR = tmp_path / "models"
    out = StringIO()
    call_command("demo", "--tiny", stdout=out)
    text = out.getvalue()

    assert "demo_carol: 2 rows kept, 1 refused, 1 duplicate(s)" in text
    assert "line 3: this line could not be read: check its quotes, commas and brackets" in text
    assert "version 1: 10 rows from 3 contributors" in text
    assert "Finished: Training finished." in text
    assert text.count("   Q: ") == 3
    assert "Ledger OK:" in text and text.rstrip().endswith("/wallet/ to see it.")
    inference_ids = list(Inference.objects.order_by("pk").values_list("pk", flat=True))
    assert [f"   answer {pk}: verified" in text for pk in inference_ids] == [True] * 3  # attribution_verify

    inferences = list(Inference.objects.order_by("pk"))
    assert [i.status for i in inferences] == ["completed"] * 3
    attributions = Attribution.objects.filter(inference__in=inferences)
    assert sorted(a.settlement_status for a in attributions) == ["settled"] * 3
    # Every micro-unit of the fees went to the owner, the contributors and the platform.
    fees = sum(i.fee_micro for i in inferences)
    assert fees > 0
    received = sum(
        p.amount
        for p in Posting.objects.filter(transaction__kind="settlement", amount__gt=0).exclude(
            account__owner__username="demo_caller"  # what a hold returns to the caller is not income
        )
    )
    assert received == fees


def test_demo_with_a_farmer_compares_the_rules(settings, tmp_path):
    from attribution.demo import FARMER
    from ledger.models import Account

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MF_BASE_MODEL_DIR = tmp_path / "models"
    out = StringIO()
    call_command("demo", "--tiny", "--farmer", stdout=out)
    text = out.getvalue()

    assert f"{FARMER}: 200 rows kept, 0 refused, 0 duplicate(s)" in text
    assert "version 1: 210 rows from 4 contributors" in text
    assert "The same answers under the older rule settle-1 (by row count) and the current settle-2:" in text
    line = next(x for x in text.splitlines() if x.strip().startswith(f"{FARMER} ") and "settle-1" in x)
    paid = Account.objects.filter(owner__username=FARMER).values_list("balance", flat=True).first() or 0
    assert line.split("settle-2")[1].strip() == f"{paid / 1_000_000:.6f}"  # the ledger paid what settle-2 says
    assert "Ledger OK:" in text
