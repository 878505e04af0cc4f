"""Pending earnings and bonds: a settlement pays the held parts into the earnings-pending shard, a sweep releases
them when their date comes, a forfeit sends them to the pool; bonds are held, returned or slashed. Every step is a
ledger transaction with its own key; release and forfeit (return and slash) race safely on PostgreSQL."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from ledger.models import Account, Bond, PendingEarning, Transaction
from ledger.services import (
    BondNotHeld,
    EarningNotPending,
    InsufficientFunds,
    InvalidRequest,
    PendingPart,
    bond_post,
    bond_return,
    bond_slash,
    credit_grant,
    earning_forfeit,
    earning_release,
    earnings_forfeit_contribution,
    earnings_release_due,
    hold_create,
    pending_total,
    settlement_post,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, postgres_only, snapshot, wallet_balance

pytestmark = pytest.mark.django_db


def _settle(people, key="s1", *, days=7, fee=CREDIT, pending=None):
    payer, owner, (c1, c2) = people
    at = timezone.now() + timedelta(days=days)
    if pending is None:
        pending = {
            c1.pk: [PendingPart(contribution_id=11, datanet_id=5, weight=1, available_at=at)],
            c2.pk: [
                PendingPart(contribution_id=21, datanet_id=5, weight=1, available_at=at),
                PendingPart(contribution_id=22, datanet_id=6, weight=1, available_at=None),
            ],
        }
    return settlement_post(
        key=key,
        payer_user_id=payer.pk,
        fee_micro=fee,
        owner_user_id=owner.pk,
        contributor_shares={c1.pk: 1, c2.pk: 1},
        pending=pending,
    )


def test_held_parts_arrive_pending_and_the_rest_in_the_wallet(people):
    payer, owner, (c1, c2) = people
    tx = _settle(people)
    # 1 credit: owner 0.2, platform 0.1, contributors 0.35 each; c2's part is half held (datanet 5), half not (6).
    assert wallet_balance(c1) == 0
    assert wallet_balance(c2) == 175_000
    assert pending_total(user_id=c1.pk) == 350_000 and pending_total(user_id=c2.pk) == 175_000
    earnings = list(PendingEarning.objects.order_by("contribution_id").values_list("contribution_id", "amount"))
    assert earnings == [(11, 350_000), (21, 175_000)]
    pending = Account.objects.get(role=Account.Role.EARNINGS_PENDING)
    assert pending.balance == 525_000
    held = tx.metadata["settlement"]["pending"]
    assert [(p["user_id"], p["contribution_id"], p["amount"]) for p in held] == [(c1.pk, 11, 350_000),
                                                                                 (c2.pk, 21, 175_000)]  # fmt: skip
    # The split record is unchanged: each contributor's amount is what they earned, held or not.
    assert tx.metadata["settlement"]["split"]["contributors"] == {str(c1.pk): 350_000, str(c2.pk): 350_000}
    ledger_verify()


def test_a_replay_returns_the_first_settlement_even_with_another_holding_date(people):
    first = _settle(people, days=7)
    before = snapshot()
    again = _settle(people, days=30)
    assert again.pk == first.pk and snapshot() == before
    assert PendingEarning.objects.count() == 2


def test_the_sweep_releases_only_what_is_due_and_a_replay_releases_nothing_twice(people):
    payer, owner, (c1, c2) = people
    _settle(people, "early", days=1)
    _settle(people, "late", days=10)
    assert earnings_release_due(now=timezone.now()) == []
    released = earnings_release_due(now=timezone.now() + timedelta(days=2))
    assert len(released) == 2
    assert wallet_balance(c1) == 350_000 and wallet_balance(c2) == 175_000 * 3
    assert pending_total(user_id=c1.pk) == 350_000
    tx = Transaction.objects.filter(kind=Transaction.Kind.EARNING_RELEASE).order_by("seq").first()
    assert tx.memo == "Earnings became available after the review period"
    key = PendingEarning.objects.get(pk=released[0]).key
    before = snapshot()
    assert earning_release(earning_key=key).pk == PendingEarning.objects.get(pk=released[0]).close_tx_id
    assert snapshot() == before
    assert earnings_release_due(now=timezone.now() + timedelta(days=2)) == []
    ledger_verify()


def test_a_forfeit_needs_a_reason_goes_to_the_pool_and_cannot_then_be_released(people):
    payer, owner, (c1, c2) = people
    _settle(people)
    key = PendingEarning.objects.get(contribution_id=11).key
    before = snapshot()
    with pytest.raises(InvalidRequest, match="Say why"):
        earning_forfeit(earning_key=key, reason="  ")
    assert snapshot() == before
    tx = earning_forfeit(earning_key=key, reason="contribution #11 confirmed harmful: poisoned answers")
    assert tx.kind == Transaction.Kind.EARNING_FORFEIT
    assert tx.memo == "Earnings forfeited: contribution #11 confirmed harmful: poisoned answers"
    assert tx.metadata["contribution_id"] == 11 and tx.metadata["datanet_id"] == 5
    assert Account.objects.get(role=Account.Role.DATANET_POOL).balance == 350_000
    earning = PendingEarning.objects.get(contribution_id=11)
    assert earning.status == PendingEarning.Status.FORFEITED and earning.close_tx_id == tx.pk
    with pytest.raises(EarningNotPending, match="already forfeited"):
        earning_release(earning_key=key)
    assert earnings_release_due(now=timezone.now() + timedelta(days=30)) == [
        PendingEarning.objects.get(contribution_id=21).pk
    ]
    assert wallet_balance(c1) == 0
    ledger_verify()


def test_forfeiting_a_contribution_leaves_released_earnings_alone(people):
    payer, owner, (c1, c2) = people
    _settle(people, "a", days=1)
    earnings_release_due(now=timezone.now() + timedelta(days=2))
    _settle(people, "b", days=5)
    done = earnings_forfeit_contribution(contribution_id=11, reason="confirmed harmful")
    assert len(done) == 1
    assert wallet_balance(c1) == 350_000  # the released part stays
    assert list(PendingEarning.objects.filter(contribution_id=11).order_by("pk").values_list("status", flat=True)) == [
        "released",
        "forfeited",
    ]
    assert earnings_forfeit_contribution(contribution_id=11, reason="confirmed harmful") == []
    ledger_verify()


def test_a_settlement_from_a_hold_with_held_parts_closes_the_hold(people):
    payer, owner, (c1, c2) = people
    hold_create(key="h", payer_user_id=payer.pk, amount_micro=2 * CREDIT)
    at = timezone.now() + timedelta(days=3)
    tx = settlement_post(
        key="sh",
        hold_key="h",
        fee_micro=CREDIT,
        owner_user_id=owner.pk,
        contributor_shares={c1.pk: 1},
        pending={c1.pk: [PendingPart(contribution_id=1, datanet_id=1, weight=1, available_at=at)]},
    )
    assert tx.kind == Transaction.Kind.SETTLEMENT
    assert pending_total(user_id=c1.pk) == 700_000 and wallet_balance(c1) == 0
    assert wallet_balance(payer) == 9 * CREDIT
    ledger_verify()


def test_bonds_are_held_returned_or_slashed_and_a_short_wallet_is_refused(people, fund):
    payer, owner, (c1, c2) = people
    before = snapshot()
    with pytest.raises(InsufficientFunds, match="Not enough credit"):
        bond_post(key="b0", user_id=c1.pk, amount_micro=CREDIT, datanet_id=5, contribution_id=1)
    assert not Bond.objects.exists() and wallet_balance(c1) == 0
    assert Transaction.objects.filter(status=Transaction.Status.REJECTED).count() == 1
    assert snapshot()[1] == before[1]  # a recorded refusal: no postings
    assert {pk: b for pk, b in snapshot()[2] if b} == {pk: b for pk, b in before[2] if b}  # no balance moved
    fund(c1, 3)
    first = bond_post(key="b1", user_id=c1.pk, amount_micro=CREDIT, datanet_id=5, contribution_id=1)
    assert bond_post(key="b1", user_id=c1.pk, amount_micro=CREDIT, datanet_id=5, contribution_id=1).pk == first.pk
    second = bond_post(key="b2", user_id=c1.pk, amount_micro=CREDIT, datanet_id=5, contribution_id=2)
    assert wallet_balance(c1) == CREDIT
    assert Account.objects.get(role=Account.Role.BONDS_HELD).balance == 2 * CREDIT
    bond_return(bond_key=first.key)
    with pytest.raises(InvalidRequest, match="Say why"):
        bond_slash(bond_key=second.key, reason="")
    slash = bond_slash(bond_key=second.key, reason="rejected as spam")
    assert slash.memo == "Bond forfeited: rejected as spam"
    with pytest.raises(BondNotHeld, match="already returned"):
        bond_slash(bond_key=first.key, reason="too late")
    assert wallet_balance(c1) == 2 * CREDIT
    assert Account.objects.get(role=Account.Role.DATANET_POOL).balance == CREDIT
    ledger_verify()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_releases_and_forfeits_racing_close_each_earning_once_and_verify_stays_clean(settings):
    settings.MF_LEDGER_CHECKPOINT_EVERY = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    staff = UserFactory(username="race-staff", is_staff=True, permissions=["ledger.grant_credit"])
    payer, owner = UserFactory(username="race-payer"), UserFactory(username="race-owner")
    contributors = [UserFactory(username=f"race-c{i}") for i in range(4)]
    credit_grant(user_id=payer.pk, amount_micro=100 * CREDIT, granted_by=staff)
    at = timezone.now() - timedelta(seconds=1)  # already due: the sweep and the forfeits race for every one
    for n in range(12):
        settlement_post(
            key=f"race-{n}",
            payer_user_id=payer.pk,
            fee_micro=CREDIT + n,
            owner_user_id=owner.pk,
            contributor_shares={c.pk: i + 1 for i, c in enumerate(contributors)},
            pending={c.pk: [PendingPart(contribution_id=100 + i, datanet_id=1, weight=1, available_at=at)]
                     for i, c in enumerate(contributors)},
        )  # fmt: skip
    bonds = []
    for i, c in enumerate(contributors):
        credit_grant(user_id=c.pk, amount_micro=5 * CREDIT, granted_by=staff)
        bonds += [bond_post(key=f"rb-{i}-{j}", user_id=c.pk, amount_micro=CREDIT, datanet_id=1).key for j in range(3)]
    keys = list(PendingEarning.objects.values_list("key", flat=True))
    assert len(keys) == 48
    jobs = (
        [("sweep", None)] * 4
        + [("forfeit", 100 + i) for i in range(4)] * 2
        + [("release", k) for k in keys]
        + [("return", k) for k in bonds]
        + [("slash", k) for k in bonds]
    )

    def run(job):
        kind, arg = job
        try:
            if kind == "sweep":
                earnings_release_due()
            elif kind == "forfeit":
                earnings_forfeit_contribution(contribution_id=arg, reason="race")
            elif kind == "release":
                earning_release(earning_key=arg)
            elif kind == "return":
                bond_return(bond_key=arg)
            else:
                bond_slash(bond_key=arg, reason="race")
            return "ok"
        except (EarningNotPending, BondNotHeld):
            return "lost"
        finally:
            connection.close()

    import random

    random.Random(5).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, jobs))
    assert "ok" in outcomes
    assert not PendingEarning.objects.filter(status=PendingEarning.Status.PENDING).exists()
    assert not Bond.objects.filter(status=Bond.Status.HELD).exists()
    for earning in PendingEarning.objects.all():  # closed by exactly one transaction of the right kind
        closing = Transaction.objects.filter(metadata__earning_key=earning.key, status="posted")
        assert closing.count() == 1 and closing.get().pk == earning.close_tx_id
    released = PendingEarning.objects.filter(status="released").aggregate(t=Sum("amount"))["t"] or 0
    forfeited = PendingEarning.objects.filter(status="forfeited").aggregate(t=Sum("amount"))["t"] or 0
    slashed = Bond.objects.filter(status="slashed").aggregate(t=Sum("amount"))["t"] or 0
    assert released + forfeited == PendingEarning.objects.aggregate(t=Sum("amount"))["t"]
    assert Account.objects.get(role=Account.Role.DATANET_POOL).balance == forfeited + slashed
    assert Account.objects.filter(role=Account.Role.EARNINGS_PENDING).aggregate(t=Sum("balance"))["t"] == 0
    ledger_verify()
    call_command("ledger_verify")


def test_staff_release_pending_earnings_and_return_bonds_in_the_admin(people, client, cast, fund):
    payer, owner, (c1, c2) = people
    _settle(people)
    fund(c2, 2)
    bond = bond_post(key="admin-bond", user_id=c2.pk, amount_micro=CREDIT, datanet_id=5, contribution_id=21)
    client.force_login(cast.staff)
    page = client.get("/admin/ledger/pendingearning/")
    assert page.status_code == 200 and "Release now" in page.content.decode()
    earning = PendingEarning.objects.get(contribution_id=11)
    client.post("/admin/ledger/pendingearning/", {"action": "release", "_selected_action": [earning.pk]})
    earning.refresh_from_db()
    assert earning.status == PendingEarning.Status.RELEASED and wallet_balance(c1) == 350_000
    client.post("/admin/ledger/bond/", {"action": "give_back", "_selected_action": [bond.pk]})
    assert Bond.objects.get(pk=bond.pk).status == Bond.Status.RETURNED
    assert client.get("/admin/attribution/contributionfinding/").status_code == 200
    ledger_verify()
