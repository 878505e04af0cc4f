"""ledger_verify finds every kind of tampering and names the first breach (on PostgreSQL the triggers are switched
off first, as a superuser could)."""

from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from ledger.models import Checkpoint, Posting, Transaction
from ledger.services import account_for_user, checkpoint_create, transfer

pytestmark = pytest.mark.django_db


@contextmanager
def triggers_off(*tables):
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield cursor
        if connection.vendor == "postgresql":
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


@pytest.fixture
def ledger(cast, fund):
    fund(cast.owner, 5)
    a, b = account_for_user(user_id=cast.owner.pk), account_for_user(user_id=cast.teammate.pk)
    first = transfer(key="t1", legs=[(a.pk, -1_000_000), (b.pk, 1_000_000)])
    second = transfer(key="t2", legs=[(b.pk, -250_000), (a.pk, 250_000)])
    checkpoint_create()
    return first, second


def verify_error() -> str:
    with pytest.raises(CommandError) as info:
        call_command("ledger_verify", "--no-checkpoint")
    return str(info.value)


def test_clean_ledger_verifies_and_checkpoints(ledger, capsys, fund, cast):
    fund(cast.owner, 1)
    call_command("ledger_verify")
    out = capsys.readouterr().out
    assert "Ledger OK: 4 transactions, 8 postings" in out
    assert "Checkpoint" in out and "seq 4..4" in out
    assert Checkpoint.objects.count() == 2


def test_edited_amount_is_named(ledger):
    first, _ = ledger
    with triggers_off("ledger_posting") as cursor:
        cursor.execute("UPDATE ledger_posting SET amount = amount * 2 WHERE transaction_id = %s", [first.pk])
    assert f"transaction {first.pk} (seq {first.seq}, key 't1'): its hash does not match" in verify_error()


def test_edited_memo_is_named(ledger):
    _, second = ledger
    with triggers_off("ledger_transaction") as cursor:
        cursor.execute("UPDATE ledger_transaction SET memo = 'x' WHERE id = %s", [second.pk])
    assert f"transaction {second.pk} (seq {second.seq}, key 't2')" in verify_error()


def test_deleted_transaction_is_named(ledger):
    first, _ = ledger
    with triggers_off("ledger_transaction", "ledger_posting", "ledger_account") as cursor:
        cursor.execute("DELETE FROM ledger_posting WHERE transaction_id = %s", [first.pk])
        cursor.execute("DELETE FROM ledger_transaction WHERE id = %s", [first.pk])
    assert f"seq {first.seq} is missing from the chain" in verify_error()


def test_rehashed_chain_still_fails_on_the_checkpoint(ledger):
    """Even an attacker who recomputes every hash after an edit is caught by the Merkle checkpoint."""
    from ledger.calc.canonical import chain_hash
    from ledger.verification import _tx_content

    first, second = ledger
    with triggers_off("ledger_transaction", "ledger_posting", "ledger_chainhead") as cursor:
        cursor.execute("UPDATE ledger_transaction SET memo = 'forged' WHERE id = %s", [first.pk])
        prev = first.prev_hash
        for tx in Transaction.objects.order_by("seq").filter(seq__gte=first.seq).values():
            postings = list(Posting.objects.filter(transaction_id=tx["id"]).values_list("account_id", "amount"))
            digest = chain_hash(prev, _tx_content(tx, postings))
            cursor.execute(
                "UPDATE ledger_transaction SET prev_hash = %s, hash = %s WHERE id = %s", [prev, digest, tx["id"]]
            )
            prev = digest
        cursor.execute("UPDATE ledger_chainhead SET seq = seq + 1, prev_hash = hash WHERE id = 1")
        cursor.execute("UPDATE ledger_chainhead SET seq = seq - 1, hash = %s WHERE id = 1", [prev])
    assert "Merkle root differs" in verify_error()


def test_balance_out_of_step_is_named(ledger, cast):
    account = account_for_user(user_id=cast.teammate.pk)
    with triggers_off("ledger_account") as cursor:
        cursor.execute("UPDATE ledger_account SET balance = balance + 1 WHERE id = %s", [account.pk])
    assert f"account {account.pk} (user): balance 750001 but its postings sum to 750000" in verify_error()


def test_command_exits_non_zero(ledger):
    with triggers_off("ledger_posting") as cursor:
        cursor.execute("UPDATE ledger_posting SET amount = amount + 1 WHERE transaction_id = %s", [ledger[0].pk])
    with pytest.raises(CommandError) as info:
        call_command("ledger_verify")
    assert str(info.value).startswith("Ledger breach: ")
    assert Checkpoint.objects.count() == 1  # nothing checkpointed over a broken ledger
