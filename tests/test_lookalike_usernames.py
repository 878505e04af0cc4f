"""Look-alike user names are refused at sign-up (issue 17: "аlice" in Cyrillic was accepted next to "alice")."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.urls import reverse

from accounts.services import LOOKALIKE_MESSAGE, user_signup
from common.confusables import username_skeleton
from ledger.models import Transaction
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

CYRILLIC_ALICE = "\u0430lice"  # а (U+0430) then "lice"


@pytest.mark.parametrize(
    "name",
    [CYRILLIC_ALICE, "ALICE", "Alice", "a1ice", "alic\u0435", "\uff41lice", "al\u200bice", "\u0391lice"],
    ids=["cyrillic-a", "capitals", "capital", "digit-one", "cyrillic-e", "fullwidth-a", "zero-width-space", "greek"],
)
def test_skeleton_of_look_alikes_is_the_plain_name(name):
    assert username_skeleton(name) == "alice"


@pytest.mark.parametrize("pair", [("alice", "alina"), ("bob", "rob"), ("user2", "user3"), ("modem", "model")])
def test_different_names_keep_different_skeletons(pair):
    assert username_skeleton(pair[0]) != username_skeleton(pair[1])


def _signup(client, username):
    return client.post(
        reverse("accounts:signup"),
        {
            "username": username,
            "email": "x@example.com",
            "password1": "a-Long-pass-123",
            "password2": "a-Long-pass-123",
        },
    )


def test_signup_form_refuses_a_look_alike_and_writes_nothing(client):
    UserFactory(username="alice")
    users, transactions = get_user_model().objects.count(), Transaction.objects.count()
    response = _signup(client, CYRILLIC_ALICE)
    assert response.status_code == 200
    assert response.context["form"].errors == {"username": [LOOKALIKE_MESSAGE]}
    assert "That user name looks too much like an existing one" in response.content.decode()
    assert get_user_model().objects.count() == users
    assert Transaction.objects.count() == transactions
    assert "_auth_user_id" not in client.session


def test_signup_form_accepts_a_name_unlike_any_other(client):
    UserFactory(username="alice")
    assert _signup(client, "alina").status_code == 302
    assert get_user_model().objects.get(username="alina").username_skeleton == "alina"


def test_signup_service_refuses_a_look_alike_and_writes_nothing():
    UserFactory(username="alice")
    users, transactions = get_user_model().objects.count(), Transaction.objects.count()
    with pytest.raises(ValidationError) as refused:
        user_signup(username="a1ice", email="x@example.com", password="a-Long-pass-123")
    assert refused.value.messages == [LOOKALIKE_MESSAGE]
    assert get_user_model().objects.count() == users
    assert Transaction.objects.count() == transactions


def test_the_database_refuses_a_look_alike_that_skips_the_check():
    """Two sign-ups at once both pass the check: the unique skeleton lets only the first in."""
    UserFactory(username="alice")
    with pytest.raises(IntegrityError):
        get_user_model().objects.create_user(username=CYRILLIC_ALICE, password="a-Long-pass-123")
