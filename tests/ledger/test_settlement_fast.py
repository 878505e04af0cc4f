"""The PostgreSQL settlement function (migrations/0003, services `_settlement_post_fast`): same legs, content,
hash and answers as the general path, in one statement, and the general path still answers every case that is
not plain (replays, conflicts, lack of funds, first-time accounts, closed or small holds).

Skipped on SQLite, where every settlement takes the general path (tests/ledger/test_services.py)."""

from fractions import Fraction

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ledger.models import Account, Hold, Posting, Transaction
from ledger.services import (
    GRANT_PERMISSION,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    account_for_user,
    hold_create,
    settlement_post,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, snapshot, wallet_balance

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="the settlement function exists on PostgreSQL only (migrations/0003); on SQLite every settlement "
        "takes the general path (tests/ledger/test_services.py). Run with DATABASE_URL=postgres://... to check it.",
    ),
    pytest.mark.django_db,
]


def _settle(key, payer, owner, contributors, fee=CREDIT, **extra):
    shares = {contributors[0].pk: 1, contributors[1].pk: Fraction(1, 2)}
    return settlement_post(
        key=key, fee_micro=fee, owner_user_id=owner.pk, contributor_shares=shares, payer_user_id=payer.pk, **extra
    )


def _sql(queries) -> list[str]:
    return [q["sql"].split("(")[0].strip() for q in queries]


def test_a_plain_settlement_is_one_statement_and_posts_what_the_general_path_would(people, settings):
    payer, owner, contributors = people
    with CaptureQueriesContext(connection) as fast_queries:
        fast = _settle("fast-1", payer, owner, contributors)
    assert _sql(fast_queries.captured_queries) == ["SELECT * FROM ledger_settlement_post"]
    settings.MF_LEDGER_FAST_SETTLEMENT = False
    general = _settle("general-1", payer, owner, contributors)

    def legs(tx):
        rows = Posting.objects.filter(transaction=tx).values_list("account__owner_id", "account__role", "amount")
        return sorted(rows, key=lambda row: (row[0] or 0, row[1], row[2]))

    # 1 credit: owner 20%, contributors 70% as 2:1, platform 10%, payer -1 credit; identical on both paths.
    expected = sorted(
        [
            (owner.pk, "user", 200_000),
            (contributors[0].pk, "user", 466_667),
            (contributors[1].pk, "user", 233_333),
            (None, "platform", 100_000),
            (payer.pk, "user", -CREDIT),
        ],
        key=lambda row: (row[0] or 0, row[1], row[2]),
    )
    assert legs(fast) == legs(general) == expected
    stored = Transaction.objects.get(pk=fast.pk)
    assert (stored.seq, stored.prev_hash, stored.hash) == (fast.seq, fast.prev_hash, fast.hash)
    assert stored.metadata == Transaction.objects.get(pk=general.pk).metadata == fast.metadata
    assert stored.created_at == fast.created_at and stored.memo == "Inference fee"
    assert general.prev_hash == fast.hash  # one chain, whichever path wrote
    assert wallet_balance(payer) == 8 * CREDIT
    ledger_verify()  # recomputes the SQL-made hash in Python


def test_replaying_a_key_returns_the_transaction_and_a_changed_request_is_refused(people):
    payer, owner, contributors = people
    first = _settle("replay", payer, owner, contributors)
    before = snapshot()
    with CaptureQueriesContext(connection) as queries:
        again = _settle("replay", payer, owner, contributors)
    assert again.pk == first.pk and again.hash == first.hash
    assert _sql(queries.captured_queries)[0] == "SELECT * FROM ledger_settlement_post"  # declined, then general
    with pytest.raises(IdempotencyConflict, match="already used for a different request"):
        _settle("replay", payer, owner, contributors, fee=2 * CREDIT)
    assert snapshot() == before
    ledger_verify()


def test_a_payer_without_enough_credit_is_refused_and_the_key_stays_failed(people):
    payer, owner, contributors = people
    before_balance = wallet_balance(payer)
    with pytest.raises(InsufficientFunds, match=r"has 10\.000000 credits and this needs 11\.000000"):
        _settle("too-much", payer, owner, contributors, fee=11 * CREDIT)
    rejected = Transaction.objects.get(idempotency_key="too-much")
    assert rejected.status == Transaction.Status.REJECTED and not rejected.postings.exists()
    assert wallet_balance(payer) == before_balance
    with pytest.raises(InsufficientFunds):  # replay: the same answer, nothing new
        _settle("too-much", payer, owner, contributors, fee=11 * CREDIT)
    assert Transaction.objects.filter(idempotency_key="too-much").count() == 1
    ledger_verify()


def test_first_time_wallets_are_created_by_the_general_path_then_the_function_is_used(people):
    payer, owner, contributors = people
    newcomer = UserFactory(username="newcomer")
    with CaptureQueriesContext(connection) as queries:
        settlement_post(
            key="new-owner", fee_micro=CREDIT, owner_user_id=newcomer.pk, contributor_shares={}, payer_user_id=payer.pk
        )
    assert len(queries.captured_queries) > 1  # declined by the function, posted by the general path
    assert wallet_balance(newcomer) == CREDIT - 100_000  # owner part + the contributors' part (no contributors)
    with CaptureQueriesContext(connection) as queries:
        settlement_post(
            key="new-owner-2",
            fee_micro=CREDIT,
            owner_user_id=newcomer.pk,
            contributor_shares={},
            payer_user_id=payer.pk,
        )
    assert len(queries.captured_queries) == 1
    assert wallet_balance(newcomer) == 2 * (CREDIT - 100_000)
    ledger_verify()


def test_a_payer_who_owns_the_model_gets_two_postings_on_one_wallet(people):
    payer, _, contributors = people
    tx = _settle("self", payer, payer, contributors, fee=CREDIT)
    amounts = sorted(Posting.objects.filter(transaction=tx, account__owner=payer).values_list("amount", flat=True))
    assert amounts == [-CREDIT, 200_000]
    assert wallet_balance(payer) == 10 * CREDIT - 800_000
    ledger_verify()


def test_settling_from_a_hold_closes_it_and_gives_back_the_rest(people):
    payer, owner, contributors = people
    hold = hold_create(key="h", payer_user_id=payer.pk, amount_micro=3 * CREDIT)
    with CaptureQueriesContext(connection) as queries:
        tx = settlement_post(
            key="from-hold", hold_key="h", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={}
        )
    assert len(queries.captured_queries) == 1
    hold.refresh_from_db()
    assert (hold.status, hold.close_tx_id, hold.closed_at) == (Hold.Status.SETTLED, tx.pk, tx.created_at)
    assert Account.objects.get(pk=hold.clearing_id).balance == 0
    assert wallet_balance(payer) == 9 * CREDIT
    assert wallet_balance(owner) == 900_000
    ledger_verify()
    before = snapshot()
    with pytest.raises(HoldNotOpen, match="already settled"):
        settlement_post(key="again", hold_key="h", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={})
    hold_create(key="small", payer_user_id=payer.pk, amount_micro=CREDIT)
    before = snapshot()
    with pytest.raises(InvalidRequest, match="more than the hold"):
        settlement_post(
            key="over", hold_key="small", fee_micro=2 * CREDIT, owner_user_id=owner.pk, contributor_shares={}
        )
    assert snapshot() == before
    ledger_verify()


def test_a_whole_hold_as_fee_leaves_no_refund_leg(people):
    payer, owner, contributors = people
    hold_create(key="exact", payer_user_id=payer.pk, amount_micro=CREDIT)
    tx = settlement_post(
        key="s-exact", hold_key="exact", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={}
    )
    assert not Posting.objects.filter(transaction=tx, account__owner=payer).exists()
    assert Posting.objects.filter(transaction=tx).count() == 3  # clearing, owner, platform
    ledger_verify()


def test_one_insert_statement_applies_each_accounts_net_to_its_balance(people):
    """The statement-level balance trigger (0003): several postings to one account in one INSERT."""
    payer, owner, _ = people
    a, b = account_for_user(user_id=payer.pk), account_for_user(user_id=owner.pk)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ledger_transaction (idempotency_key, kind, status, memo, metadata, request_hash, "
            "seq, prev_hash, hash, created_at) VALUES ('by-hand', 'transfer', 'posted', '', '{}', '', "
            "999, '', 'x', now()) RETURNING id"
        )
        tx_id = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO ledger_posting (transaction_id, account_id, amount) VALUES (%s, %s, -3), (%s, %s, 1), "
            "(%s, %s, -4), (%s, %s, 6)",
            [tx_id, a.pk, tx_id, a.pk, tx_id, a.pk, tx_id, b.pk],
        )
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the balanced check passes: -3 + 1 - 4 + 6 = 0
        a.refresh_from_db()
        b.refresh_from_db()
        assert (a.balance, b.balance) == (10 * CREDIT - 6, 6)
        transaction.set_rollback(True)


def test_the_function_refuses_a_hand_made_unbalanced_call(people):
    """Even called by hand with legs that do not add up, the function writes nothing (it declines)."""
    payer, owner, _ = people
    before = snapshot()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM ledger_settlement_post('bad', 'settlement', '', '{}', '', now(), '', '', %s, %s, 0, 1, "
            "NULL, 5, false)",
            [[owner.pk, payer.pk], [5, -5]],
        )
        assert cursor.fetchall() == []
    assert snapshot() == before


def test_direct_sql_updates_stay_refused_after_0003(people):
    payer, owner, contributors = people
    tx = _settle("x", payer, owner, contributors)
    with pytest.raises(IntegrityError, match="ledger:"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE ledger_posting SET amount = amount + 1 WHERE transaction_id = %s", [tx.pk])
    ledger_verify()


@pytest.mark.django_db(transaction=True)
def test_in_its_own_transaction_it_releases_locks_early_and_waits_for_the_flush(settings):
    """Outside any atomic block: one function call (commit without waiting for the flush) and one flushing
    WAL message; the settlement is committed and visible from another connection when settlement_post returns."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_LEDGER_SHARDS = 1
    staff = UserFactory(username="early-staff", is_staff=True, permissions=[GRANT_PERMISSION])
    payer, owner = UserFactory(username="early-payer"), UserFactory(username="early-owner")
    from ledger.services import credit_grant

    credit_grant(user_id=payer.pk, amount_micro=5 * CREDIT, granted_by=staff)
    account_for_user(user_id=owner.pk)
    settlement_post(key="warm", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={}, payer_user_id=payer.pk)
    with CaptureQueriesContext(connection) as queries:
        tx = settlement_post(
            key="early", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={}, payer_user_id=payer.pk
        )
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) == 2 and "ledger_settlement_post" in sql[0] and "pg_logical_emit_message" in sql[1]
    assert "true" in sql[0].rsplit(",", 1)[1]  # p_early_release
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")  # SET LOCAL ended with the function's transaction
        assert cursor.fetchone()[0] == "on"
    assert Transaction.objects.get(idempotency_key="early").hash == tx.hash
    assert wallet_balance(payer) == 3 * CREDIT
    ledger_verify()


def test_the_general_path_can_release_its_locks_before_the_flush(people):
    """_commit passes early_release when its atomic block is the whole transaction; the write statement then
    turns synchronous_commit off for that transaction only."""
    from ledger.services.engine import _write_postgresql

    payer, owner, _ = people
    a, b = account_for_user(user_id=payer.pk), account_for_user(user_id=owner.pk)
    fields = dict(
        idempotency_key="by-hand-early",
        kind="transfer",
        status="posted",
        memo="",
        metadata={},
        request_hash="",
        created_at=timezone.now(),
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
        _write_postgresql(fields=fields, content=b"{}", legs=[(b.pk, 5), (a.pk, -5)], early_release=True)
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "off"
        transaction.set_rollback(True)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"


@pytest.mark.django_db(transaction=True)
def test_general_path_writes_wait_for_the_flush_unless_early_release_is_off(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    payer = UserFactory(username="hold-payer")
    staff = UserFactory(username="hold-staff", is_staff=True, permissions=[GRANT_PERMISSION])
    from ledger.services import credit_grant

    credit_grant(user_id=payer.pk, amount_micro=5 * CREDIT, granted_by=staff)
    with CaptureQueriesContext(connection) as queries:
        hold_create(key="h-early", payer_user_id=payer.pk, amount_micro=CREDIT)
    sql = [q["sql"] for q in queries.captured_queries]
    assert "set_config('synchronous_commit', 'off', true)" in next(q for q in sql if "ledger_chainhead" in q)
    assert "pg_logical_emit_message" in sql[-2]  # the flush wait, then the hold is read back
    settings.MF_LEDGER_EARLY_RELEASE = False
    with CaptureQueriesContext(connection) as queries:
        hold_create(key="h-sync", payer_user_id=payer.pk, amount_micro=CREDIT)
    assert not any("pg_logical_emit_message" in q["sql"] for q in queries.captured_queries)
    assert wallet_balance(payer) == 3 * CREDIT
    ledger_verify()
