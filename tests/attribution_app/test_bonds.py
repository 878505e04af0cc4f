"""Bonds on uploads: a datanet that asks one holds it from the wallet at upload (a short wallet is a clear refusal
and nothing is kept), returns it when the upload is accepted, slashes it when a curator rejects it; the upload page
says so before upload; the sweep finishes a step a crash left undone."""

import pytest

from attribution.services import bonds_settle_decided
from datanets import services as datanets
from datanets.ingest.screen import FLAG_KINDS
from datanets.models import Contribution, Datanet
from ledger import services as ledger
from ledger.models import Account, Bond, Transaction
from ledger.verification import ledger_verify
from tests.datanets.conftest import QA, jsonl, upload
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
CREDIT = 1_000_000


@pytest.fixture
def bonded(cast):
    datanet = datanets.datanet_create(
        owner=cast.owner, name="Bonded", kind="instruction", summary="s", policy=Datanet.Policy.APPROVAL
    )
    return datanets.datanet_update(datanet=datanet, actor=cast.owner, bond_micro=CREDIT)


def _upload(datanet, user, name="a.jsonl", rows=QA):
    return datanets.contribution_create(datanet=datanet, contributor=user, upload=upload(name, jsonl(rows)))


def test_a_short_wallet_refuses_the_upload_and_keeps_nothing(bonded, cast, settings, tmp_path):
    poor = UserFactory(username="poor")
    before = (Contribution.objects.count(), Transaction.objects.count())
    with pytest.raises(datanets.DatanetError, match="asks a bond of 1.00 credits per upload") as refused:
        _upload(bonded, poor)
    assert refused.value.code == "bond_unpaid" and refused.value.status == 402
    assert (Contribution.objects.count(), Transaction.objects.count()) == before
    assert not Bond.objects.exists()
    media = tmp_path / "media"
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


def test_the_bond_is_held_then_returned_on_accept_or_slashed_on_reject(
    bonded, cast, django_capture_on_commit_callbacks
):
    alice = UserFactory(username="alice-b")
    ledger.credit_grant(user_id=alice.pk, amount_micro=3 * CREDIT, granted_by=cast.staff, memo="test")
    first = _upload(bonded, alice)
    other = [{"instruction": "What is the best mulch for strawberries?", "output": "Straw: it keeps the fruit clean."},
             {"instruction": "When do I sow carrots outdoors?", "output": "From early spring, once the soil can be worked."}]  # fmt: skip
    second = _upload(bonded, alice, "b.jsonl", other)
    assert Account.objects.get(owner=alice).balance == CREDIT
    assert list(Bond.objects.order_by("pk").values_list("contribution_id", "status")) == [
        (first.pk, "held"),
        (second.pk, "held"),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        first = datanets.contribution_ingest(contribution_id=first.pk)
        second = datanets.contribution_ingest(contribution_id=second.pk)
    assert first.status == second.status == Contribution.Status.NEEDS_REVIEW  # still held while waiting
    assert Bond.objects.filter(status="held").count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        datanets.contribution_approve(contribution=first, curator=cast.owner)
        datanets.contribution_reject(contribution=second, curator=cast.owner, reason="Spam: copied from a website")
    assert Bond.objects.get(contribution_id=first.pk).status == Bond.Status.RETURNED
    slashed = Bond.objects.get(contribution_id=second.pk)
    assert slashed.status == Bond.Status.SLASHED
    assert slashed.reason == f"contribution #{second.pk} rejected: Spam: copied from a website"
    assert Account.objects.get(owner=alice).balance == 2 * CREDIT
    assert Account.objects.get(role=Account.Role.DATANET_POOL).balance == CREDIT
    assert bonds_settle_decided() == []  # nothing left to do; running it again moves nothing
    ledger_verify()


def test_the_sweep_closes_a_bond_whose_decision_handler_never_ran(bonded, cast):
    bob = UserFactory(username="bob-b")
    ledger.credit_grant(user_id=bob.pk, amount_micro=CREDIT, granted_by=cast.staff, memo="test")
    contribution = _upload(bonded, bob)
    contribution = datanets.contribution_ingest(contribution_id=contribution.pk)  # on_commit never runs here
    datanets.contribution_approve(contribution=contribution, curator=cast.owner)
    assert Bond.objects.get().status == Bond.Status.HELD
    assert bonds_settle_decided() == [contribution.pk]
    assert Bond.objects.get().status == Bond.Status.RETURNED
    assert Account.objects.get(owner=bob).balance == CREDIT
    ledger_verify()


def test_the_upload_page_names_the_bond_before_upload_and_refuses_plainly(bonded, cast, client):
    datanets.datanet_update(datanet=bonded, actor=cast.owner, holding_days=14)
    poor = UserFactory(username="poor-page")
    client.force_login(poor)
    page = client.get(f"/datanets/{bonded.slug}/upload/").content.decode()
    assert 'id="bond-notice"' in page and "1.00</span> credits</strong> per upload" in page
    assert "stays under review for\n14 days" in page
    response = client.post(f"/datanets/{bonded.slug}/upload/", {"file": upload("x.jsonl", jsonl(QA))})
    assert response.status_code == 400
    assert (
        "asks a bond of 1.00 credits per upload, and your wallet has 0.00 credits available"
        in response.content.decode()
    )
    assert not Contribution.objects.exists()


def test_the_settings_page_sets_the_holding_period_and_the_bond(bonded, cast, client):
    client.force_login(cast.owner)
    page = client.get(f"/datanets/{bonded.slug}/settings/").content.decode()
    assert "Days earnings stay under review" in page and "Bond per upload (credits)" in page
    form = {
        "name": "Bonded", "summary": "s", "licence": "CC-BY-4.0", "visibility": "public", "policy": "approval",
        "holding_days": "10", "bond_credits": "0.5",
        **{f"flag_{k}": bonded.flag_actions.get(k, "keep") for k in FLAG_KINDS},
    }  # fmt: skip
    response = client.post(f"/datanets/{bonded.slug}/settings/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    bonded.refresh_from_db()
    assert (bonded.holding_days, bonded.bond_micro) == (10, 500_000)
