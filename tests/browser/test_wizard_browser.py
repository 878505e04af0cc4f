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


def test_memory_shows_as_a_range_rough_then_from_the_run_before(page, cast, live_server, tiny_base, version):  # noqa: F811
    from django.template.defaultfilters import filesizeformat

    from modelfactory import services
    from modelfactory.models import FineTuneJob
    from tests.finetune.conftest import FAST, launch_job

    def review() -> None:
        page.goto("/train/new/?restart=1")
        if page.get_by_role("button", name="Start over").count():
            page.get_by_role("button", name="Start over").click()
        page.get_by_role("button", name="Next").click()
        page.get_by_label(re.compile("Zorb facts")).check()
        for _ in range(2):
            page.get_by_role("button", name="Next").click()
        expect(page.get_by_role("heading", name="4. How thoroughly should it train?")).to_be_visible()
        expect(page.get_by_text("On your data here: about")).to_have_count(3)  # one line per preset
        keep_screenshots(page, "wizard-presets-cost")
        page.get_by_role("button", name="Next").click()
        expect(page.get_by_role("heading", name="5. Review and launch")).to_be_visible()

    log_in(page, live_server, cast.owner)
    review()
    memory = page.locator("article", has_text="Estimated memory")
    expect(memory).to_contain_text("a rough guess: it gets sharper after the first run on this computer")
    expect(memory).to_contain_text(re.compile(r"[\d.]+\sMB to [\d.]+\sMB"))
    keep_screenshots(page, "wizard-review-memory-rough")

    first, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                          hyperparameters=FAST, name="First", idempotency_key="m1")  # fmt: skip
    services.finetune_run(job_id=first.pk, hostname="w")
    first = FineTuneJob.objects.get(pk=first.pk)
    page.goto(f"/train/jobs/{first.pk}/")
    card = page.locator("article", has_text="Memory").filter(has_text="peak")
    expect(card).to_contain_text(f"peak {filesizeformat(first.metrics['peak_memory']['job'])}")
    low, high = (filesizeformat(first.estimate[key]) for key in ("memory_low", "memory_high"))
    expect(card).to_contain_text(f"estimated {low} to {high} (a rough guess: no earlier run on this computer)")
    keep_screenshots(page, "job-memory")

    review()  # the first run measured its stages: the next estimate is calibrated on it
    memory = page.locator("article", has_text="Estimated memory")
    expect(memory).to_contain_text("from the last 1 run on this computer")
    expect(memory).to_contain_text(
        re.compile(r"most while (training|checking the result|building the attribution index);")
    )
    keep_screenshots(page, "wizard-review-memory-calibrated")
