"""Every main page, as a logged-in owner, in real Chromium under the production Content-Security-Policy: no CSP
violation, no JavaScript error, no failed asset, and the scripts that draw things really ran."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import visit

pytestmark = pytest.mark.django_db(transaction=True)


def test_main_pages_work_under_the_content_security_policy(owner_page, world):
    page = owner_page
    for path in [
        "/",
        "/datanets/",
        f"/datanets/{world.datanet.slug}/",
        f"/datanets/{world.datanet.slug}/upload/",
        f"/datanets/{world.datanet.slug}/versions/",
        f"/datanets/{world.datanet.slug}/contributors/",
        f"/datanets/{world.datanet.slug}/settings/",
        "/datanets/new/",
        "/train/",
        "/train/new/",
        "/models/",
        f"/models/{world.model.slug}/",
        f"/models/{world.model.slug}/playground/",
        "/attribution/",
        f"/attribution/models/{world.model.slug}/",
        f"/attribution/datanets/{world.datanet.slug}/",
        "/accounts/profile/",
        "/accounts/tokens/",
    ]:
        visit(page, path)

    # The job page draws its live loss chart (Chart.js from a static file, data from json_script).
    visit(page, f"/train/jobs/{world.job.pk}/")
    assert page.evaluate("Chart.getChart('loss-chart').data.datasets[0].data.length") == 5

    # The wallet draws its three earnings charts.
    visit(page, "/wallet/")
    assert page.evaluate("['earnings-model', 'earnings-datanet', 'earnings-day'].map(i => !!Chart.getChart(i))") == [
        True,
        True,
        True,
    ]

    # htmx works: the datanet row search swaps the table in place.
    visit(page, f"/datanets/{world.datanet.slug}/")
    page.get_by_role("searchbox").fill("Quells")
    expect(page.locator("#rows")).to_contain_text("blue moss")
    expect(page.locator("#rows")).not_to_contain_text("Plimby")
    assert page.evaluate("window.__cspViolations") == [] and page.problems == []

    # Swagger UI renders the schema (its start-up script is a file, its styles a stylesheet).
    visit(page, "/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("ModelFactory API")
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.evaluate("window.__cspViolations") == [] and page.problems == []


def test_an_inline_script_is_blocked(owner_page, world):
    """The policy is enforced, not only sent: an inline script injected into a page is refused and reported."""
    page = owner_page
    visit(page, "/")
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
        " document.body.appendChild(s); }"
    )
    page.wait_for_timeout(100)
    assert page.evaluate("window.__ran") is None
    assert page.evaluate("window.__cspViolations")[0].startswith("script-src-elem blocked inline")
    page.problems.clear()
