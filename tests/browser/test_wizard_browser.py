"""The fine-tuning wizard in Chromium: each step has its own address, so Back, Forward and a reload keep the step and
the choices; starting over asks first."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshots, log_in
from tests.finetune.conftest import _media, enqueued, tiny_base, version  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_back_forward_and_reload_keep_the_step_and_starting_over_asks(page, cast, live_server, tiny_base, version):  # noqa: F811
    log_in(page, live_server, cast.owner)
    page.goto("/train/new/")
    expect(page).to_have_url(re.compile(r"/train/new/\?step=1$"))
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_role("heading", name="2. Which data does it learn from?")).to_be_visible()
    expect(page).to_have_url(re.compile(r"\?step=2$"))
    page.get_by_label(re.compile("Zorb facts")).check()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_role("heading", name="3. How your rows become training examples")).to_be_visible()
    expect(page).to_have_url(re.compile(r"\?step=3$"))
    expect(page.get_by_text("Answer: the model learns to write this").first).to_be_visible()
    keep_screenshots(page, "wizard-examples")

    page.go_back()
    expect(page.get_by_role("heading", name="2. Which data does it learn from?")).to_be_visible()
    expect(page.get_by_label(re.compile("Zorb facts"))).to_be_checked()
    page.reload()
    expect(page.get_by_role("heading", name="2. Which data does it learn from?")).to_be_visible()
    page.go_forward()
    expect(page.get_by_role("heading", name="3. How your rows become training examples")).to_be_visible()

    page.goto("/train/")
    page.get_by_role("button", name="Start a new fine-tune").click()
    expect(page.get_by_role("heading", name="Start a new fine-tune?")).to_be_visible()
    expect(page.get_by_text("you reached step 3 of 5 (Examples), with 1 datanet version chosen.")).to_be_visible()
    keep_screenshots(page, "wizard-start-over")
    page.get_by_role("button", name="Continue where I left off").click()
    expect(page.get_by_role("heading", name="3. How your rows become training examples")).to_be_visible()
    page.goto("/train/new/?restart=1")
    page.get_by_role("button", name="Start over").click()
    expect(page.get_by_role("heading", name="1. Which base model do you start from?")).to_be_visible()
    expect(page).to_have_url(re.compile(r"\?step=1$"))
