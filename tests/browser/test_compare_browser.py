"""Compare runs in real Chromium: the owner ticks three jobs on the Train page and sees one chart with every job's
curves, the settings that differ and the answers side by side, with no script error or blocked resource.
Screenshots at 1280 and 390 px are kept in test-artifacts/pages/compare-*.png."""

import pytest
from playwright.sync_api import expect

from modelfactory.services import base_model_register
from tests.browser.conftest import keep_screenshots, visit
from tests.modelfactory_compare.test_compare import HP, _job, _sample
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_owner_compares_three_jobs(owner_page, cast, tmp_path):
    base = base_model_register(path=build_tiny_model_dir(tmp_path / "base"), name="Tiny base", slug="tiny-base")
    jobs = [
        _job(cast.owner, base, "a", hp=HP, samples=[_sample("Sky on Zorb?", "green")], losses=[2.0, 1.4, 1.0]),
        _job(cast.owner, base, "b", hp={**HP, "rank": 16}, samples=[_sample("Sky on Zorb?", "greenish")],
             losses=[2.1, 1.5, 1.2]),
        _job(cast.owner, base, "c", hp={**HP, "learning_rate": 0.001}, samples=[_sample("Sky on Zorb?", "teal")],
             losses=[1.9, 1.1, 0.7]),
    ]  # fmt: skip
    page = owner_page
    visit(page, "/train/")
    for job in jobs:
        page.get_by_label(f"Compare {job.name}").check()
    page.get_by_role("button", name="Compare the chosen jobs").click()
    page.wait_for_url("**/train/compare/?*")
    page.wait_for_load_state("networkidle")
    expect(page.locator("#differing-settings tbody tr")).to_have_count(2)
    expect(page.locator("#compared-answers tbody tr")).to_have_count(1)
    assert page.evaluate("Chart.getChart(document.getElementById('compare-chart')).data.datasets.length") == 6
    assert page.problems == [] and page.evaluate("window.__cspViolations") == []
    keep_screenshots(page, "compare")
