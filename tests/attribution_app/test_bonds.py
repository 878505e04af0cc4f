"""Bonds on uploads: a datanet that asks one holds it from the wallet at upload (a short wallet is a clear refusal
and nothing is kept), returns it when the upload is accepted, slashes it to the datanet's pool when a curator rejects it as spam, returns it when the curator rejects it as not a
fit (on the review pages, which state each choice's outcome, and in the API); the upload page says so before upload;
the sweep finishes a step a crash left undone."""

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
        datanets.contribution_reject(
            contribution=second, curator=cast.owner, reason="Copied from a website", grounds="spam"
        )
    assert Bond.objects.get(contribution_id=first.pk).status == Bond.Status.RETURNED
    slashed = Bond.objects.get(contribution_id=second.pk)
    assert slashed.status == Bond.Status.SLASHED
    assert slashed.reason == f"contribution #{second.pk} rejected as spam: Copied from a website"
    assert Contribution.objects.get(pk=second.pk).rejected_as == "spam"
    assert Account.objects.get(owner=alice).balance == 2 * CREDIT
    assert Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=bonded.pk).balance == CREDIT
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


OTHER = [
    {"instruction": "How deep do I plant garlic?", "output": "About five centimetres, pointed end up."},
    {"instruction": "When are onions ready?", "output": "When the tops fall over and turn yellow."},
]


def _waiting(datanet, user, name="a.jsonl", rows=QA):
    contribution = _upload(datanet, user, name, rows)
    return datanets.contribution_ingest(contribution_id=contribution.pk)


def test_rejecting_as_not_a_fit_returns_the_bond_and_a_finding_cannot_be_faked_by_a_reject(
    bonded, cast, django_capture_on_commit_callbacks
):
    carol = UserFactory(username="carol-b")
    ledger.credit_grant(user_id=carol.pk, amount_micro=2 * CREDIT, granted_by=cast.staff, memo="test")
    contribution = _waiting(bonded, carol)
    before = (Contribution.objects.get(pk=contribution.pk).status, Transaction.objects.count())
    for grounds in ("harmful", "nonsense", ""):
        with pytest.raises(datanets.DatanetError, match="Reject as “not_a_fit” .not a fit for this datanet. or “spam”"):
            datanets.contribution_reject(contribution=contribution, curator=cast.owner, reason="x", grounds=grounds)
    assert (Contribution.objects.get(pk=contribution.pk).status, Transaction.objects.count()) == before
    with django_capture_on_commit_callbacks(execute=True):
        rejected = datanets.contribution_reject(
            contribution=contribution, curator=cast.owner, reason="About vegetables, not fruit", grounds="not_a_fit"
        )
    assert (rejected.status, rejected.rejected_as) == ("rejected", "not_a_fit")
    bond = Bond.objects.get(contribution_id=contribution.pk)
    assert bond.status == Bond.Status.RETURNED
    assert Account.objects.get(owner=carol).balance == 2 * CREDIT
    assert not Account.objects.filter(role=Account.Role.DATANET_POOL).exists()
    assert bonds_settle_decided() == []
    ledger_verify()


def test_the_review_pages_state_each_choices_bond_outcome_and_the_page_reject_follows_it(
    bonded, cast, client, django_capture_on_commit_callbacks
):
    dave = UserFactory(username="dave-b")
    ledger.credit_grant(user_id=dave.pk, amount_micro=3 * CREDIT, granted_by=cast.staff, memo="test")
    first, second = _waiting(bonded, dave), _waiting(bonded, dave, "b.jsonl", OTHER)
    client.force_login(cast.owner)
    for url in (f"/datanets/{bonded.slug}/review/", f"/datanets/contributions/{first.pk}/"):
        page = client.get(url).content.decode()
        assert (
            'value="not_a_fit" checked> Not a fit for this datanet: the bond of '
            '<span class="amount" title="1.000000 credits">1.00</span> credits goes back to dave-b'
        ) in page, url
        assert (
            'value="spam"> Spam: the bond of <span class="amount" title="1.000000 credits">1.00</span> credits is '
            "forfeited to this datanet's pool"
        ) in page, url
    reject = f"/datanets/contributions/{first.pk}/reject/"
    response = client.post(reject, {"reason": "Bought links", "grounds": "harmful"}, follow=True)
    assert "Reject as “not_a_fit” (not a fit for this datanet) or “spam” (spam)." in response.content.decode()
    assert Contribution.objects.get(pk=first.pk).status == "needs_review"
    assert Bond.objects.filter(status="held").count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reject, {"reason": "Bought links", "grounds": "spam"}, follow=True)
    assert f"Upload #{first.pk} rejected: spam." in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/datanets/contributions/{second.pk}/reject/", {"reason": "Vegetables"})  # the default choice
    assert Contribution.objects.get(pk=second.pk).rejected_as == "not_a_fit"
    assert dict(Bond.objects.values_list("contribution_id", "status")) == {first.pk: "slashed", second.pk: "returned"}
    assert Account.objects.get(owner=dave).balance == 2 * CREDIT
    assert Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=bonded.pk).balance == CREDIT
    page = client.get(f"/datanets/contributions/{first.pk}/").content.decode()
    assert "Rejected</span> (spam)" in page
    ledger_verify()


def test_without_a_bond_the_review_page_says_no_money_moves(cast, client):
    plain = datanets.datanet_create(
        owner=cast.owner, name="Plain", kind="instruction", summary="s", policy=Datanet.Policy.APPROVAL
    )
    contribution = _waiting(plain, cast.teammate)
    client.force_login(cast.owner)
    page = client.get(f"/datanets/{plain.slug}/review/").content.decode()
    assert "No bond is held for this upload, so neither choice moves money" in page
    assert 'value="spam"> Spam</label>' in page
    assert contribution.status == "needs_review"


def test_the_api_rejects_as_spam_or_not_a_fit_and_refuses_other_grounds(
    bonded, cast, api_client, django_capture_on_commit_callbacks
):
    erin = UserFactory(username="erin-b")
    ledger.credit_grant(user_id=erin.pk, amount_micro=3 * CREDIT, granted_by=cast.staff, memo="test")
    first, second = _waiting(bonded, erin), _waiting(bonded, erin, "b.jsonl", OTHER)
    api_client.force_authenticate(cast.owner)
    before = Transaction.objects.count()
    for grounds in ("harmful", "junk"):
        response = api_client.post(
            f"/api/v1/contributions/{first.pk}/reject/", {"reason": "x", "grounds": grounds}, format="json"
        )
        assert response.status_code == 400
        assert response.json()["error"]["details"] == {"grounds": [f'"{grounds}" is not a valid choice.']}
    assert Transaction.objects.count() == before and Contribution.objects.get(pk=first.pk).status == "needs_review"
    with django_capture_on_commit_callbacks(execute=True):
        spam = api_client.post(
            f"/api/v1/contributions/{first.pk}/reject/", {"reason": "Ads", "grounds": "spam"}, format="json"
        )
        plain = api_client.post(f"/api/v1/contributions/{second.pk}/reject/", {"reason": "Off topic"}, format="json")
    assert spam.status_code == plain.status_code == 200
    assert (spam.json()["status"], spam.json()["rejected_as"]) == ("rejected", "spam")
    assert (plain.json()["status"], plain.json()["rejected_as"]) == ("rejected", "not_a_fit")
    assert dict(Bond.objects.values_list("contribution_id", "status")) == {first.pk: "slashed", second.pk: "returned"}
    assert Account.objects.get(owner=erin).balance == 2 * CREDIT
    assert Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=bonded.pk).balance == CREDIT
    ledger_verify()


def test_the_admin_lists_the_grounds_and_does_not_let_staff_change_them(bonded, cast, client):
    frank = UserFactory(username="frank-b")
    ledger.credit_grant(user_id=frank.pk, amount_micro=CREDIT, granted_by=cast.staff, memo="test")
    contribution = _waiting(bonded, frank)
    datanets.contribution_reject(contribution=contribution, curator=cast.owner, reason="Ads", grounds="spam")
    client.force_login(cast.staff)
    listing = client.get("/admin/datanets/contribution/", {"rejected_as__exact": "spam"}).content.decode()
    assert f">{contribution.pk}</a>" in listing and '<td class="field-rejected_as">Spam</td>' in listing
    form = client.get(f"/admin/datanets/contribution/{contribution.pk}/change/").content.decode()
    assert 'name="rejected_as"' not in form and "Spam" in form
