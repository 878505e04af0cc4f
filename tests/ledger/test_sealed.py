"""A committed ledger transaction is sealed in the database itself (migrations/0007): no posting can be added to it
by hand, even a balanced pair, and (PostgreSQL) no ledger table can be emptied with TRUNCATE."""

import pytest
from django.db import IntegrityError, connection, transaction

from ledger.models import Transaction
from ledger.services import InsufficientFunds, account_for_user, transfer
from ledger.verification import ledger_verify
from tests.ledger.conftest import CREDIT, postgres_only, snapshot


@pytest.fixture
def posted(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    return transfer(key="t", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])


def _add_postings(tx_id: int, legs: list[tuple[int, int]]) -> None:
    """Raw SQL, as someone with database access would write it; on PostgreSQL the check runs at commit."""
    values = ", ".join(["(%s, %s, %s)"] * len(legs))
    params = [value for account, amount in legs for value in (tx_id, account, amount)]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO ledger_posting (transaction_id, account_id, amount) VALUES {values}", params)  # noqa: S608
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # what COMMIT would do


@pytest.mark.django_db
@pytest.mark.parametrize("legs", [[(0, 7), (1, -7)], [(1, -7), (0, 7)]], ids=["credit-first", "debit-first"])
def test_a_balanced_pair_cannot_be_added_to_a_posted_transaction(posted, cast, legs):
    rich, poor = account_for_user(user_id=cast.teammate.pk), account_for_user(user_id=cast.owner.pk)
    accounts = (rich.pk, poor.pk)
    before = snapshot()
    expected = "committed earlier" if connection.vendor == "postgresql" else "already complete"
    with pytest.raises(IntegrityError, match=expected):
        _add_postings(posted.pk, [(accounts[i], amount) for i, amount in legs])
    assert snapshot() == before
    ledger_verify()


@pytest.mark.django_db
def test_postings_cannot_be_added_to_a_rejected_transaction(cast, fund):
    fund(cast.owner, 1)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    with pytest.raises(InsufficientFunds):
        transfer(key="too-much", legs=[(a.pk, -5 * CREDIT), (b.pk, 5 * CREDIT)])
    rejected = Transaction.objects.get(idempotency_key="too-much")
    before = snapshot()
    with pytest.raises(IntegrityError, match="rejected and cannot have postings|not posted"):
        _add_postings(rejected.pk, [(b.pk, 3), (a.pk, -3)])
    assert snapshot() == before
    ledger_verify()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_postgres_refuses_postings_for_a_transaction_committed_in_an_earlier_database_transaction(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    posted = transfer(key="t", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])  # committed: no test transaction here
    before = snapshot()
    with (
        pytest.raises(IntegrityError, match=rf"transaction {posted.pk} was committed earlier; no posting can be added"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO ledger_posting (transaction_id, account_id, amount) VALUES (%s, %s, 9), (%s, %s, -9)",
            [posted.pk, a.pk, posted.pk, b.pk],
        )
    assert snapshot() == before
    ledger_verify()
    # The ordinary path still posts: its postings are written with their transaction.
    transfer(key="t2", legs=[(a.pk, -CREDIT), (b.pk, CREDIT)])
    ledger_verify()


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("TRUNCATE ledger_posting", "ledger_posting"),
        ("TRUNCATE ledger_transaction CASCADE", "ledger_(transaction|posting|hold|withdrawal)"),
        ("TRUNCATE ledger_account CASCADE", "ledger_(account|posting|hold|withdrawal)"),
        ("TRUNCATE ledger_chainhead", "ledger_chainhead"),
        ("TRUNCATE ledger_checkpoint", "ledger_checkpoint"),
        ("TRUNCATE accounts_user CASCADE", "ledger_(account|posting|hold|withdrawal)"),
    ],
)
def test_postgres_refuses_truncate_of_ledger_tables(posted, sql, table):
    before = snapshot()
    with (
        pytest.raises(IntegrityError, match=rf"ledger: TRUNCATE on {table} is not allowed"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        # The test suite may empty its own database between tests; an ordinary session may not.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the deferred checks the test transaction holds
        cursor.execute("SET LOCAL ledger.allow_truncate = off")
        cursor.execute(sql)
    assert snapshot() == before
    ledger_verify()
