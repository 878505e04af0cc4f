"""Real headless Chromium (Debian's `chromium`) driven by Playwright, against pytest-django's live server.

Screenshots of every step are written to test-artifacts/<test name>/ when a test fails."""

import contextlib
import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from tests.world import build_world

CHROMIUM = os.environ.get("MF_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Playwright's sync API runs an event loop in this thread; Django's ORM in the same thread is still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.failed_call = report.failed
    return report


class Steps:
    """Takes a screenshot per named step; kept only when the test fails."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.count = page, folder, 0

    def shot(self, name: str) -> None:
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)


@pytest.fixture
def page(browser, live_server, request):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    page.steps = Steps(page, folder)
    yield page
    if getattr(request.node, "failed_call", False):
        page.steps.shot("failure")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    context.close()


RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " + e.sourceFile
    + ":" + e.lineNumber);
});
"""


@pytest.fixture
def world(cast, tmp_path, monkeypatch, settings):
    """tests/world.py's populated world, for pages with something on them."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return build_world(cast, tmp_path, monkeypatch)


@pytest.fixture
def owner_page(page, cast, live_server):
    """The page, logged in as the owner; CSP violations in window.__cspViolations, JS errors, failed requests and
    HTTP errors in page.problems."""
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
    """Opens `path` and asserts it came under the policy, with no violation and no problem."""
    response = page.goto(path)
    assert response.status == 200, path
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_load_state("networkidle")
    page.steps.shot(path.strip("/").replace("/", "_") or "home")
    violations = page.evaluate("window.__cspViolations")
    assert violations == [], f"{path}: {violations}"
    assert page.problems == [], f"{path}: {page.problems}"


SCREENS = ARTIFACTS / "pages"


def next_frames(page) -> None:
    """Waits two animation frames: what a resize changes is laid out (and a chart redrawn) on one of them."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def keep_screenshots(page, name: str) -> None:
    """Full-page screenshots at 1280 and 390 px wide, kept whatever the outcome in test-artifacts/pages/
    (<name>-1280.png, <name>-390.png); the page must fit the narrow screen without sideways scrolling."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    SCREENS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        # two animation frames: a chart resizes to the new width on one (else the shot keeps its old width); on a
        # loaded machine a chart's resize can come frames later, so wait (up to 3 s) until the page fits
        next_frames(page)
        with contextlib.suppress(PlaywrightTimeoutError):  # still too wide: the assertion below says so
            page.wait_for_function("w => document.documentElement.scrollWidth <= w", arg=width, timeout=3000)
        page.screenshot(path=str(SCREENS / f"{name}-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} is wider than {width} px"
    page.set_viewport_size({"width": 1280, "height": 900})


def log_in(page, live_server, user) -> None:
    """Gives the browser `user`'s session cookie."""
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )  # fmt: skip
