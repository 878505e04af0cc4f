"""Small words: one greeting on sign-up, "Model indexes" in the admin."""

import pytest
from django.urls import reverse

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def test_sign_up_greets_once(client):
    response = client.post(
        reverse("accounts:signup"),
        {"username": "newbie", "email": "newbie@example.com", "password1": PASSWORD, "password2": PASSWORD},
        follow=True,
    )
    page = response.content.decode()
    assert "Welcome, newbie! Your account is ready." in page
    assert "Welcome back" not in page
    assert "<h1>Your dashboard</h1>" in page


def test_a_later_log_in_says_welcome_back(client, cast):
    client.post(reverse("accounts:login"), {"username": "owner", "password": PASSWORD})
    assert "<h1>Welcome back, owner.</h1>" in client.get("/").content.decode()


def test_admin_says_model_indexes(client, cast):
    client.force_login(cast.staff)
    page = client.get(reverse("admin:index")).content.decode()
    assert "Model indexes" in page and "Model indexs" not in page
