"""A curator's verdict on a contribution (confirmed harmful or flag dismissed), what it does to the contributor's
pending earnings, bond, rows and reputation, and the pages that show it. No training: the earnings are settled
directly through the ledger with the contribution as their source, as attribution's settlement does."""

from datetime import timedelta

import pytest
from django.utils import timezone

from attribution.models import ContributionFinding
from attribution.reputation import datanet_reputations, reputation_score
from attribution.services import FindingError, contribution_decide
from datanets import services as datanets
from datanets.models import Contribution, Datanet, Record
from ledger import services as ledger
from ledger.models import Account, Bond, PendingEarning, Transaction
from ledger.verification import ledger_verify
from tests.datanets.conftest import QA, jsonl, upload
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
CREDIT = 1_000_000


@pytest.fixture
def scene(cast, settings):
    settings.MF_LEDGER_SHARDS = 1
    datanet = datanets.datanet_create(
        owner=cast.owner, name="Garden", kind="instruction", summary="Garden answers.", policy=Datanet.Policy.OPEN
    )
    datanets.datanet_update(datanet=datanet, actor=cast.owner, holding_days=7)
    mallory = UserFactory(username="mallory")
    contribution = datanets.contribution_create(
        datanet=datanet, contributor=mallory, upload=upload("m.jsonl", jsonl(QA))
    )
    contribution = datanets.contribution_ingest(contribution_id=contribution.pk)
    assert contribution.status == Contribution.Status.ACCEPTED
    ledger.credit_grant(user_id=cast.outsider.pk, amount_micro=10 * CREDIT, granted_by=cast.staff, memo="test")
    ledger.credit_grant(user_id=mallory.pk, amount_micro=2 * CREDIT, granted_by=cast.staff, memo="test")
    bond = ledger.bond_post(
        key=f"contribution:{contribution.pk}", user_id=mallory.pk, amount_micro=CREDIT, datanet_id=datanet.pk,
        contribution_id=contribution.pk,
    )  # fmt: skip
    at = timezone.now() + timedelta(days=7)
    ledger.settlement_post(
        key="answer-1",
        payer_user_id=cast.outsider.pk,
        fee_micro=CREDIT,
        owner_user_id=cast.owner.pk,
        contributor_shares={mallory.pk: 1},
        pending={mallory.pk: [ledger.PendingPart(contribution.pk, datanet.pk, 1, at)]},
        memo="Answer 1 of garden-model",
    )
    return datanet, mallory, contribution, bond


def test_confirming_harm_rejects_the_rows_forfeits_pending_earnings_and_slashes_the_bond(scene, cast):
    datanet, mallory, contribution, bond = scene
    assert ledger.pending_total(user_id=mallory.pk) == 700_000
    finding = contribution_decide(
        contribution=contribution, curator=cast.owner, verdict="confirmed", reason="Answers are subtly wrong"
    )
    assert finding.verdict == "confirmed" and finding.contributor_id == mallory.pk and finding.value is None
    contribution.refresh_from_db()
    assert contribution.status == Contribution.Status.REJECTED
    assert contribution.message == "Confirmed harmful by a curator: Answers are subtly wrong"
    assert not Record.objects.filter(contribution=contribution, status__in=Record.LIVE).exists()
    assert ledger.pending_total(user_id=mallory.pk) == 0
    forfeit = Transaction.objects.get(kind=Transaction.Kind.EARNING_FORFEIT)
    assert forfeit.memo == (
        f"Earnings forfeited: contribution #{contribution.pk} confirmed harmful: Answers are subtly wrong"
    )
    assert Bond.objects.get(pk=bond.pk).status == Bond.Status.SLASHED
    assert Account.objects.get(role=Account.Role.DATANET_POOL).balance == 700_000 + CREDIT
    assert Account.objects.get(owner=mallory).balance == CREDIT  # the bond came out of it; nothing paid
    # Deciding the same again repeats nothing; a different verdict is refused.
    before = Transaction.objects.count()
    contribution_decide(contribution=contribution, curator=cast.owner, verdict="confirmed", reason="again")
    assert Transaction.objects.count() == before
    with pytest.raises(FindingError, match="already decided on: confirmed harmful") as refused:
        contribution_decide(contribution=contribution, curator=cast.owner, verdict="dismissed", reason="oops")
    assert refused.value.status == 409
    (rep,) = datanet_reputations(datanet=datanet)
    assert (rep.username, rep.accepted, rep.rejected, rep.confirmed) == ("mallory", 0, 4, 1)
    assert (
        rep.score == reputation_score(accepted=0, rejected=4, credited=0, confirmed=1) == 16 and rep.low
    )  # 50 - 4.2 - 30
    ledger_verify()


def test_bad_decisions_are_refused_and_write_nothing(scene, cast):
    datanet, mallory, contribution, bond = scene
    for kwargs, message in [
        ({"curator": cast.outsider, "verdict": "confirmed", "reason": "x"}, "Only the datanet's owner and curators"),
        ({"curator": cast.owner, "verdict": "confirmed", "reason": "  "}, "Say why"),
        ({"curator": cast.owner, "verdict": "maybe", "reason": "x"}, "either confirmed or dismissed"),
    ]:
        with pytest.raises(FindingError, match=message):
            contribution_decide(contribution=contribution, **kwargs)
    assert not ContributionFinding.objects.exists()
    assert not Transaction.objects.filter(kind=Transaction.Kind.EARNING_FORFEIT).exists()
    assert Bond.objects.get(pk=bond.pk).status == Bond.Status.HELD


def test_dismissing_the_flag_releases_what_waited_only_for_it(scene, cast):
    datanet, mallory, contribution, bond = scene
    datanets.datanet_update(datanet=datanet, actor=cast.owner, holding_days=0)
    contribution_decide(contribution=contribution, curator=cast.owner, verdict="dismissed", reason="Checked: fine")
    assert ledger.pending_total(user_id=mallory.pk) == 0
    assert PendingEarning.objects.get().status == PendingEarning.Status.RELEASED
    assert Bond.objects.get(pk=bond.pk).status == Bond.Status.HELD
    (rep,) = datanet_reputations(datanet=datanet)
    assert (rep.accepted, rep.confirmed, rep.score) == (
        4,
        0,
        reputation_score(accepted=4, rejected=0, credited=0, confirmed=0),
    )
    assert rep.score == 54 and not rep.low  # 50 + 25 * 1 * 4/24, rounded
    ledger_verify()


def test_new_contributors_start_neutral():
    assert reputation_score(accepted=0, rejected=0, credited=0, confirmed=0) == 50
    assert reputation_score(accepted=80, rejected=0, credited=30, confirmed=0) == 89  # 50 + 20 + 18.75


def test_holding_terms_are_checked_before_any_write(cast):
    datanet = datanets.datanet_create(owner=cast.owner, name="G", kind="instruction", summary="s")
    for fields in ({"holding_days": 400}, {"holding_days": -1}, {"bond_micro": -5}, {"holding_days": "7"}):
        with pytest.raises(datanets.DatanetError, match="must be a whole number"):
            datanets.datanet_update(datanet=datanet, actor=cast.owner, **fields)
    datanet.refresh_from_db()
    assert (datanet.holding_days, datanet.bond_micro) == (0, 0)


def test_the_curator_sees_reputation_and_confirms_a_flag_and_the_contributor_sees_it_in_the_wallet(scene, cast, client):
    datanet, mallory, contribution, bond = scene
    client.force_login(mallory)
    page = client.get("/wallet/").content.decode()
    assert "Earnings under review" in page
    available = (timezone.now() + timedelta(days=7)).strftime("%-d %B %Y")
    assert f"Available on {available}" in page and "0.70" in page
    client.force_login(cast.owner)
    page = client.get(f"/attribution/datanets/{datanet.slug}/").content.decode()
    assert 'id="reputation"' in page and "mallory" in page
    response = client.post(
        f"/attribution/datanets/{datanet.slug}/contributions/{contribution.pk}/decide/",
        {"verdict": "confirmed", "reason": "Poisoned answers"},
    )
    assert response.status_code == 302
    page = client.get(f"/attribution/datanets/{datanet.slug}/").content.decode()
    assert "Confirmed harmful: its rows leave the next version" in page
    client.force_login(mallory)
    page = client.get("/wallet/").content.decode()
    assert "confirmed harmful: Poisoned answers" in page and "Forfeited on" in page
    client.force_login(cast.outsider)
    response = client.post(
        f"/attribution/datanets/{datanet.slug}/contributions/{contribution.pk}/decide/",
        {"verdict": "dismissed", "reason": "no"},
    )
    assert response.status_code == 302
    assert ContributionFinding.objects.get().verdict == "confirmed"


def test_the_api_shows_reputation_to_curators_takes_a_verdict_and_the_wallet_shows_pending(scene, cast, api_client):
    datanet, mallory, contribution, bond = scene
    api_client.force_authenticate(mallory)
    balance = api_client.get("/api/v1/ledger/balance/").json()
    assert balance["earnings_pending"] == "0.700000" and balance["available"] == "1.000000"
    assert balance["earnings_next_release_at"] is not None
    assert api_client.get(f"/api/v1/datanets/{datanet.slug}/reputation/").status_code == 403
    refused = api_client.post(
        f"/api/v1/contributions/{contribution.pk}/finding/", {"verdict": "dismissed", "reason": "mine"}, format="json"
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_allowed"
    api_client.force_authenticate(cast.owner)
    rows = api_client.get(f"/api/v1/datanets/{datanet.slug}/reputation/").json()
    assert rows == [{"username": "mallory", "score": 54, "low": False, "accepted": 4, "rejected": 0, "credited": 0,
                     "flagged": 0, "confirmed": 0}]  # fmt: skip
    bad = api_client.post(f"/api/v1/contributions/{contribution.pk}/finding/", {"verdict": "yes"}, format="json")
    assert bad.status_code == 400 and set(bad.json()["error"]["details"]) == {"verdict", "reason"}
    done = api_client.post(
        f"/api/v1/contributions/{contribution.pk}/finding/", {"verdict": "confirmed", "reason": "Poison"}, format="json"
    )
    assert done.status_code == 201
    assert done["Location"] == f"http://testserver/api/v1/contributions/{contribution.pk}/"
    assert {k: done.json()[k] for k in ("contribution_id", "verdict", "reason", "curator")} == {
        "contribution_id": contribution.pk, "verdict": "confirmed", "reason": "Poison", "curator": "owner"
    }  # fmt: skip
    clash = api_client.post(
        f"/api/v1/contributions/{contribution.pk}/finding/", {"verdict": "dismissed", "reason": "x"}, format="json"
    )
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "already_decided"
    assert api_client.get(f"/api/v1/datanets/{datanet.slug}/reputation/").json()[0]["confirmed"] == 1
    api_client.force_authenticate(mallory)
    assert api_client.get("/api/v1/ledger/balance/").json()["earnings_pending"] == "0.000000"


def test_the_api_sets_the_holding_period_and_the_bond(cast, api_client):
    datanet = datanets.datanet_create(owner=cast.owner, name="Api terms", kind="instruction", summary="s")
    api_client.force_authenticate(cast.owner)
    response = api_client.patch(f"/api/v1/datanets/{datanet.slug}/", {"holding_days": 14, "bond": "2.5"}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["holding_days"], response.json()["bond"]) == (14, "2.500000")
    bad = api_client.patch(f"/api/v1/datanets/{datanet.slug}/", {"holding_days": 900, "bond": "-1"}, format="json")
    assert bad.status_code == 400 and set(bad.json()["error"]["details"]) == {"holding_days", "bond"}
    datanet.refresh_from_db()
    assert (datanet.holding_days, datanet.bond_micro) == (14, 2_500_000)


def test_the_review_queue_lists_the_lowest_reputation_first(scene, cast, client):
    datanet, mallory, contribution, bond = scene
    contribution_decide(contribution=contribution, curator=cast.owner, verdict="confirmed", reason="Poison")
    datanets.datanet_update(datanet=datanet, actor=cast.owner, policy=Datanet.Policy.APPROVAL)
    newbie = UserFactory(username="newbie")
    rows = [{"instruction": f"What grows well in pot {n}?", "output": f"Herbs grow well in pot {n}."} for n in (1, 2)]
    mine = [{"instruction": "Which beans climb?", "output": "Runner beans climb."}]
    for user, data, name in ((mallory, mine, "m2.jsonl"), (newbie, rows, "n.jsonl")):
        made = datanets.contribution_create(datanet=datanet, contributor=user, upload=upload(name, jsonl(data)))
        assert datanets.contribution_ingest(contribution_id=made.pk).status == Contribution.Status.NEEDS_REVIEW
    client.force_login(cast.owner)
    page = client.get(f"/datanets/{datanet.slug}/review/").content.decode()
    assert page.index('by mallory · reputation <strong class="bad">16 (low)</strong>') < page.index(
        "by newbie · reputation 50"
    )


def test_the_datanets_pool_shows_its_forfeits_and_slashes_to_curators_on_the_page_and_in_the_api(
    scene, cast, client, api_client
):
    datanet, mallory, contribution, bond = scene
    client.force_login(cast.owner)
    page = client.get(f"/datanets/{datanet.slug}/").content.decode()
    assert 'id="pool"' in page and "Nothing has been forfeited here yet." in page
    contribution_decide(contribution=contribution, curator=cast.owner, verdict="confirmed", reason="Poisoned")
    assert Contribution.objects.get(pk=contribution.pk).rejected_as == "harmful"
    page = client.get(f"/datanets/{datanet.slug}/").content.decode()
    assert (
        'This datanet\'s pool: <strong><span class="amount" title="1.700000 credits">1.70</span> credits</strong>'
        in page
    )
    assert "kept for this datanet&#x27;s curation. Nothing is paid out of the pool yet" in page
    assert '<span class="amount" title="0.700000 credits">0.70</span> credits from 1 forfeited earning ·' in page
    assert '<span class="amount" title="1.000000 credits">1.00</span> credits from 1 forfeited bond.' in page
    assert f'<a href="/datanets/contributions/{contribution.pk}/">#{contribution.pk}</a>' in page
    for who in (mallory, cast.outsider):  # not curators: neither the section nor the API
        client.force_login(who)
        assert 'id="pool"' not in client.get(f"/datanets/{datanet.slug}/").content.decode()
        api_client.force_authenticate(who)
        refused = api_client.get(f"/api/v1/datanets/{datanet.slug}/pool/")
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == "Only the datanet's owner and curators see its pool."
    api_client.force_authenticate(cast.owner)
    assert api_client.get("/api/v1/datanets/no-such-datanet/pool/").status_code == 404
    body = api_client.get(f"/api/v1/datanets/{datanet.slug}/pool/").json()
    assert {k: v for k, v in body.items() if k not in ("entries", "purpose")} == {
        "datanet": datanet.slug, "currency": "CRD", "balance": "1.700000", "forfeited": "0.700000", "forfeits": 1,
        "slashed": "1.000000", "slashes": 1,
    }  # fmt: skip
    assert [(e["kind"], e["amount"], e["contribution_id"], e["reason"]) for e in body["entries"]] == [
        ("bond_slash", "1.000000", contribution.pk, f"contribution #{contribution.pk} confirmed harmful: Poisoned"),
        ("earning_forfeit", "0.700000", contribution.pk, f"contribution #{contribution.pk} confirmed harmful: Poisoned"),
    ]  # fmt: skip
    assert body["purpose"].startswith("Money forfeited by uploads a curator confirmed harmful")
    ledger_verify()
