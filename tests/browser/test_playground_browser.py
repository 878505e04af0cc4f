"""The playground in real headless Chromium: the answer streams into the page, next to the base model's."""

import pytest
from playwright.sync_api import expect

from modelfactory.models import Inference
from tests.factories import PASSWORD
from tests.inference.conftest import _clear_streams, _serving_settings, served, tiny_dirs  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_chat_in_the_playground_with_the_base_model_side_by_side(page, cast, served):  # noqa: F811
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("outsider")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto("/models/")
    page.get_by_role("link", name="Playground").click()
    expect(page.get_by_role("heading", name="Playground: Zorb Expert")).to_be_visible()
    page.get_by_label("Longest answer (tokens)").fill("8")
    page.get_by_label("Also ask the base model").check()
    page.get_by_placeholder("Ask something…").fill("What colour is the sky on Zorb?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".turn-tuned footer")).to_contain_text(" credits", timeout=30_000)
    expect(page.locator(".turn-base footer")).to_contain_text("Base model, free", timeout=30_000)
    page.steps.shot("answered")
    inference = Inference.objects.get()
    assert page.locator(".turn-tuned .turn-text").text_content() == inference.output
    assert inference.status == "completed" and inference.source == "playground"

    page.get_by_placeholder("Ask something…").fill("   ")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("alert")).to_have_text("Type a question first.")
