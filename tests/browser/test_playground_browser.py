"""The playground in real headless Chromium: the answer streams into the page, next to the base model's."""

import time

import pytest
from playwright.sync_api import expect

from modelfactory.models import Inference
from modelfactory.services import fee_for_tokens
from tests.browser.conftest import keep_screenshots, log_in
from tests.factories import PASSWORD
from tests.inference.conftest import PRICE, _clear_streams, _serving_settings, served, tiny_dirs  # noqa: F401 (fixtures)

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


def test_stop_keeps_what_the_page_shows_and_bills_exactly_that(page, cast, served, live_server, monkeypatch):  # noqa: F811
    from modelfactory.serving import engine as engine_module

    real_step = engine_module.Engine.step
    monkeypatch.setattr(engine_module.Engine, "step", lambda self: (time.sleep(0.15), real_step(self))[1])
    log_in(page, live_server, cast.outsider)
    page.goto("/models/zorb-expert/playground/")
    expect(page.get_by_label("Longest answer (tokens)")).to_have_value("128")
    page.locator("#temperature").fill("0")
    expect(page.locator("#temperature-value")).to_have_text("0")
    keep_screenshots(page, "playground")
    page.get_by_placeholder("Ask something…").fill("Tell me a long story about Zorb")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("The model is writing…")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    text = page.locator(".turn-tuned .turn-text")
    expect(text).not_to_have_text("", timeout=30_000)  # a first piece arrived
    keep_screenshots(page, "playground-writing")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".turn-tuned footer")).to_contain_text("stopped early", timeout=30_000)
    expect(page.get_by_text("The model is writing…")).to_be_hidden()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    keep_screenshots(page, "playground-stopped")

    inference = Inference.objects.get()
    assert inference.finish_reason == "cancelled" and inference.completion_tokens < 128
    assert text.text_content() == inference.output  # what was recorded (and billed) is what the page shows
    assert inference.completion_tokens == len(inference.output_token_ids)
    assert inference.fee_micro == fee_for_tokens(
        price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + inference.completion_tokens
    )


def test_an_answer_from_the_data_lists_its_sources_under_it(page, cast, served, live_server):  # noqa: F811
    """A model published with retrieval: the answer shows its sources (row text, a link to the row) to the owner of
    the private datanet; a question that finds nothing says the answer has no sources."""
    from datanets.models import Datanet
    from ledger.services import credit_grant
    from modelfactory.models import TrainedModel
    from tests.inference.retrieval_data import FACTS, add_row, make_datanet, publish_version, train_on

    datanet = make_datanet(owner=cast.owner, visibility=Datanet.Visibility.PRIVATE)
    rows = [add_row(datanet, cast.teammate, text) for text in FACTS]
    version = publish_version(datanet)
    train_on(served, version)
    TrainedModel.objects.filter(pk=served.pk).update(retrieval_enabled=True)
    served.retrieval_versions.set([version])
    credit_grant(user_id=cast.owner.pk, amount_micro=10**6, granted_by=cast.staff, key="grant-owner-sources")
    log_in(page, live_server, cast.owner)
    page.goto("/models/zorb-expert/playground/")
    page.get_by_label("Longest answer (tokens)").fill("4")
    page.get_by_placeholder("Ask something…").fill("What is the capital of Zorbia?")
    page.get_by_role("button", name="Send").click()
    sources = page.get_by_role("region", name="Sources")
    expect(sources.get_by_role("heading", name="Sources")).to_be_visible(timeout=30_000)
    first = sources.locator("li").first
    expect(first.get_by_role("link")).to_have_text(FACTS[0])
    assert first.get_by_role("link").get_attribute("href").endswith(f"#row-{rows[0].pk}")
    keep_screenshots(page, "playground-sources")
    inference = Inference.objects.get()
    assert [c["record_id"] for c in inference.retrieval["citations"]][0] == rows[0].pk

    page.get_by_placeholder("Ask something…").fill("photosynthesis in cacti")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#no-sources")).to_be_visible(timeout=30_000)
