import pytest
from django.db import connection

from ledger.models import Account, Posting, Transaction
from ledger.services import GRANT_PERMISSION, account_for_user, credit_grant
from tests.factories import UserFactory

CREDIT = 1_000_000

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="enforced by PostgreSQL triggers (migrations/0002); on SQLite the service layer enforces it. "
    "Run with DATABASE_URL=postgres://... to check it.",
)


@pytest.fixture
def staff(db):
    return UserFactory(username="ledger-staff", is_staff=True, permissions=[GRANT_PERMISSION])


@pytest.fixture
def fund(staff):
    """fund(user, credits) grants credit to a user's wallet and returns the transaction."""

    def _fund(user, credits: int):
        return credit_grant(user_id=user.pk, amount_micro=credits * CREDIT, granted_by=staff, memo="test")

    return _fund


@pytest.fixture
def people(cast, fund, settings):
    """For the settlement tests: a payer with 10 credits; the owner, two contributors and the platform (one shard) have accounts already."""
    settings.MF_LEDGER_SHARDS = 1
    Account.objects.create(role=Account.Role.PLATFORM, shard=0)
    contributors = [UserFactory(username="c1"), UserFactory(username="c2")]
    fund(cast.outsider, 10)
    for user in (cast.owner, *contributors):
        account_for_user(user_id=user.pk)
    return cast.outsider, cast.owner, contributors


def wallet_balance(user) -> int:
    account = Account.objects.filter(owner=user).first()
    return account.balance if account else 0


def snapshot() -> tuple:
    """Everything the ledger holds, to assert that a refused request wrote nothing."""
    return (
        Transaction.objects.count(),
        Posting.objects.count(),
        tuple(Account.objects.order_by("pk").values_list("pk", "balance")),
    )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The cast's passwords do not matter here; PBKDF2 would dominate these tests on two shared cores.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
