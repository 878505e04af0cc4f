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
    from django.db.models import Sum

    from attribution.demo import FARMER
    from datanets.models import Contribution
    from ledger.models import Account, Bond, PendingEarning

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MF_BASE_MODEL_DIR = tmp_path / "models"
    out = StringIO()
    call_command("demo", "--tiny", "--farmer", stdout=out)
    text = out.getvalue()

    assert f"{FARMER}: 200 rows kept, 0 refused, 0 duplicate(s)" in text
    assert "version 1: 210 rows from 4 contributors" in text
    assert "The same answers under the older rule settle-1 (by row count) and the current settle-2:" in text
    line = next(x for x in text.splitlines() if x.strip().startswith(f"{FARMER} ") and "settle-1" in x)
    # The datanet holds earnings 7 days: what settle-2 pays the farmer waits in its pending earnings.
    paid = PendingEarning.objects.filter(user__username=FARMER, status="pending").aggregate(t=Sum("amount"))["t"] or 0
    assert line.split("settle-2")[1].strip() == f"{paid / 1_000_000:.6f}"  # the ledger holds what settle-2 says
    assert "holds contributors' earnings for 7 days and asks a bond of 0.500000 credits per upload" in text
    assert "demo_spammer: rejected as spam (Advertising, not gardening answers.)" in text
    assert "demo_dave: rejected as not a fit for this datanet (About cars, not the kitchen garden.)" in text
    wallets = {line.split()[0]: line.split() for line in text.splitlines() if " available " in line}
    for name in ("demo_alice", "demo_bob", "demo_carol", FARMER, "demo_dave"):  # bond returned: the 1 credit given
        assert wallets[name][2] == "1.000000", wallets[name]
    assert wallets["demo_spammer"][2:5] == ["0.500000", "pending", "0.000000"]
    for name in ("demo_alice", "demo_bob", "demo_carol", FARMER):
        held = PendingEarning.objects.filter(user__username=name, status="pending").aggregate(t=Sum("amount"))["t"]
        assert wallets[name][4] == f"{(held or 0) / 1_000_000:.6f}"
    statuses = dict(Bond.objects.values_list("user__username", "status"))
    assert statuses == {"demo_alice": "returned", "demo_bob": "returned", "demo_carol": "returned",
                        FARMER: "returned", "demo_dave": "returned", "demo_spammer": "slashed"}  # fmt: skip
    spam = Contribution.objects.get(contributor__username="demo_spammer")
    assert f"   demo_spammer     0.500000  forfeited: contribution #{spam.pk} rejected as spam: Advertising" in text
    pool = Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=spam.datanet_id)
    assert pool.balance == 500_000
    assert "The datanet's pool: 0.500000 credits (0 forfeited earning(s), 1 forfeited bond(s))" in text
    assert "Ledger OK:" in text


def test_a_training_that_crashes_in_the_demo_ends_it_with_the_error(settings, tmp_path, monkeypatch):
    """The demo trains in a thread of its own and waits for the job to end; a crash the job could not record (here
    the whole run raising) must end the demo with the error instead of leaving it waiting forever."""
    import threading

    from django.core.management.base import CommandError

    from modelfactory import services
    from modelfactory.models import FineTuneJob
    from modelfactory.services.finetune_worker import _claim

    def crash(*, job_id, hostname):
        _claim(job_id, hostname=hostname)
        raise OSError("disk full")

    monkeypatch.setattr(services, "finetune_run", crash)
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MF_BASE_MODEL_DIR = tmp_path / "models"
    failure: list[BaseException] = []

    def demo() -> None:
        try:
            call_command("demo", "--tiny", stdout=StringIO())
        except BaseException as exc:
            failure.append(exc)

    runner = threading.Thread(target=demo, daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the demo is still waiting for a job nobody runs"
    assert len(failure) == 1 and isinstance(failure[0], CommandError)
    assert str(failure[0]) == "The training stopped in this process before the job ended (OSError: disk full)."
    job = FineTuneJob.objects.get()
    assert (job.status, job.worker) == (FineTuneJob.Status.RUNNING, "demo")
    assert Inference.objects.count() == 0  # nothing was asked of a model that does not exist
