"""API keys and other sessions do not outlive a password change, and "sign out everywhere" ends them on request
(issue 17: API tokens survived a password change)."""

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import api_token_create
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def _api_status(key: str) -> int:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api.get("/api/v1/base-models/").status_code


def _signed_in(client: Client) -> bool:
    return client.get(reverse("accounts:profile")).status_code == 200


def _two_browsers_and_two_keys(cast):
    here, elsewhere = Client(), Client()
    for browser in (here, elsewhere):
        assert browser.post(reverse("accounts:login"), {"username": "owner", "password": PASSWORD}).status_code == 302
    keys = [api_token_create(user=cast.owner, name=name)[1] for name in ("laptop", "ci")]
    _, teammate_key = api_token_create(user=cast.teammate, name="theirs")
    assert [_api_status(key) for key in keys] == [200, 200]
    return here, elsewhere, keys, teammate_key


def test_sign_out_everywhere_revokes_keys_and_ends_other_sessions(cast):
    here, elsewhere, keys, teammate_key = _two_browsers_and_two_keys(cast)
    page = here.get(reverse("accounts:profile")).content.decode()
    assert f'action="{reverse("accounts:sign_out_everywhere")}"' in page

    response = here.post(reverse("accounts:sign_out_everywhere"), follow=True)
    assert response.redirect_chain == [(reverse("accounts:profile"), 302)]
    assert (
        "Done. You were signed out everywhere else (2 API keys revoked); this browser stays signed in."
        in response.content.decode()
    )
    assert [_api_status(key) for key in keys] == [401, 401]
    assert ApiToken.objects.filter(user=cast.owner, revoked_at__isnull=True).count() == 0
    assert _signed_in(here) is True
    assert _signed_in(elsewhere) is False
    assert _api_status(teammate_key) == 200  # someone else's keys are untouched


def test_sign_out_everywhere_is_a_post_for_a_signed_in_user(cast):
    client = Client()
    client.force_login(cast.owner)
    assert client.get(reverse("accounts:sign_out_everywhere")).status_code == 405
    response = Client().post(reverse("accounts:sign_out_everywhere"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))


def test_password_change_revokes_keys_and_ends_other_sessions(cast):
    here, elsewhere, keys, teammate_key = _two_browsers_and_two_keys(cast)
    response = here.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": "a-New-pass-456", "new_password2": "a-New-pass-456"},
        follow=True,
    )
    assert (
        "Your password was changed. You were signed out everywhere else (2 API keys revoked); this browser stays "
        "signed in." in response.content.decode()
    )
    assert [_api_status(key) for key in keys] == [401, 401]
    assert _signed_in(here) is True
    assert _signed_in(elsewhere) is False
    assert _api_status(teammate_key) == 200


def test_a_refused_password_change_revokes_nothing(cast):
    here, elsewhere, keys, _ = _two_browsers_and_two_keys(cast)
    here.post(
        reverse("accounts:password_change"),
        {"old_password": "wrong", "new_password1": "a-New-pass-456", "new_password2": "a-New-pass-456"},
    )
    assert [_api_status(key) for key in keys] == [200, 200]
    assert _signed_in(elsewhere) is True
