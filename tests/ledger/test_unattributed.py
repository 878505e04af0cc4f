"""The unattributed part of a settlement (rule "settle-2" of attribution): cut off the contributors' part first and
paid to the owner, only the rest split by share; older requests (no unattributed part) keep their exact record."""

import random
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum

from ledger.calc.split import SplitError, SplitPolicy, split_fee
from ledger.models import Account, Posting, Transaction
from ledger.services import (
    GRANT_PERMISSION,
    IdempotencyConflict,
    InvalidRequest,
    SettlementRequest,
    account_for_user,
    credit_grant,
    settlement_post,
    settlement_post_many,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, postgres_only, snapshot, wallet_balance

pytestmark = pytest.mark.django_db
TO_OWNER = SplitPolicy(version="settle-2-2026-1", unattributed_to="owner")


def test_the_unattributed_part_is_cut_off_the_contributors_part_and_goes_to_the_owner():
    split = split_fee(1_000_000, TO_OWNER, {1: Fraction(3, 10), 2: Fraction(1, 10)}, Fraction(6, 10))
    # contributors' part 700,000: 420,000 unattributed; 280,000 by 3:1.
    assert (split.owner, split.unattributed, split.platform) == (200_000, 420_000, 100_000)
    assert split.contributors == {1: 210_000, 2: 70_000}
    assert split.owner_total == 620_000
    assert split.owner_total + sum(split.contributors.values()) + split.platform == 1_000_000


def test_nothing_unattributed_pays_the_whole_part_by_share_and_everything_unattributed_pays_nobody():
    assert split_fee(1_000, TO_OWNER, {1: 1, 2: 1}, 0).contributors == {1: 350, 2: 350}
    everything = split_fee(1_000, TO_OWNER, {}, 1)
    assert (everything.contributors, everything.unattributed, everything.owner_total) == ({}, 700, 900)


def test_the_parts_always_add_up_to_the_fee():
    rng = random.Random(7)
    for _ in range(300):
        fee = rng.randint(0, 10**7)
        shares = {uid: Fraction(rng.randint(1, 999), 1000) for uid in rng.sample(range(1, 9), rng.randint(0, 4))}
        u = Fraction(rng.randint(0, 1000), 1000)
        split = split_fee(fee, TO_OWNER, shares, u)
        assert split.owner_total + sum(split.contributors.values()) + split.platform == fee
        assert split.unattributed == pytest.approx(float(u) * fee * 0.7, abs=2)


@pytest.mark.parametrize(
    ("policy", "unattributed", "message"),
    [
        (SplitPolicy(), Fraction(1, 2), "needs a policy that says where it goes"),
        (TO_OWNER, None, "needs a policy that says where it goes"),
        (TO_OWNER, Fraction(3, 2), "between 0 and 1"),
        (TO_OWNER, Fraction(-1, 2), "between 0 and 1"),
    ],
)
def test_an_unattributed_part_without_its_policy_or_out_of_range_is_refused(policy, unattributed, message):
    with pytest.raises(SplitError, match=message):
        split_fee(100, policy, {1: 1}, unattributed)


def test_a_policy_can_send_the_unattributed_part_only_to_the_owner():
    with pytest.raises(SplitError, match="can go to owner only"):
        SplitPolicy(unattributed_to="contributors")


def test_older_policies_keep_their_exact_record():
    assert SplitPolicy().as_dict() == {
        "version": "default-2025-1", "owner_bp": 2_000, "contributors_bp": 7_000, "platform_bp": 1_000,
    }  # fmt: skip
    assert TO_OWNER.as_dict()["unattributed_to"] == "owner"


def _settle(people, key="u1", unattributed="0.25", **extra):
    payer, owner, (c1, c2) = people
    fields = {"policy": TO_OWNER, "unattributed": unattributed, **extra}
    return settlement_post(
        key=key, fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={c1.pk: "0.5", c2.pk: "0.25"},
        payer_user_id=payer.pk, **fields,
    )  # fmt: skip


def test_a_settlement_records_the_unattributed_part_and_pays_it_to_the_owner(people):
    payer, owner, (c1, c2) = people
    tx = _settle(people)
    record = tx.metadata["settlement"]
    assert record["unattributed"] == "0.25" and record["policy"]["unattributed_to"] == "owner"
    # 700,000: 175,000 unattributed, 525,000 by 2:1.
    assert record["split"] == {
        "owner": 375_000, "contributors": {str(c1.pk): 350_000, str(c2.pk): 175_000}, "platform": 100_000,
        "unattributed": 175_000,
    }  # fmt: skip
    assert (wallet_balance(owner), wallet_balance(c1), wallet_balance(c2)) == (375_000, 350_000, 175_000)
    assert wallet_balance(payer) == 9 * CREDIT
    assert _settle(people).pk == tx.pk  # a replay returns the same transaction
    assert Transaction.objects.filter(idempotency_key="u1").count() == 1
    ledger_verify()


def test_a_replay_with_another_unattributed_part_is_a_conflict_and_writes_nothing(people):
    _settle(people)
    before = snapshot()
    with pytest.raises(IdempotencyConflict):
        _settle(people, unattributed="0.5")
    assert snapshot() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"unattributed": "2"}, "between 0 and 1"),
        ({"unattributed": "lots"}, "is not a number"),
        ({"policy": None}, "needs a policy that says where it goes"),
    ],
)
def test_a_bad_unattributed_part_is_refused_and_nothing_is_written(people, extra, message):
    before = snapshot()
    with pytest.raises(InvalidRequest, match=message):
        _settle(people, **extra)
    assert snapshot() == before


def test_a_settlement_without_an_unattributed_part_has_the_record_it_always_had(people):
    payer, owner, (c1, c2) = people
    tx = settlement_post(
        key="old", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={c1.pk: 2, c2.pk: 1},
        payer_user_id=payer.pk,
    )  # fmt: skip
    record = tx.metadata["settlement"]
    assert "unattributed" not in record and "unattributed" not in record["split"]
    assert "unattributed_to" not in record["policy"]
    assert record["split"]["contributors"] == {str(c1.pk): 466_667, str(c2.pk): 233_333}


@postgres_only
def test_the_fast_path_posts_what_the_general_path_would(people, settings):
    payer, owner, (c1, c2) = people
    fast = _settle(people, key="fast")
    settings.MF_LEDGER_FAST_SETTLEMENT = False
    slow = _settle(people, key="slow")

    def legs(tx):
        return sorted(Posting.objects.filter(transaction=tx).values_list("account__owner_id", "amount"), key=str)

    assert legs(fast) == legs(slow)
    assert fast.metadata["settlement"] == slow.metadata["settlement"]
    ledger_verify()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_settlements_with_unattributed_parts_conserve_every_micro_unit(settings):
    """8 threads post batches and single settlements with unattributed parts (and replays of each other's keys)
    over the same owners and contributors: every key is settled once, each split adds up, the chain verifies."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_LEDGER_CHECKPOINT_EVERY = 0
    settings.MF_LEDGER_SHARDS = 4
    staff = UserFactory(username="ua-staff", is_staff=True, permissions=[GRANT_PERMISSION])
    payers = [UserFactory(username=f"ua-payer{i}") for i in range(4)]
    owners = [UserFactory(username=f"ua-owner{i}") for i in range(2)]
    contributors = [UserFactory(username=f"ua-contrib{i}") for i in range(4)]
    for payer in payers:
        credit_grant(user_id=payer.pk, amount_micro=100 * CREDIT, granted_by=staff)
    for user in (*owners, *contributors):
        account_for_user(user_id=user.pk)

    def request(n: int) -> SettlementRequest:
        rng = random.Random(n)  # the same key always carries the same request (replays across threads)
        return SettlementRequest(
            key=f"ua-{n}", fee_micro=rng.randint(1, CREDIT), owner_user_id=rng.choice(owners).pk,
            contributor_shares={c.pk: rng.randint(1, 9) for c in rng.sample(contributors, 2)},
            payer_user_id=payers[n % 4].pk, policy=TO_OWNER, unattributed=f"{rng.randint(0, 100) / 100:.2f}",
        )  # fmt: skip

    def run(worker: int) -> list:
        try:
            keys = list(range(40))
            random.Random(worker).shuffle(keys)
            out = settlement_post_many(requests=[request(n) for n in keys[:20]])
            out += [settlement_post(**request(n).__dict__) for n in keys[20:]]
            return out
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [o for part in pool.map(run, range(8)) for o in part]
    assert all(isinstance(o, Transaction) for o in results), results
    assert Transaction.objects.filter(idempotency_key__startswith="ua-").count() == 40
    for tx in Transaction.objects.filter(idempotency_key__startswith="ua-"):
        split = tx.metadata["settlement"]["split"]
        assert (
            split["owner"] + sum(split["contributors"].values()) + split["platform"]
            == tx.metadata["settlement"]["fee_micro"]
        )
    assert Account.objects.aggregate(t=Sum("balance"))["t"] == 0
    assert not Account.objects.filter(role=Account.Role.USER, balance__lt=0).exists()
    ledger_verify()
    call_command("ledger_verify", "--no-checkpoint")
