"""Guarantees PostgreSQL enforces by itself (migrations/0002), and the ledger under real concurrency.

Skipped on SQLite, where the service layer is what enforces these rules; run with
DATABASE_URL=postgres://postgres@127.0.0.1:5432/mf_ledger."""

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from ledger.models import Account, Hold, Transaction, Withdrawal
from ledger.services import (
    GRANT_PERMISSION,
    HoldNotOpen,
    InsufficientFunds,
    account_for_user,
    credit_grant,
    hold_create,
    settlement_post,
    transfer,
    withdrawal_cancel,
    withdrawal_complete,
    withdrawal_request,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, postgres_only

pytestmark = postgres_only


def _execute(sql: str, params=None) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.fixture
def posted(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    return transfer(key="t", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_posting SET amount = amount * 2",
        "DELETE FROM ledger_posting",
        "UPDATE ledger_transaction SET memo = 'edited'",
        "DELETE FROM ledger_transaction",
        "UPDATE ledger_account SET balance = balance + 1000000",
        "UPDATE ledger_account SET owner_id = NULL, role = 'platform'",
    ],
)
def test_direct_sql_changes_are_refused(posted, sql):
    with pytest.raises(IntegrityError, match="ledger:"):
        _execute(sql)
    ledger_verify()


@pytest.mark.django_db
def test_unbalanced_insert_is_refused(posted):
    a = account_for_user(user_id=posted.postings.first().account.owner_id)
    with (
        pytest.raises(IntegrityError, match=r"postings of transaction \d+ sum to 5, not 0"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO ledger_transaction (idempotency_key, kind, status, memo, metadata, request_hash, "
            "seq, prev_hash, hash, created_at) VALUES ('forged', 'transfer', 'posted', '', '{}', '', "
            "999, '', 'x', now()) RETURNING id"
        )
        tx_id = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO ledger_posting (transaction_id, account_id, amount) VALUES (%s, %s, 5)", [tx_id, a.pk]
        )
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # what COMMIT would do
    ledger_verify()


@pytest.mark.django_db
def test_a_user_account_cannot_go_below_zero_even_by_hand(posted, cast):
    poor = account_for_user(user_id=cast.outsider.pk)
    rich = account_for_user(user_id=cast.owner.pk)
    with (
        pytest.raises(IntegrityError, match="ledger_balance_gte_0"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO ledger_transaction (idempotency_key, kind, status, memo, metadata, request_hash, "
            "seq, prev_hash, hash, created_at) VALUES ('forged', 'transfer', 'posted', '', '{}', '', "
            "999, '', 'x', now()) RETURNING id"
        )
        tx_id = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO ledger_posting (transaction_id, account_id, amount) VALUES (%s, %s, -7), (%s, %s, 7)",
            [tx_id, poor.pk, tx_id, rich.pk],
        )
    ledger_verify()


@pytest.mark.django_db
def test_verify_names_an_edit_made_with_triggers_disabled(posted):
    """A superuser can switch triggers off; the hash chain still gives the edit away."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the deferred checks the test transaction holds
        cursor.execute("ALTER TABLE ledger_posting DISABLE TRIGGER USER")
        cursor.execute("UPDATE ledger_posting SET amount = amount * 2 WHERE transaction_id = %s", [posted.pk])
        cursor.execute("ALTER TABLE ledger_posting ENABLE TRIGGER USER")
    with pytest.raises(Exception, match=rf"transaction {posted.pk} .*hash does not match its content"):
        call_command("ledger_verify", "--no-checkpoint")


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_settlements_and_withdrawals_conserve_every_micro_unit(settings):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = CREDIT
    settings.MF_LEDGER_CHECKPOINT_EVERY = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    staff = UserFactory(username="conc-staff", is_staff=True, permissions=[GRANT_PERMISSION])
    payers = [UserFactory(username=f"payer{i}") for i in range(6)]
    owner = UserFactory(username="conc-owner")
    contributors = [UserFactory(username=f"contrib{i}") for i in range(3)]
    granted = 0
    for payer in payers:
        credit_grant(user_id=payer.pk, amount_micro=10 * CREDIT, granted_by=staff)
        granted += 10 * CREDIT
    everyone = [*payers, owner, *contributors]
    wallet = {u.pk: account_for_user(user_id=u.pk).pk for u in everyone}
    rng = random.Random(7)
    ops = []
    for i in range(200):
        payer = rng.choice(payers)
        kind = rng.choice(["settle", "hold", "withdraw", "transfer", "transfer_back"])
        ops.append((i, kind, payer.pk, rng.choice(everyone).pk, rng.randint(1, 3 * CREDIT)))

    def run(op):
        i, kind, payer_id, other_id, amount = op
        shares = {c.pk: rng_share for c, rng_share in zip(contributors, (1, 2, 3), strict=True)}
        try:
            if kind == "settle":
                settlement_post(
                    key=f"s{i}",
                    payer_user_id=payer_id,
                    fee_micro=amount,
                    owner_user_id=owner.pk,
                    contributor_shares=shares,
                    metadata={"model": "m"},
                )
            elif kind == "hold":
                hold_create(key=f"h{i}", payer_user_id=payer_id, amount_micro=amount)
                settlement_post(
                    key=f"s{i}",
                    hold_key=f"h{i}",
                    fee_micro=amount // 2,
                    owner_user_id=owner.pk,
                    contributor_shares=shares,
                )
            elif kind == "withdraw":
                user = next(u for u in everyone if u.pk == other_id)
                w = withdrawal_request(user=user, amount_micro=max(amount, CREDIT))
                if i % 2:
                    withdrawal_complete(withdrawal_id=w.pk, staff_user=staff)
                else:
                    withdrawal_cancel(withdrawal_id=w.pk, staff_user=staff)
            else:  # transfers in both directions between the same wallets: lock ordering prevents deadlocks
                a, b = (wallet[payer_id], wallet[other_id])
                if a == b:
                    return "noop"
                legs = [(a, -amount), (b, amount)] if kind == "transfer" else [(b, -amount), (a, amount)]
                transfer(key=f"t{i}", legs=legs)
            return "ok"
        except (InsufficientFunds, HoldNotOpen):
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, ops))
    assert outcomes.count("ok") > 100  # most succeed; some are refused for lack of credit, none crash
    report = ledger_verify()
    assert report.transactions == Transaction.objects.count()
    assert Account.objects.aggregate(t=Sum("balance"))["t"] == 0
    users_and_system = Account.objects.exclude(role=Account.Role.ISSUANCE).aggregate(t=Sum("balance"))["t"]
    assert users_and_system == granted  # nothing created or lost: all granted credit is somewhere
    assert not Account.objects.filter(role=Account.Role.USER, balance__lt=0).exists()
    assert not Hold.objects.filter(status=Hold.Status.HELD).exists()
    assert not Withdrawal.objects.filter(status=Withdrawal.Status.REQUESTED).exists()
    paid_out = Account.objects.filter(role=Account.Role.PAID_OUT).aggregate(t=Sum("balance"))["t"] or 0
    completed = Withdrawal.objects.filter(status="completed").aggregate(t=Sum("amount"))["t"] or 0
    assert paid_out == completed
    call_command("ledger_verify")
