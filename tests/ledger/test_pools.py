"""Datanet pools: each datanet has its own pool account, created on first use, that receives its forfeited earnings
and slashed bonds (each a ledger transaction); `ledger_verify` checks the pools hold exactly those and that each
went to its own datanet's pool; many forfeits and slashes into one pool at once (PostgreSQL) keep it exact."""

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from ledger.models import Account, Bond, PendingEarning, Posting, Transaction
from ledger.selectors import datanet_pool
from ledger.services import (
    InvalidRequest,
    PendingPart,
    bond_post,
    bond_slash,
    credit_grant,
    earning_forfeit,
    earnings_forfeit_contribution,
    settlement_post,
)
from ledger.services.engine import _pool_account
from ledger.verification import LedgerBreach, ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, postgres_only, snapshot

pytestmark = pytest.mark.django_db


def _settle(people, key, *, datanets=(5, 6)):
    """One credit settled; c1's part (0.35) comes from contribution 11 of datanets[0], c2's (0.35) from contribution
    21 of datanets[1], both held for a week."""
    payer, owner, (c1, c2) = people
    at = timezone.now() + timedelta(days=7)
    return settlement_post(
        key=key,
        payer_user_id=payer.pk,
        fee_micro=CREDIT,
        owner_user_id=owner.pk,
        contributor_shares={c1.pk: 1, c2.pk: 1},
        pending={
            c1.pk: [PendingPart(contribution_id=11, datanet_id=datanets[0], weight=1, available_at=at)],
            c2.pk: [PendingPart(contribution_id=21, datanet_id=datanets[1], weight=1, available_at=at)],
        },
    )


def _pool_balance(datanet_id: int) -> int:
    return Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=datanet_id).balance


def test_forfeits_and_slashes_go_to_their_own_datanets_pool(people, fund):
    payer, owner, (c1, c2) = people
    _settle(people, "s1")
    assert not Account.objects.filter(role=Account.Role.DATANET_POOL).exists()  # created on first use
    earnings_forfeit_contribution(contribution_id=11, reason="contribution #11 confirmed harmful: poison")
    earnings_forfeit_contribution(contribution_id=21, reason="contribution #21 confirmed harmful: copies")
    fund(c1, 2)
    bond = bond_post(key="b1", user_id=c1.pk, amount_micro=CREDIT // 2, datanet_id=6, contribution_id=31)
    slash = bond_slash(bond_key=bond.key, reason="contribution #31 rejected as spam")
    assert _pool_balance(5) == 350_000
    assert _pool_balance(6) == 350_000 + CREDIT // 2
    pool6 = Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=6)
    assert str(pool6) == "pool of datanet 6" and pool6.owner_id is None and not pool6.allow_negative
    assert list(Posting.objects.filter(transaction=slash).order_by("amount").values_list("account_id", "amount")) == [
        (bond.held_id, -(CREDIT // 2)),
        (pool6.pk, CREDIT // 2),
    ]
    assert Account.objects.filter(role=Account.Role.DATANET_POOL).count() == 2
    summary = datanet_pool(datanet_id=6)
    assert (summary["balance"], summary["forfeited"], summary["forfeits"], summary["slashed"], summary["slashes"]) == (
        850_000,
        350_000,
        1,
        500_000,
        1,
    )
    assert [(e["kind"], e["amount"], e["contribution_id"]) for e in summary["entries"]] == [
        ("bond_slash", 500_000, 31),
        ("earning_forfeit", 350_000, 21),
    ]
    assert summary["entries"][0]["reason"] == "contribution #31 rejected as spam"
    assert datanet_pool(datanet_id=99) == {
        "datanet_id": 99,
        "balance": 0,
        "forfeited": 0,
        "forfeits": 0,
        "slashed": 0,
        "slashes": 0,
        "entries": [],
    }
    ledger_verify()


def test_a_replayed_forfeit_pays_the_pool_once(people):
    _settle(people, "s1")
    key = PendingEarning.objects.get(contribution_id=11).key
    first = earning_forfeit(earning_key=key, reason="harmful")
    before = snapshot()
    assert earning_forfeit(earning_key=key, reason="harmful").pk == first.pk
    assert snapshot() == before and _pool_balance(5) == 350_000
    ledger_verify()


def test_a_pool_needs_a_datanet_and_there_is_one_per_datanet(people):
    with pytest.raises(InvalidRequest, match="datanet's id"):
        _pool_account(0)
    first = _pool_account(7)
    assert _pool_account(7) == first
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.create(role=Account.Role.DATANET_POOL, datanet_id=7)
    with pytest.raises(IntegrityError), transaction.atomic():  # only pools name a datanet
        Account.objects.create(role=Account.Role.PLATFORM, shard=3, datanet_id=8)
    assert Account.objects.filter(datanet_id__isnull=False).count() == 1


def test_verify_names_a_forfeit_paid_to_another_datanets_pool(people):
    _settle(people, "s1")
    earnings_forfeit_contribution(contribution_id=11, reason="harmful")
    ledger_verify()
    if connection.vendor != "sqlite":
        pytest.skip("the rows are edited by hand to fake the breach, which only SQLite lets a test do")
    PendingEarning.objects.filter(contribution_id=11).update(datanet_id=6)
    with pytest.raises(LedgerBreach, match="of datanet 6 was paid to the pool of datanet 5"):
        ledger_verify()


def test_verify_names_pools_that_hold_more_than_was_forfeited(people):
    _settle(people, "s1")
    earnings_forfeit_contribution(contribution_id=11, reason="harmful")
    if connection.vendor != "sqlite":
        pytest.skip("the rows are edited by hand to fake the breach, which only SQLite lets a test do")
    PendingEarning.objects.filter(contribution_id=11).update(status=PendingEarning.Status.RELEASED)
    with pytest.raises(
        LedgerBreach, match="the datanet pools hold 350000 but forfeited earnings and slashed bonds are 0"
    ):
        ledger_verify()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_forfeits_and_slashes_racing_into_one_new_pool_add_up_exactly(settings):
    """Eight threads forfeit earnings and slash bonds of one datanet at once, starting with no pool account: one
    pool is created, each amount lands once, and the pool's balance is their sum."""
    settings.MF_LEDGER_CHECKPOINT_EVERY = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    staff = UserFactory(username="pool-staff", is_staff=True, permissions=["ledger.grant_credit"])
    payer, owner = UserFactory(username="pool-payer"), UserFactory(username="pool-owner")
    contributors = [UserFactory(username=f"pool-c{i}") for i in range(4)]
    credit_grant(user_id=payer.pk, amount_micro=100 * CREDIT, granted_by=staff)
    at = timezone.now() + timedelta(days=7)
    for n in range(10):
        settlement_post(
            key=f"pool-{n}",
            payer_user_id=payer.pk,
            fee_micro=CREDIT + 7 * n,
            owner_user_id=owner.pk,
            contributor_shares={c.pk: i + 1 for i, c in enumerate(contributors)},
            pending={c.pk: [PendingPart(contribution_id=500 + i, datanet_id=42, weight=1, available_at=at)]
                     for i, c in enumerate(contributors)},
        )  # fmt: skip
    bonds = []
    for i, c in enumerate(contributors):
        credit_grant(user_id=c.pk, amount_micro=5 * CREDIT, granted_by=staff)
        bonds += [
            bond_post(key=f"pb-{i}-{j}", user_id=c.pk, amount_micro=CREDIT // (j + 2), datanet_id=42).key
            for j in range(4)
        ]
    earnings = list(PendingEarning.objects.values_list("key", flat=True))
    assert len(earnings) == 40 and not Account.objects.filter(role=Account.Role.DATANET_POOL).exists()
    jobs = [("forfeit", k) for k in earnings] + [("slash", k) for k in bonds]
    jobs += [("forfeit", k) for k in earnings[::3]] + [("slash", k) for k in bonds[::3]]  # replays racing the first
    random.Random(16).shuffle(jobs)

    def run(job):
        kind, key = job
        try:
            if kind == "forfeit":
                return earning_forfeit(earning_key=key, reason="race: confirmed harmful").pk
            return bond_slash(bond_key=key, reason="race: rejected as spam").pk
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        tx_ids = list(pool.map(run, jobs))
    assert len(set(tx_ids)) == len(earnings) + len(bonds)  # a replay returns the first transaction
    pools = Account.objects.filter(role=Account.Role.DATANET_POOL)
    assert list(pools.values_list("datanet_id", flat=True)) == [42]
    forfeited = PendingEarning.objects.aggregate(t=Sum("amount"))["t"]
    slashed = Bond.objects.aggregate(t=Sum("amount"))["t"]
    assert not PendingEarning.objects.exclude(status=PendingEarning.Status.FORFEITED).exists()
    assert not Bond.objects.exclude(status=Bond.Status.SLASHED).exists()
    assert pools.get().balance == forfeited + slashed
    assert Transaction.objects.filter(kind__in=["earning_forfeit", "bond_slash"]).count() == 56
    summary = datanet_pool(datanet_id=42)
    assert (summary["forfeited"], summary["forfeits"], summary["slashed"], summary["slashes"]) == (
        forfeited,
        40,
        slashed,
        16,
    )
    ledger_verify()
    call_command("ledger_verify")


@postgres_only
def test_postgresql_refuses_moving_a_pool_to_another_datanet(people):
    pool = _pool_account(7)
    with pytest.raises(IntegrityError, match="cannot change owner, role, shard, datanet"), transaction.atomic():
        Account.objects.filter(pk=pool).update(datanet_id=8)
    assert Account.objects.get(pk=pool).datanet_id == 7


def test_staff_see_each_datanets_pool_in_the_admin(people, client, cast):
    _settle(people, "s1")
    earnings_forfeit_contribution(contribution_id=21, reason="harmful")
    client.force_login(cast.staff)
    page = client.get("/admin/ledger/account/", {"role__exact": "datanet_pool"}).content.decode()
    assert '<td class="field-datanet_display">datanet 6</td>' in page and "0.350000" in page
    found = client.get("/admin/ledger/account/", {"q": "6"}).content.decode()
    assert "datanet 6" in found
