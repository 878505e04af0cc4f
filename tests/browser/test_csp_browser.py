"""Every main page, as a logged-in owner, in real Chromium under the production Content-Security-Policy: no CSP
violation, no JavaScript error, no failed asset, and the scripts that draw things really ran."""

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import expect

from tests.world import build_world

pytestmark = pytest.mark.django_db(transaction=True)

RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " + e.sourceFile
    + ":" + e.lineNumber);
});
"""


@pytest.fixture
def world(cast, tmp_path, monkeypatch, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    return build_world(cast, tmp_path, monkeypatch)


@pytest.fixture
def owner_page(page, cast, live_server):
    client = Client()
    client.force_login(cast.owner)
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )  # fmt: skip
    page.add_init_script(RECORD_VIOLATIONS)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"JS error: {exc}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.problems = problems
    return page


def visit(page, path: str) -> None:
    response = page.goto(path)
    assert response.status == 200, path
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_load_state("networkidle")
    page.steps.shot(path.strip("/").replace("/", "_") or "home")
    violations = page.evaluate("window.__cspViolations")
    assert violations == [], f"{path}: {violations}"
    assert page.problems == [], f"{path}: {page.problems}"


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
    assert page.evaluate("document.getElementById('loss-chart').mfChart.data.datasets[0].data.length") == 5

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
