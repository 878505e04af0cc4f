"""Ledger services on the test database (SQLite locally, PostgreSQL in CI): transfers, idempotency, grants,
holds, settlement, withdrawals, checkpoints. Each refusal asserts the error and that nothing was written."""

from fractions import Fraction

import pytest
from django.db import OperationalError
from django.test import override_settings

from ledger.calc.split import SplitPolicy
from ledger.models import Account, Checkpoint, Hold, Posting, Transaction, Withdrawal
from ledger.services import (
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotAllowed,
    PolicyOutOfBounds,
    WithdrawalNotOpen,
    account_for_user,
    checkpoint_create,
    credit_grant,
    grant_signup_credit,
    hold_create,
    hold_release,
    settlement_post,
    transfer,
    withdrawal_cancel,
    withdrawal_complete,
    withdrawal_request,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, snapshot, wallet_balance

pytestmark = pytest.mark.django_db


def platform_total() -> int:
    return sum(Account.objects.filter(role=Account.Role.PLATFORM).values_list("balance", flat=True))


def test_grant_and_transfer_move_exact_amounts(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    tx = transfer(key="t1", legs=[(a.pk, -1_250_000), (b.pk, 1_250_000)], memo="lunch")
    assert tx.status == "posted"
    assert sorted(Posting.objects.filter(transaction=tx).values_list("account_id", "amount")) == [
        (a.pk, -1_250_000),
        (b.pk, 1_250_000),
    ]
    assert wallet_balance(cast.owner) == 3_750_000
    assert wallet_balance(cast.teammate) == 1_250_000
    ledger_verify()


def test_replaying_a_key_returns_the_same_transaction_and_changes_nothing(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    first = transfer(key="t1", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])
    before = snapshot()
    again = transfer(key="t1", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])
    assert again.pk == first.pk
    assert snapshot() == before


def test_same_key_different_request_is_a_conflict_and_writes_nothing(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    transfer(key="t1", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])
    before = snapshot()
    with pytest.raises(IdempotencyConflict, match="already used for a different request"):
        transfer(key="t1", legs=[(a.pk, -2 * CREDIT), (b.pk, 2 * CREDIT)])
    assert snapshot() == before


def test_lack_of_funds_is_recorded_and_the_key_stays_failed(cast, fund):
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    with pytest.raises(InsufficientFunds, match=r"has 0.000000 credits and this needs 2.000000") as info:
        transfer(key="t1", legs=[(a.pk, -2 * CREDIT), (b.pk, 2 * CREDIT)])
    rejected = info.value.transaction
    assert Transaction.objects.get(pk=rejected.pk).status == "rejected"
    assert not Posting.objects.filter(transaction=rejected).exists()
    fund(cast.owner, 5)  # even with credit now, the same key fails the same way
    before = snapshot()
    with pytest.raises(InsufficientFunds) as again:
        transfer(key="t1", legs=[(a.pk, -2 * CREDIT), (b.pk, 2 * CREDIT)])
    assert again.value.transaction.pk == rejected.pk
    assert snapshot() == before
    assert wallet_balance(cast.owner) == 5 * CREDIT
    ledger_verify()


@pytest.mark.parametrize(
    ("legs", "message"),
    [
        ([(0, -5), (1, 4)], "sum to zero, not -1"),
        ([(0, -5), (0, 5)], "at least two different accounts"),
        ([(0, -5.0), (1, 5.0)], "whole micro-units"),
    ],
)
def test_bad_legs_are_refused_and_nothing_is_written(cast, fund, legs, message):
    fund(cast.owner, 5)
    ids = [account_for_user(user_id=cast.owner.pk).pk, account_for_user(user_id=cast.teammate.pk).pk]
    before = snapshot()
    with pytest.raises(InvalidRequest, match=message):
        transfer(key="bad", legs=[(ids[i], amount) for i, amount in legs])
    assert snapshot() == before


def test_unknown_account_is_refused(cast):
    a = account_for_user(user_id=cast.owner.pk)
    before = snapshot()
    with pytest.raises(InvalidRequest, match="No ledger account with id"):
        transfer(key="x", legs=[(a.pk, -1), (a.pk + 999, 1)])
    assert snapshot() == before


def test_only_staff_grant(cast):
    before = snapshot()
    with pytest.raises(NotAllowed, match="Only staff"):
        credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=cast.outsider)
    assert snapshot() == before


@override_settings(MF_SIGNUP_GRANT_MICRO=7_000_000)
def test_signup_grant_once_per_user(db):
    user = UserFactory()
    first = grant_signup_credit(user=user)
    assert grant_signup_credit(user=user).pk == first.pk
    assert wallet_balance(user) == 7_000_000


def test_signup_through_accounts_service_grants_credit(db, settings):
    from accounts.services import user_signup

    settings.MF_SIGNUP_GRANT_MICRO = 3_000_000
    user = user_signup(username="newbie", email="n@example.com", password="a-long-password-9")
    assert wallet_balance(user) == 3_000_000


@override_settings(MF_SIGNUP_GRANT_MICRO=0)
def test_signup_grant_can_be_turned_off(db):
    user = UserFactory()
    assert grant_signup_credit(user=user) is None
    assert wallet_balance(user) == 0


def test_settlement_pays_owner_contributors_and_platform_exactly(cast, fund):
    fund(cast.outsider, 10)
    c1, c2, c3 = UserFactory(), UserFactory(), UserFactory()
    tx = settlement_post(
        key="inference:1",
        payer_user_id=cast.outsider.pk,
        fee_micro=1_000_001,
        owner_user_id=cast.owner.pk,
        contributor_shares={c1.pk: 0.5, c2.pk: 0.25, c3.pk: 0.25},
        metadata={"model": "law-helper", "datanet": "contracts"},
    )
    assert wallet_balance(cast.outsider) == 10 * CREDIT - 1_000_001
    # 1,000,001 by 2000/7000/1000 bp: exact parts 200000.2 / 700000.7 / 100000.1 -> the leftover micro-unit goes
    # to the largest remainder (contributors).
    assert wallet_balance(cast.owner) == 200_000
    assert platform_total() == 100_000
    assert (wallet_balance(c1), wallet_balance(c2), wallet_balance(c3)) == (350_001, 175_000, 175_000)
    assert sum(Posting.objects.filter(transaction_id=tx.pk).values_list("amount", flat=True)) == 0
    meta = Transaction.objects.get(pk=tx.pk).metadata
    assert meta["model"] == "law-helper"
    assert meta["settlement"]["policy"] == {
        "version": "default-2025-1",
        "owner_bp": 2000,
        "contributors_bp": 7000,
        "platform_bp": 1000,
    }
    assert meta["settlement"]["shares"] == {str(c1.pk): "0.5", str(c2.pk): "0.25", str(c3.pk): "0.25"}
    assert meta["settlement"]["split"]["contributors"] == {
        str(c1.pk): 350_001,
        str(c2.pk): 175_000,
        str(c3.pk): 175_000,
    }
    assert meta["settlement"]["fallback_reason"] is None
    ledger_verify()


def test_settlement_fallback_is_recorded(cast, fund):
    fund(cast.outsider, 1)
    c1 = UserFactory()
    tx = settlement_post(
        key="inference:2",
        payer_user_id=cast.outsider.pk,
        fee_micro=1000,
        owner_user_id=cast.owner.pk,
        contributor_shares={c1.pk: Fraction(3, 1)},
        fallback_reason="attribution failed: split by training rows",
    )
    assert tx.metadata["settlement"]["fallback_reason"] == "attribution failed: split by training rows"
    assert wallet_balance(c1) == 700


def test_settlement_without_contributors_pays_the_owner_and_says_so(cast, fund):
    fund(cast.outsider, 1)
    tx = settlement_post(
        key="inference:3",
        payer_user_id=cast.outsider.pk,
        fee_micro=1000,
        owner_user_id=cast.owner.pk,
        contributor_shares={},
    )
    assert wallet_balance(cast.owner) == 900
    assert tx.metadata["settlement"]["fallback_reason"] == "no contributors"


def test_settlement_policy_outside_operator_bounds_is_refused(cast, fund):
    fund(cast.outsider, 1)
    before = snapshot()
    with pytest.raises(PolicyOutOfBounds, match="owner's part may be at most 50%"):
        settlement_post(
            key="inference:4",
            payer_user_id=cast.outsider.pk,
            fee_micro=1000,
            owner_user_id=cast.owner.pk,
            contributor_shares={},
            policy=SplitPolicy(owner_bp=6000, contributors_bp=3000, platform_bp=1000, version="x"),
        )
    assert snapshot() == before


def test_settlement_lacking_funds_is_refused(cast):
    with pytest.raises(InsufficientFunds):
        settlement_post(
            key="inference:5",
            payer_user_id=cast.outsider.pk,
            fee_micro=1000,
            owner_user_id=cast.owner.pk,
            contributor_shares={cast.teammate.pk: 1},
        )
    assert wallet_balance(cast.owner) == 0


def test_hold_then_settle_refunds_the_rest_and_cannot_settle_twice(cast, fund):
    fund(cast.outsider, 2)
    hold = hold_create(key="inference:9", payer_user_id=cast.outsider.pk, amount_micro=CREDIT)
    assert hold.status == "held" and hold.amount == CREDIT
    assert wallet_balance(cast.outsider) == CREDIT
    assert hold_create(key="inference:9", payer_user_id=cast.outsider.pk, amount_micro=CREDIT).pk == hold.pk
    tx = settlement_post(
        key="settle:9",
        hold_key="inference:9",
        fee_micro=600_000,
        owner_user_id=cast.owner.pk,
        contributor_shares={cast.teammate.pk: 1},
    )
    assert wallet_balance(cast.outsider) == CREDIT + 400_000
    assert wallet_balance(cast.owner) == 120_000
    assert wallet_balance(cast.teammate) == 420_000
    assert Hold.objects.get(pk=hold.pk).status == "settled"
    # replay is fine, a second settlement of the same hold under another key is not
    assert (
        settlement_post(
            key="settle:9",
            hold_key="inference:9",
            fee_micro=600_000,
            owner_user_id=cast.owner.pk,
            contributor_shares={cast.teammate.pk: 1},
        ).pk
        == tx.pk
    )
    before = snapshot()
    with pytest.raises(HoldNotOpen, match="already settled"):
        settlement_post(
            key="settle:9b",
            hold_key="inference:9",
            fee_micro=600_000,
            owner_user_id=cast.owner.pk,
            contributor_shares={},
        )
    with pytest.raises(HoldNotOpen, match="already settled"):
        hold_release(hold_key="inference:9")
    assert snapshot() == before
    ledger_verify()


def test_a_request_that_lost_the_race_for_its_hold_is_a_replay_not_an_error(cast, fund, monkeypatch):
    """Two settlements with one key: the second read no transaction under the key, then waited for the hold's lock
    while the first settled it and committed. It must answer the first's transaction (as a replay does), not
    "already settled" (which marked a settled answer failed). The race window is reproduced by hiding the key from
    the second request's first look."""
    from ledger.services import engine

    fund(cast.outsider, 2)
    hold_create(key="inference:9", payer_user_id=cast.outsider.pk, amount_micro=CREDIT)
    request = dict(key="settle:9", hold_key="inference:9", fee_micro=600_000, owner_user_id=cast.owner.pk,
                   contributor_shares={cast.teammate.pk: 1})  # fmt: skip
    first = settlement_post(**request)
    before = snapshot()
    real, looks = engine._existing, []

    def existing(key, request_hash):
        looks.append(key)
        return None if len(looks) == 1 else real(key, request_hash)

    monkeypatch.setattr(engine, "_existing", existing)
    assert settlement_post(**request).pk == first.pk
    assert looks == ["settle:9", "settle:9"]
    assert snapshot() == before
    with pytest.raises(HoldNotOpen, match="already settled"):  # another key for the same hold stays an error
        settlement_post(**{**request, "key": "settle:9b"})
    ledger_verify()


def test_hold_lacking_credit_is_a_clear_error(cast, fund):
    fund(cast.outsider, 1)
    before_holds = Hold.objects.count()
    with pytest.raises(InsufficientFunds, match="has 1.000000 credits and this needs 2.000000"):
        hold_create(key="inference:10", payer_user_id=cast.outsider.pk, amount_micro=2 * CREDIT)
    assert Hold.objects.count() == before_holds
    assert wallet_balance(cast.outsider) == CREDIT


def test_fee_above_hold_is_refused(cast, fund):
    fund(cast.outsider, 1)
    hold_create(key="h", payer_user_id=cast.outsider.pk, amount_micro=500)
    before = snapshot()
    with pytest.raises(InvalidRequest, match="more than the hold"):
        settlement_post(key="s", hold_key="h", fee_micro=501, owner_user_id=cast.owner.pk, contributor_shares={})
    assert snapshot() == before


def test_hold_release_returns_everything(cast, fund):
    fund(cast.outsider, 1)
    hold_create(key="h", payer_user_id=cast.outsider.pk, amount_micro=500)
    hold_release(hold_key="h")
    assert wallet_balance(cast.outsider) == CREDIT
    assert Hold.objects.get(key="h").status == "released"
    ledger_verify()


@override_settings(MF_LEDGER_WITHDRAWAL_MIN_MICRO=2_000_000)
def test_withdrawal_two_phases(cast, fund):
    fund(cast.owner, 10)
    w = withdrawal_request(user=cast.owner, amount_micro=4 * CREDIT)
    assert w.status == "requested" and wallet_balance(cast.owner) == 6 * CREDIT
    done = withdrawal_complete(withdrawal_id=w.pk, staff_user=cast.staff)
    assert done.status == "completed" and done.decided_by == cast.staff
    assert Account.objects.get(role=Account.Role.PAID_OUT).balance == 4 * CREDIT
    with pytest.raises(WithdrawalNotOpen, match="already completed"):
        withdrawal_cancel(withdrawal_id=w.pk, staff_user=cast.staff)
    w2 = withdrawal_request(user=cast.owner, amount_micro=3 * CREDIT)
    withdrawal_cancel(withdrawal_id=w2.pk, staff_user=cast.staff, reason="bank details missing")
    assert wallet_balance(cast.owner) == 6 * CREDIT
    assert Withdrawal.objects.get(pk=w2.pk).reason == "bank details missing"
    ledger_verify()


@override_settings(MF_LEDGER_WITHDRAWAL_MIN_MICRO=2_000_000)
def test_withdrawal_refusals_write_nothing(cast, fund):
    fund(cast.owner, 3)
    before = snapshot()
    with pytest.raises(InvalidRequest, match="smallest withdrawal is 2.000000"):
        withdrawal_request(user=cast.owner, amount_micro=CREDIT)
    assert snapshot() == before
    with pytest.raises(InsufficientFunds):
        withdrawal_request(user=cast.owner, amount_micro=4 * CREDIT)
    assert Withdrawal.objects.count() == 0
    assert wallet_balance(cast.owner) == 3 * CREDIT
    w = withdrawal_request(user=cast.owner, amount_micro=2 * CREDIT)
    with pytest.raises(InvalidRequest, match="Only staff"):
        withdrawal_complete(withdrawal_id=w.pk, staff_user=cast.outsider)
    assert Withdrawal.objects.get(pk=w.pk).status == "requested"


def test_checkpoint_covers_transactions_since_the_last(cast, fund):
    fund(cast.owner, 1)
    fund(cast.teammate, 1)
    first = checkpoint_create()
    assert (first.first_seq, first.tx_count) == (1, first.last_seq)
    assert checkpoint_create() is None
    fund(cast.owner, 1)
    second = checkpoint_create()
    assert (second.first_seq, second.last_seq, second.tx_count) == (first.last_seq + 1, first.last_seq + 1, 1)
    assert Checkpoint.objects.count() == 2
    ledger_verify()


class _PgError(Exception):
    def __init__(self, sqlstate):
        self.sqlstate = sqlstate


def _db_error(sqlstate: str):
    error = OperationalError("database said no")
    error.__cause__ = _PgError(sqlstate)
    return error


@pytest.mark.parametrize(
    ("sqlstate", "outermost", "calls", "retried"),
    [("40P01", True, 3, True), ("40001", True, 3, True), ("53300", True, 1, False), ("40P01", False, 1, False)],
)
def test_deadlocks_and_serialization_failures_are_retried_only_as_the_whole_transaction(
    sqlstate, outermost, calls, retried
):
    from ledger.services.engine import _retrying

    seen = []

    def attempt():
        seen.append(1)
        if len(seen) < 3:
            raise _db_error(sqlstate)
        return "done"

    if retried:
        assert _retrying(attempt, outermost=outermost) == "done"
    else:
        with pytest.raises(OperationalError):
            _retrying(attempt, outermost=outermost)
    assert len(seen) == calls
