"""Staff credit grants: only staff with the permission "Can grant credit to a user" (ledger.grant_credit, or a
superuser) may grant, never to themselves, at most MF_LEDGER_GRANT_MAX_CREDITS per grant, once per key; every
grant is listed in the admin's "Credit grants" audit page. Each refusal asserts the error and that nothing was
written (service and admin)."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ledger.models import Transaction
from ledger.services import (
    GRANT_PERMISSION,
    IdempotencyConflict,
    InvalidRequest,
    NotAllowed,
    credit_grant,
    grant_signup_credit,
    transfer,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, snapshot, wallet_balance

REFUSED = 'Only staff with the permission "Can grant credit to a user" can grant credit; ask an administrator.'
GRANT_URL = "/admin/ledger/account/grant/"
AUDIT_URL = "/admin/ledger/creditgrant/"

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


# --- the admin page that grants ----------------------------------------------------------------------------------


def test_admin_refuses_the_grant_page_to_staff_without_the_permission(client, cast, plain_staff):
    client.force_login(plain_staff)
    page = client.get(GRANT_URL)
    assert page.status_code == 403
    assert 'does not have the permission "Can grant credit to a user"' in page.content.decode()
    assert 'name="amount"' not in page.content.decode()
    before = snapshot()
    response = client.post(GRANT_URL, {"username": "owner", "amount": "1000000", "memo": "for me"})
    assert response.status_code == 403
    assert snapshot() == before
    assert wallet_balance(cast.owner) == 0


def test_admin_hides_the_grant_link_without_the_permission(client, db):
    viewer = UserFactory(username="viewer", is_staff=True, permissions=["ledger.view_account"])
    client.force_login(viewer)
    page = client.get(reverse("admin:ledger_account_changelist"))
    assert page.status_code == 200 and GRANT_URL not in page.content.decode()
    both = UserFactory(username="both", is_staff=True, permissions=["ledger.view_account", GRANT_PERMISSION])
    client.force_login(both)
    assert GRANT_URL in client.get(reverse("admin:ledger_account_changelist")).content.decode()


def test_admin_grant_with_the_permission(client, cast, granter):
    client.force_login(granter)
    form = client.get(GRANT_URL)
    assert form.status_code == 200 and "at most 1,000 in one grant" in form.content.decode()
    response = client.post(GRANT_URL, {"username": "owner", "amount": "2.5", "memo": "launch", "key": uuid.uuid4()})
    assert response.status_code == 302
    tx = Transaction.objects.get(kind="grant")
    assert (tx.memo, tx.metadata) == ("launch", {"granted_by": granter.pk})
    assert wallet_balance(cast.owner) == 2_500_000


def test_admin_sending_the_same_form_twice_grants_once(client, cast, granter):
    client.force_login(granter)
    data = {"username": "owner", "amount": "2", "memo": "", "key": str(uuid.uuid4())}
    assert client.post(GRANT_URL, data).status_code == 302
    assert client.post(GRANT_URL, data).status_code == 302
    assert Transaction.objects.filter(kind="grant").count() == 1
    assert wallet_balance(cast.owner) == 2 * CREDIT
    before = snapshot()
    page = client.post(GRANT_URL, {**data, "amount": "3"})  # the same form, sent back with other details
    assert "This form was already sent once with other details" in page.content.decode()
    assert snapshot() == before


def test_admin_refuses_a_grant_above_the_ceiling(client, cast, granter, settings):
    settings.MF_LEDGER_GRANT_MAX_CREDITS = 100
    client.force_login(granter)
    before = snapshot()
    page = client.post(GRANT_URL, {"username": "owner", "amount": "1000000", "memo": ""})
    assert page.status_code == 200
    assert (
        "One grant can give at most 100 credits (MF_LEDGER_GRANT_MAX_CREDITS); this one asks for 1000000.000000."
        in page.content.decode()
    )
    assert snapshot() == before


def test_admin_refuses_a_grant_to_oneself(client, granter):
    client.force_login(granter)
    before = snapshot()
    page = client.post(GRANT_URL, {"username": "granter", "amount": "5", "memo": ""})
    assert "You cannot grant credit to yourself; ask another member of staff." in page.content.decode()
    assert snapshot() == before


# --- the audit list ----------------------------------------------------------------------------------------------


def audit_rows(client) -> list[tuple]:
    page = client.get(AUDIT_URL)
    assert page.status_code == 200
    return [
        (row.granted_by_name, row.recipient_name, row.granted_micro, row.memo, row.pk, row.created_at)
        for row in page.context["cl"].result_list
    ]


def test_the_audit_page_lists_every_grant_and_nothing_else(client, cast, granter):
    other = UserFactory(username="other-granter", is_staff=True, permissions=[GRANT_PERMISSION])
    a = credit_grant(user_id=cast.owner.pk, amount_micro=5 * CREDIT, granted_by=granter, memo="launch")
    b = credit_grant(user_id=cast.teammate.pk, amount_micro=1_500_000, granted_by=other, memo="")
    c = credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=cast.staff, memo="thanks")
    grant_signup_credit(user=cast.outsider)  # the platform's welcome credit: not a staff grant
    owner_wallet, teammate_wallet = (grant.postings.get(amount__gt=0).account_id for grant in (a, b))
    transfer(key="t", legs=[(owner_wallet, -CREDIT), (teammate_wallet, CREDIT)])  # not a grant: not listed
    client.force_login(granter)
    assert audit_rows(client) == [
        ("staff", "owner", CREDIT, "thanks", c.pk, c.created_at),
        ("other-granter", "teammate", 1_500_000, "Credit granted by staff", b.pk, b.created_at),
        ("granter", "owner", 5 * CREDIT, "launch", a.pk, a.created_at),
    ]
    html = client.get(AUDIT_URL).content.decode()
    assert "5.000000" in html and "1.500000" in html and "other-granter" in html
    found = client.get(AUDIT_URL, {"q": "teammate"}).context["cl"].result_list
    assert [row.pk for row in found] == [b.pk]


def test_the_audit_page_runs_the_same_queries_for_more_grants(client, cast, granter):
    client.force_login(granter)
    credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=granter)
    client.get(AUDIT_URL)  # warm the session and content-type caches
    with CaptureQueriesContext(connection) as one:
        client.get(AUDIT_URL)
    for user in (cast.teammate, cast.outsider, cast.owner):
        credit_grant(user_id=user.pk, amount_micro=CREDIT, granted_by=granter)
    with CaptureQueriesContext(connection) as four:
        assert len(audit_rows(client)) == 4
    assert len(four.captured_queries) == len(one.captured_queries)


def test_the_audit_page_is_refused_to_staff_without_the_permission(client, cast, plain_staff, granter):
    credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=granter)
    client.force_login(plain_staff)
    assert client.get(AUDIT_URL).status_code == 403
    auditor = UserFactory(username="auditor", is_staff=True, permissions=["ledger.view_creditgrant"])
    client.force_login(auditor)
    assert [row[1:3] for row in audit_rows(client)] == [("owner", CREDIT)]


def test_the_audit_page_is_read_only(client, cast, granter):
    tx = credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=granter)
    client.force_login(cast.staff)  # a superuser: even they cannot add, edit or delete a grant here
    assert client.get(AUDIT_URL + "add/").status_code == 403
    assert client.post(f"{AUDIT_URL}{tx.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"{AUDIT_URL}{tx.pk}/change/", {"memo": "edited"}).status_code == 403
    assert Transaction.objects.get(pk=tx.pk).memo == "Credit granted by staff"
