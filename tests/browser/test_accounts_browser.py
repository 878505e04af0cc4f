import re

import pytest
from playwright.sync_api import expect

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def test_sign_up_log_out_log_in_and_manage_an_api_key(page):
    page.goto("/")
    page.steps.shot("home")
    page.locator("header a", has_text="Sign up").click()
    page.get_by_label("Username").fill("gardener")
    page.get_by_label("Email").fill("gardener@example.com")
    page.get_by_label("Password", exact=True).fill("tomato-Season-42")
    page.get_by_label("Password confirmation").fill("tomato-Season-42")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text("Welcome, gardener! Your account is ready.")).to_be_visible()
    page.steps.shot("signed-up")

    page.locator("summary", has_text="gardener").click()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("link", name="Log in")).to_be_visible()

    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("gardener")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("That user name and password do not match. Check both and try again.")).to_be_visible()
    page.steps.shot("wrong-password")
    page.get_by_label("Password").fill("tomato-Season-42")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Welcome back, gardener.")).to_be_visible()

    page.goto("/accounts/tokens/")
    page.get_by_label("Name").fill("my laptop")
    page.get_by_role("button", name="Create a key").click()
    key = page.locator("#new-key").inner_text()
    assert re.fullmatch(r"mf_[A-Za-z0-9_-]{43}", key)
    page.steps.shot("key-created")
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("API key “my laptop” revoked: it no longer works.")).to_be_visible()


def test_phone_width_menu(page, cast):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("owner")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Welcome back, owner.")).to_be_visible()
    links = page.locator(".nav-links")
    expect(links).to_be_hidden()
    page.locator(".nav-toggle-label").click()
    expect(links).to_be_visible()
    page.steps.shot("phone-menu")
    # Nothing is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
