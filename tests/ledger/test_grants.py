"""Staff credit grants: only staff with the permission "Can grant credit to a user" (ledger.grant_credit, or a
superuser) may grant, never to themselves, at most MF_LEDGER_GRANT_MAX_CREDITS per grant, once per key; every
grant is listed in the admin's "Credit grants" audit page. Each refusal asserts the error and that nothing was
written (service and admin)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from ledger.models import Transaction
from ledger.services import (
    GRANT_PERMISSION,
    IdempotencyConflict,
    InvalidRequest,
    NotAllowed,
    credit_grant,
    grant_signup_credit,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, snapshot, wallet_balance

REFUSED = 'Only staff with the permission "Can grant credit to a user" can grant credit; ask an administrator.'

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="real concurrency needs PostgreSQL (SQLite runs one writer at a time). "
    "Run with DATABASE_URL=postgres://... to check it.",
)


@pytest.fixture
def plain_staff(db):
    """Staff with no permission at all: may log in to the admin, may not grant."""
    return UserFactory(username="plain-staff", is_staff=True)


@pytest.fixture
def granter(db):
    return UserFactory(username="granter", is_staff=True, permissions=[GRANT_PERMISSION])


# --- the service -----------------------------------------------------------------------------------------------


def test_staff_without_the_permission_cannot_grant(cast, plain_staff):
    before = snapshot()
    with pytest.raises(NotAllowed, match=REFUSED):
        credit_grant(user_id=cast.owner.pk, amount_micro=1_000_000 * CREDIT, granted_by=plain_staff)
    assert snapshot() == before
    assert wallet_balance(cast.owner) == 0


def test_the_permission_without_staff_status_is_refused(cast):
    former = UserFactory(username="former-staff", is_staff=False, permissions=[GRANT_PERMISSION])
    before = snapshot()
    with pytest.raises(NotAllowed, match=REFUSED):
        credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=former)
    assert snapshot() == before


def test_staff_with_the_permission_grants(cast, granter):
    tx = credit_grant(user_id=cast.owner.pk, amount_micro=25 * CREDIT, granted_by=granter, memo="launch")
    assert (tx.kind, tx.status, tx.memo, tx.metadata) == ("grant", "posted", "launch", {"granted_by": granter.pk})
    assert wallet_balance(cast.owner) == 25 * CREDIT
    assert sorted(tx.postings.values_list("amount", flat=True)) == [-25 * CREDIT, 25 * CREDIT]
    ledger_verify()


def test_a_superuser_has_the_permission(cast):
    tx = credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=cast.staff)
    assert tx.status == "posted" and wallet_balance(cast.owner) == CREDIT


def test_a_grant_above_the_ceiling_is_refused(cast, granter, settings):
    settings.MF_LEDGER_GRANT_MAX_CREDITS = 10
    credit_grant(user_id=cast.owner.pk, amount_micro=10 * CREDIT, granted_by=granter)  # the ceiling itself is allowed
    before = snapshot()
    with pytest.raises(InvalidRequest) as refused:
        credit_grant(user_id=cast.owner.pk, amount_micro=10 * CREDIT + 1, granted_by=granter)
    assert str(refused.value) == (
        "One grant can give at most 10 credits (MF_LEDGER_GRANT_MAX_CREDITS); this one asks for 10.000001."
    )
    assert snapshot() == before
    assert wallet_balance(cast.owner) == 10 * CREDIT


def test_the_default_ceiling_is_1000_credits(cast, granter):
    before = snapshot()
    with pytest.raises(InvalidRequest, match=r"^One grant can give at most 1,000 credits"):
        credit_grant(user_id=cast.owner.pk, amount_micro=1_000_000 * CREDIT, granted_by=granter)
    assert snapshot() == before


def test_a_grant_to_oneself_is_refused(granter):
    before = snapshot()
    with pytest.raises(InvalidRequest, match="^You cannot grant credit to yourself; ask another member of staff.$"):
        credit_grant(user_id=granter.pk, amount_micro=CREDIT, granted_by=granter)
    assert snapshot() == before
    assert wallet_balance(granter) == 0


def test_the_same_key_twice_is_one_grant(cast, granter):
    first = credit_grant(user_id=cast.owner.pk, amount_micro=3 * CREDIT, granted_by=granter, key="grant:k1")
    again = credit_grant(user_id=cast.owner.pk, amount_micro=3 * CREDIT, granted_by=granter, key="grant:k1")
    assert again.pk == first.pk
    assert Transaction.objects.filter(kind="grant").count() == 1
    assert wallet_balance(cast.owner) == 3 * CREDIT
    before = snapshot()
    with pytest.raises(IdempotencyConflict):
        credit_grant(user_id=cast.owner.pk, amount_micro=4 * CREDIT, granted_by=granter, key="grant:k1")
    assert snapshot() == before


def test_the_signup_credit_needs_no_staff(db):
    user = UserFactory(username="newcomer")
    tx = grant_signup_credit(user=user)
    assert tx.kind == "signup_grant" and wallet_balance(user) == tx.postings.get(amount__gt=0).amount > 0


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_grants_with_one_key_post_exactly_one_transaction(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_LEDGER_CHECKPOINT_EVERY = 0
    staff = UserFactory(username="conc-granter", is_staff=True, permissions=[GRANT_PERMISSION])
    receiver = UserFactory(username="conc-receiver")
    threads = 8
    barrier = threading.Barrier(threads, timeout=60)

    def grant(_):
        try:
            me = get_user_model().objects.get(pk=staff.pk)  # each thread its own user (and permission cache)
            barrier.wait()
            tx = credit_grant(
                user_id=receiver.pk, amount_micro=7 * CREDIT, granted_by=me, memo="bonus", key="grant:once"
            )
            return tx.pk
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        ids = list(pool.map(grant, range(threads)))
    tx = Transaction.objects.get(kind="grant")
    assert ids == [tx.pk] * threads
    assert wallet_balance(receiver) == 7 * CREDIT
    assert ledger_verify().transactions == Transaction.objects.count() == 1
