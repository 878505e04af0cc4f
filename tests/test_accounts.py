import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import reverse

from accounts.models import ApiToken
from accounts.services import api_token_create, hash_key
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def test_signup_creates_the_account_and_logs_in(client):
    response = client.post(
        reverse("accounts:signup"),
        {
            "username": "newbie",
            "email": "newbie@example.com",
            "password1": "a-Long-pass-123",
            "password2": "a-Long-pass-123",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert response.context["user"].username == "newbie"
    assert "Welcome, newbie! Your account is ready." in response.content.decode()
    assert get_user_model().objects.get(username="newbie").email == "newbie@example.com"


def test_signup_with_mismatched_passwords_creates_nothing(client):
    response = client.post(
        reverse("accounts:signup"),
        {
            "username": "newbie",
            "email": "newbie@example.com",
            "password1": "a-Long-pass-123",
            "password2": "other-pass-456",
        },
    )
    assert response.status_code == 200
    assert "The two password fields didn’t match." in response.content.decode()
    assert not get_user_model().objects.filter(username="newbie").exists()


def test_login_and_logout(client, cast):
    response = client.post(reverse("accounts:login"), {"username": "owner", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    page = client.get(reverse("home")).content.decode()
    assert "Welcome back, owner." in page
    response = client.post(reverse("accounts:logout"))
    assert response.status_code == 302
    assert "Log in" in client.get(reverse("home")).content.decode()


def test_wrong_password_gives_a_plain_message(client, cast):
    response = client.post(reverse("accounts:login"), {"username": "owner", "password": "nope"})
    assert response.status_code == 200
    assert "That user name and password do not match. Check both and try again." in response.content.decode()
    assert "_auth_user_id" not in client.session


@override_settings(MF_LOGIN_MAX_FAILURES=3, MF_LOGIN_DELAY_SECONDS=30)
def test_repeated_failures_make_the_next_try_wait_even_with_the_right_password(client, cast, login_clock):
    for _ in range(3):
        client.post(reverse("accounts:login"), {"username": "owner", "password": "wrong"})
    response = client.post(reverse("accounts:login"), {"username": "owner", "password": PASSWORD})
    assert response.status_code == 200
    assert "Too many failed attempts. Wait 30 seconds before trying again." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_password_change(client, cast):
    client.force_login(cast.owner)
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": "brand-New-secret-77", "new_password2": "brand-New-secret-77"},
        follow=True,
    )
    assert "Your password was changed." in response.content.decode()
    cast.owner.refresh_from_db()
    assert cast.owner.check_password("brand-New-secret-77")


def test_password_change_with_wrong_old_password_changes_nothing(client, cast):
    client.force_login(cast.owner)
    response = client.post(
        reverse("accounts:password_change"),
        {"old_password": "wrong", "new_password1": "brand-New-secret-77", "new_password2": "brand-New-secret-77"},
    )
    assert response.status_code == 200
    assert "Your old password was entered incorrectly" in response.content.decode()
    cast.owner.refresh_from_db()
    assert cast.owner.check_password(PASSWORD)


def test_profile_requires_login_and_saves(client, cast):
    assert client.get(reverse("accounts:profile"))["Location"].startswith(reverse("accounts:login"))
    client.force_login(cast.owner)
    response = client.post(
        reverse("accounts:profile"),
        {"first_name": "Ada", "last_name": "Owner", "email": "ada@example.org"},
        follow=True,
    )
    assert "Your profile was saved." in response.content.decode()
    cast.owner.refresh_from_db()
    assert (cast.owner.first_name, cast.owner.email) == ("Ada", "ada@example.org")


def test_token_page_creates_a_key_shown_once(client, cast):
    client.force_login(cast.owner)
    response = client.post(reverse("accounts:tokens"), {"name": "laptop script"}, follow=True)
    assert response.redirect_chain == [(reverse("accounts:tokens"), 302)]
    page = response.content.decode()
    token = ApiToken.objects.get(user=cast.owner)
    key = response.context["new_key"]
    assert key.startswith("mf_") and key in page
    assert token.key_hash == hash_key(key) and key not in token.key_hash
    assert token.name == "laptop script"
    # A later visit never shows the key again.
    assert key not in client.get(reverse("accounts:tokens")).content.decode()


def test_token_revoke_and_its_effect_on_the_api(client, cast, api_client):
    token, key = api_token_create(user=cast.owner, name="ci")
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api_client.get("/api/v1/base-models/").status_code == 200

    client.force_login(cast.owner)
    response = client.post(reverse("accounts:token_revoke", args=[token.pk]), follow=True)
    assert "revoked: it no longer works" in response.content.decode()
    response = api_client.get("/api/v1/base-models/")
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "authentication_failed", "message": "Invalid or revoked API token.", "details": {}}
    }


def test_nobody_can_revoke_someone_elses_token(client, cast):
    token, _ = api_token_create(user=cast.owner, name="mine")
    client.force_login(cast.outsider)
    response = client.post(reverse("accounts:token_revoke", args=[token.pk]), follow=True)
    assert "That API key does not exist or is not yours." in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is None


def test_bearer_header_is_accepted(cast, api_client):
    _, key = api_token_create(user=cast.owner, name="openai client")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api_client.get("/api/v1/base-models/").status_code == 200


def test_api_token_obtain(cast, api_client):
    response = api_client.post("/api/v1/auth/token/", {"username": "owner", "password": PASSWORD}, format="json")
    assert response.status_code == 201
    key = response.json()["token"]
    assert ApiToken.objects.get(user=cast.owner).key_hash == hash_key(key)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api_client.get("/api/v1/base-models/").status_code == 200


def test_api_token_obtain_wrong_password_creates_nothing(cast, api_client):
    response = api_client.post("/api/v1/auth/token/", {"username": "owner", "password": "no"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "That user name and password do not match."
    assert ApiToken.objects.count() == 0


@override_settings(MF_LOGIN_MAX_FAILURES=2, MF_LOGIN_DELAY_SECONDS=30)
def test_api_token_obtain_is_throttled_after_failures(cast, api_client, login_clock):
    for _ in range(2):
        api_client.post("/api/v1/auth/token/", {"username": "owner", "password": "no"}, format="json")
    response = api_client.post("/api/v1/auth/token/", {"username": "owner", "password": PASSWORD}, format="json")
    assert response.status_code == 429
    body = response.json()["error"]
    assert body["code"] == "throttled"
    assert body["message"] == "Too many failed log-in attempts. Expected available in 30 seconds."
    assert body["details"] == {"retry_after_seconds": 30}
    assert ApiToken.objects.count() == 0
