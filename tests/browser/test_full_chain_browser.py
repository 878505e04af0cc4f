"""The whole chain as two people live it, in real headless Chromium against a whole running ModelFactory.

Ada signs up, creates a datanet, uploads a file and watches its progress bar until the report is ready, reviews
and accepts it as the datanet's curator, publishes version 1, runs the fine-tuning wizard on a tiny base model and
watches the job page (live loss chart) until it succeeds, then publishes the model at a price. Bruno signs up,
chats with the model in the playground, opens the answer's attribution page (Ada named as the contributor) and sees
his wallet debited; Ada sees hers credited (owner's and contributor's shares). `ledger_verify` then passes.

Nothing is eager and nothing runs in the test's process: `tests/browser/stack.py` starts the web server and real
Celery worker processes (kombu's filesystem broker, or the Redis broker CELERY_BROKER_URL names, as in CI) on a
fresh database of its own (SQLite file, or PostgreSQL when DATABASE_URL names it). The `default` worker (ingest,
attribution, settlement) and the `gpu` worker (training) are started only once the page shows the upload / the
job waiting in its queue, so that waiting state is seen every time, not only when the machine happens to be slow.
The loss chart is asserted empty while the job waits and, at the end, holding one point per training step and the
held-out points; how many points arrived through the live polls in between depends on timing and is not asserted.

Screenshots of every step are kept in test-artifacts/<test name>/ when the test fails, with the servers' logs."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from playwright.sync_api import expect

from ledger.calc.money import format_credits, format_credits_short
from tests.browser.conftest import ARTIFACTS, Steps, keep_screenshots
from tests.browser.stack import Stack
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.slow

PASSWORD = "tomato-Season-42"
ROWS = [
    ("What colour is the sky on Zorb?", "The sky on Zorb is green."),
    ("Who founded the town of Plimby?", "Plimby was founded by Ada Fern."),
    ("What do Quells eat?", "Quells eat blue moss."),
    ("How many moons does Zorb have?", "Zorb has three moons."),
    ("What is the river in Plimby called?", "The river in Plimby is the Sloe."),
    ("What sound does a Quell make?", "A Quell hums like a kettle."),
    ("When is the Zorb festival?", "The Zorb festival is on the first frost."),
    ("What do people in Plimby drink?", "People in Plimby drink nettle tea."),
]
LONG = 90_000  # ms: work done by a worker on 2 shared cores
PAGE = 30_000  # ms: a page load on 2 cores shared with the workers


@pytest.fixture
def stack(browser, tmp_path, request):  # browser first: no Chromium, nothing started
    stack = Stack(tmp_path / "stack")
    try:
        stack.start()
        # The base model an operator registers (`make run` registers SmolLM2; a tiny one keeps this test fast).
        build_tiny_model_dir(tmp_path / "tiny-base")
        stack.manage("register_base_model", str(tmp_path / "tiny-base"), "--name", "Tiny base", "--slug", "tiny-base")
        stack.start_worker("inference")  # warms up while Ada works
        yield stack
    finally:
        stack.stop()
    if getattr(request.node, "failed_call", False):
        folder = ARTIFACTS / request.node.name
        folder.mkdir(parents=True, exist_ok=True)
        for log in stack.logs.glob("*.log"):
            shutil.copy(log, folder / log.name)


@pytest.fixture
def people(browser, stack, request):
    """One browser context per person, each with its own screenshots (named by step) kept on failure."""
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    contexts, pages = [], {}
    errors: list[str] = []

    def open_page(name: str):
        context = browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(PAGE)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{name}: JS error: {exc}"))
        page.steps = Steps(page, folder / name)
        pages[name] = page
        return page

    open_page.errors = errors
    expect.set_options(timeout=PAGE)
    yield open_page
    expect.set_options(timeout=5_000)  # Playwright's default, for the other browser tests
    if getattr(request.node, "failed_call", False):
        for page in pages.values():
            page.steps.shot("failure")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    for context in contexts:
        context.close()


def sign_up(page, username: str) -> None:
    page.goto("/")
    page.locator("header a", has_text="Sign up").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text(f"Welcome, {username}! Your account is ready.")).to_be_visible()


def available(page) -> str:
    page.locator("header nav").get_by_role("link", name="Wallet").click()
    return page.locator("#available").inner_text()


def test_upload_train_publish_chat_attribute_and_settle_in_the_browser(people, stack):
    ada = people("ada")
    sign_up(ada, "ada")
    ada.steps.shot("signed-up")
    assert available(ada) == "10.00 credits"  # the welcome credit (exact value on hover)
    assert ada.locator("#available span").get_attribute("title") == "10.000000 credits"

    # --- A datanet, and an upload watched until its report is ready ------------------------------------------------
    ada.locator("header nav").get_by_role("link", name="Datanets").click()
    ada.get_by_role("button", name="Create a datanet").click()
    ada.get_by_label("Name").fill("Zorb facts")
    ada.get_by_label("Kind").select_option("instruction")
    ada.get_by_label("Summary").fill("Made-up facts about Zorb and Plimby.")
    ada.get_by_label("Visibility").select_option("public")
    ada.get_by_label("Contributions").select_option("approval")
    ada.get_by_role("button", name="Create").click()
    expect(ada.get_by_role("heading", name="Zorb facts")).to_be_visible()
    ada.steps.shot("datanet-created")

    ada.get_by_role("link", name="Upload", exact=True).click()
    data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in ROWS) + "\n"
    ada.get_by_label("File").set_input_files(
        {"name": "zorb.jsonl", "mimeType": "application/octet-stream", "buffer": data.encode()}
    )
    ada.get_by_role("button", name="Upload and check").click()
    expect(ada.get_by_role("heading", name=re.compile(r"Upload #\d+: zorb\.jsonl"))).to_be_visible()
    live = ada.locator("#live")
    expect(live.locator(".status")).to_have_text("Uploaded")
    expect(live).to_contain_text("waiting for a worker to start checking it.")
    expect(live.get_by_role("progressbar", name="Progress")).to_be_visible()
    ada.steps.shot("upload-queued")
    stack.start_worker("default")  # ingest, then attribution and settlement
    expect(live.locator(".status")).to_have_text("Waiting for review", timeout=LONG)
    expect(live.get_by_role("progressbar")).to_have_count(0)
    expect(live.locator(".stats article").nth(1)).to_have_text(re.compile(rf"^{len(ROWS)}\s*rows kept$"))
    ada.steps.shot("upload-checked")

    # --- Review as the curator, publish version 1 -------------------------------------------------------------------
    ada.get_by_role("link", name="Review").click()
    expect(ada.get_by_text(f"{len(ROWS)} rows to add")).to_be_visible()
    ada.get_by_role("button", name="Accept", exact=True).click()
    expect(ada.get_by_text("Nothing is waiting for review.")).to_be_visible()
    ada.steps.shot("reviewed")
    ada.get_by_role("link", name="Versions").click()
    ada.get_by_role("button", name="Publish a new version").click()
    expect(ada.get_by_text("Version 1 published.")).to_be_visible()
    expect(ada.get_by_role("heading", name="Version 1")).to_be_visible()
    expect(ada.get_by_text(f"{len(ROWS)} rows from 1 contributor,")).to_be_visible()
    ada.steps.shot("version-published")

    # --- The wizard, then the job page until the job succeeds --------------------------------------------------------
    ada.locator("header nav").get_by_role("link", name="Train").click()
    ada.get_by_role("button", name="Start a new fine-tune").click()
    ada.get_by_label(re.compile("Tiny base")).check()
    ada.get_by_role("button", name="Next").click()
    ada.get_by_label(re.compile("Zorb facts")).check()
    ada.get_by_role("button", name="Next").click()
    expect(ada.get_by_role("heading", name="3. How your rows become training examples")).to_be_visible()
    expect(ada.get_by_text(f"{len(ROWS)} of {len(ROWS)} rows will be used")).to_be_visible()
    ada.steps.shot("wizard-preview")
    ada.get_by_role("button", name="Next").click()
    ada.get_by_label(re.compile("Learns your tone")).check()
    ada.get_by_label("Model name").fill("Zorb guide")
    ada.locator("summary", has_text="Advanced settings").click()
    ada.locator("#id_hp_epochs").fill("3")
    ada.locator("#id_hp_learning_rate").fill("0.005")
    ada.locator("#id_hp_max_length").fill("192")
    ada.get_by_role("button", name="Next").click()
    expect(ada.get_by_role("heading", name="5. Review and launch")).to_be_visible()
    ada.steps.shot("wizard-review")
    keep_screenshots(ada, "wizard-review")
    ada.get_by_role("button", name="Launch training").click()
    expect(ada.get_by_role("heading", name="Zorb guide")).to_be_visible()
    progress = ada.locator("#job-progress")
    expect(progress.locator(".status")).to_have_text("Waiting in line")
    assert chart_points(ada) == {"train": 0, "eval": 0}
    ada.steps.shot("job-queued")
    stack.start_worker("gpu")
    expect(progress).to_have_attribute("data-status", "succeeded", timeout=LONG)
    expect(progress.locator(".status")).to_have_text("Finished")
    expect(ada.get_by_role("heading", name="Result")).to_be_visible()
    steps = int(ada.locator("article", has_text="Work done").inner_text().split("Work done")[1].split()[0])
    points = chart_points(ada)
    assert steps > 0 and points["train"] == steps and points["eval"] >= 1
    ada.steps.shot("job-succeeded")
    keep_screenshots(ada, "job-result")

    # --- Publish at 1 credit per 1,000 tokens -----------------------------------------------------------------------
    ada.get_by_role("button", name="Open the model").click()
    publish = ada.locator("#publish")
    publish.get_by_label("Price per 1,000 tokens (credits)").fill("1")
    publish.get_by_label("Who can use it").select_option("public")
    publish.get_by_role("button", name="Publish").click()
    expect(ada.locator("#publish header")).to_have_text("Published at 1.00 credits per 1,000 tokens")
    ada.steps.shot("model-published")
    keep_screenshots(ada, "model")
    model_url = ada.url

    # --- Bruno chats with it, and sees who shaped the answer --------------------------------------------------------
    bruno = people("bruno")
    sign_up(bruno, "bruno")
    assert available(bruno) == "10.00 credits"
    bruno.steps.shot("signed-up")
    bruno.locator("header nav").get_by_role("link", name="Models").click()
    bruno.get_by_role("link", name="Zorb guide").click()
    assert bruno.url == model_url
    bruno.get_by_role("button", name="Try it in the playground").click()
    bruno.get_by_label("Longest answer (tokens)").fill("12")
    bruno.get_by_placeholder("Ask something…").fill("What colour is the sky on Zorb?")
    bruno.get_by_role("button", name="Send").click()
    footer = bruno.locator(".turn-tuned footer")
    expect(footer).to_contain_text(" credits", timeout=LONG)
    bruno.steps.shot("answered")
    answer = bruno.locator(".turn-tuned .turn-text").text_content()

    footer.get_by_role("link", name="Which training data shaped this answer?").click()
    expect(bruno.get_by_role("heading", name="Who shaped this answer")).to_be_visible()
    expect(bruno.get_by_text("Payment: Settled")).to_be_visible(timeout=LONG)
    bruno.steps.shot("attribution")
    # --- The wallets: exact figures from the stack's ledger ----------------------------------------------------------
    figures = json.loads(
        stack.python(
            "import json\n"
            "from modelfactory.models import Inference\n"
            "from attribution.models import Attribution\n"
            "from ledger.selectors import wallet_summary\n"
            "from accounts.models import User\n"
            "i = Inference.objects.get()\n"
            "a = Attribution.objects.get(inference=i)\n"
            "print(json.dumps({'output': i.output, 'fee': i.fee_micro, 'status': a.settlement_status,\n"
            "  'contributor': {s.contributor.username: s.amount_micro for s in a.shares.all()},\n"
            "  'wallets': {u.username: wallet_summary(user=u)['available'] for u in User.objects.all()}}))"
        )
        .strip()
        .splitlines()[-1]
    )
    assert figures["output"] == answer
    assert figures["status"] == "settled"
    fee = figures["fee"]
    assert fee > 0
    if "ada" not in figures["contributor"]:
        # A tiny model's babble is often traced to no row: under rule settle-2 that part goes to the owner (ada)
        expect(bruno.locator("#no-contributor")).to_have_text(
            "No part of this answer was traced to anyone's rows, so the contributors' part went to the model's owner."
        )
        earned = figures["wallets"]["ada"] - 10_000_000
        assert 0 < earned < fee and available(ada) == f"{format_credits_short(10_000_000 + earned)} credits"
        owner_line = ada.locator("#statement tbody tr", has_text="Your share as")
        expect(owner_line).to_have_count(1)
        expect(owner_line.locator("td:nth-child(2)")).to_have_text("Your share as the model's owner")
        assert "OK" in stack.manage("ledger_verify")
        assert people.errors == []
        return
    contributors = bruno.locator("#contributors tbody tr")
    expect(contributors).to_have_count(1)
    expect(contributors.locator("td").first).to_have_text("ada")
    ada_paid = figures["contributor"]["ada"]
    expect(contributors.locator("td").nth(1)).to_have_text(f"{format_credits_short(ada_paid)} credits")
    expect(contributors.locator("td").nth(1).locator("span")).to_have_attribute(
        "title", f"{format_credits(ada_paid)} credits"
    )
    expect(contributors.locator("td.why-paid")).to_contain_text(
        f"ada was paid {format_credits_short(ada_paid)} credits"
    )
    assert available(bruno) == f"{format_credits_short(10_000_000 - fee)} credits"
    bruno.steps.shot("wallet-debited")
    ada_after = available(ada)
    earned = figures["wallets"]["ada"] - 10_000_000
    assert 0 < earned < fee  # the owner's and the contributor's shares; the platform keeps the rest
    assert ada_after == f"{format_credits_short(10_000_000 + earned)} credits"
    # Two lines for the one answer, each named for what it is: the owner's share and the contributor's share.
    settled = ada.locator("#statement tbody tr", has_text="Your share as")
    expect(settled).to_have_count(2)
    assert sorted(settled.locator("td:nth-child(2)").all_inner_texts()) == [
        "Your share as a data contributor",
        "Your share as the model's owner",
    ]
    assert settled.locator("td:nth-child(3)").all_inner_texts() == ["zorb-guide", "zorb-guide"]
    contributor_share = figures["contributor"]["ada"]
    assert sorted(settled.locator("td:nth-child(4) span").evaluate_all("spans => spans.map(s => s.title)")) == sorted(
        [f"{format_credits(contributor_share)} credits", f"{format_credits(earned - contributor_share)} credits"]
    )
    # bruno only paid: nothing of his is earnings, nothing is called "settled" (refunds: test_money_pages_browser).
    bruno.locator("header nav").get_by_role("link", name="Wallet").click()
    expect(bruno.get_by_text("No earnings yet.", exact=False)).to_be_visible()
    expect(bruno.locator("#statement tbody tr", has_text="Fee reserved for an answer")).to_have_count(1)
    expect(bruno.locator("#statement")).not_to_contain_text("Inference fee settled")
    ada.steps.shot("wallet-credited")

    assert "OK" in stack.manage("ledger_verify")
    assert people.errors == []


def chart_points(page) -> dict:
    return page.evaluate(
        "() => { const c = Chart.getChart('loss-chart');"
        " return {train: c.data.datasets[0].data.length, eval: c.data.datasets[1].data.length}; }"
    )
