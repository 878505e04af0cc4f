"""What a person sees on the attribution page, the wallet and its receipts, the error pages, and a partial request
after logging out, in real Chromium. Screenshots of the attribution page, the wallet and the review page at 1280
and 390 px are kept in test-artifacts/pages/."""

import json
import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from attribution.models import Attribution, AttributionShare
from datanets.models import Record
from ledger.services import hold_create, settlement_post
from modelfactory.models import Inference
from tests.browser.conftest import keep_screenshots, log_in, visit

pytestmark = pytest.mark.django_db(transaction=True)

SENTENCE = (
    "{name} was paid 0.105 credits (50% of what the answer paid its contributors) although none of the answer was "
    "traced to their rows: the 100% of the answer that could not be traced to anyone is shared by how many training "
    "rows each person gave."
)


def untraced_answer(world, cast) -> Inference:
    """The outsider asked the owner's model; nothing in the answer could be traced (all paid by rows given). Fee 0.3
    of 1 credit reserved: the owner and the teammate get 0.06 owner's share and 0.105 each as contributors."""
    labels = {"model": world.model.name, "datanet": world.datanet.name}
    hold_create(key="answer-hold", payer_user_id=cast.outsider.pk, amount_micro=1_000_000)
    inference = Inference.objects.create(
        caller=cast.outsider, model=world.model, model_version=world.model.versions.get(), source="api",
        status="completed", messages=[{"role": "user", "content": "What colour is the sky on Zorb?"}],
        output="The sky on Zorb is green.", price_per_1k_tokens=0, fee_reserved_micro=1_000_000, fee_micro=300_000,
        hold_key="answer-hold", completed_at=timezone.now(),
    )  # fmt: skip
    tx = settlement_post(
        key="answer-settle", fee_micro=300_000, owner_user_id=cast.owner.pk, hold_key="answer-hold",
        contributor_shares={cast.owner.pk: 1, cast.teammate.pk: 1}, metadata={**labels, "inference_id": inference.pk},
    )  # fmt: skip
    rows = list(Record.objects.filter(datanet=world.datanet).order_by("pk")[:2])
    attribution = Attribution.objects.create(
        inference=inference, status="done", method_version="poa-2", unattributed=1.0, settlement_rule="settle-1",
        top_rows=[{"record_id": rows[0].pk, "contributor_id": rows[0].contributor_id, "score": 27.343},
                  {"record_id": rows[1].pk, "contributor_id": rows[1].contributor_id, "score": 9.114}],
        settlement_status="settled", settlement_tx=tx, finished_at=timezone.now(),
    )  # fmt: skip
    for user in (cast.owner, cast.teammate):
        AttributionShare.objects.create(
            attribution=attribution, contributor=user, model=world.model, share=0.0, settled_share=0.5,
            amount_micro=105_000, created_at=timezone.now(),
        )  # fmt: skip
    # The owner asks their own model: 0.5 reserved, fee 0.2; 0.3 comes back to them as a refund, not as earnings.
    hold_create(key="own-hold", payer_user_id=cast.owner.pk, amount_micro=500_000)
    settlement_post(
        key="own-settle", fee_micro=200_000, owner_user_id=cast.owner.pk, hold_key="own-hold",
        contributor_shares={cast.teammate.pk: 1}, metadata=labels,
    )  # fmt: skip
    return inference


def test_attribution_page_explains_each_payment(owner_page, world, cast):
    page = owner_page
    inference = untraced_answer(world, cast)
    visit(page, f"/attribution/inferences/{inference.pk}/")
    rows = page.locator("#contributors tbody tr")
    expect(rows).to_have_count(2)
    assert rows.locator("td.why-paid").all_inner_texts() == [
        SENTENCE.format(name="owner"),
        SENTENCE.format(name="teammate"),
    ]
    assert rows.locator("td:nth-child(2)").all_inner_texts() == ["0.105 credits", "0.105 credits"]
    assert rows.locator("td:nth-child(2) span").first.get_attribute("title") == "0.105000 credits"
    influence = page.locator("ol.rows small").all_inner_texts()
    assert [text.split(" · ")[1] for text in influence] == [
        "75% of the influence of the rows listed here",
        "25% of the influence of the rows listed here",
    ]
    text = page.locator("main").inner_text()
    assert "27.343" not in text and "influence 27" not in text and "Share 0%" not in text
    assert not re.search(r"\d\.\d{6}", text)  # no six-decimal amounts outside a details view
    how = page.locator("#how-computed")
    expect(how.get_by_text("settlement rule settle-1", exact=False)).to_be_hidden()
    how.locator("summary").click()
    expect(how.get_by_text("settlement rule settle-1", exact=False)).to_be_visible()
    keep_screenshots(page, "attribution-answer")

    # The overview agrees with the wallet: both count the answer that paid the owner for untraced data.
    visit(page, "/attribution/")
    expect(page.get_by_text("No answer has been traced to your data yet")).to_have_count(0)
    expect(page.locator("main article").first).to_contain_text("Your data was used in 1 answer of 1 model")


def test_wallet_separates_refunds_from_earnings_and_receipts_are_readable(owner_page, world, cast):
    page = owner_page
    untraced_answer(world, cast)
    visit(page, "/wallet/")
    # Earnings: 0.4 + 0.7 (the world's answer, owner and contributor), 0.06 + 0.105 (the untraced one), 0.04 (own
    # model's owner share): 1.305 credits; the 0.3 refund is not earnings.
    by_day = json.loads(page.locator("#earnings-by-day").text_content())
    assert by_day == {timezone.localdate().isoformat(): 1_305_000}
    assert page.evaluate("Chart.getChart('earnings-day').data.datasets[0].data") == [1.305]
    assert page.evaluate("Chart.getChart('earnings-model').data.datasets[0].data") == [1.305]
    lines = page.locator("#statement tbody tr")
    whats = lines.locator("td:nth-child(2)").all_inner_texts()
    amounts = lines.locator("td:nth-child(4)").all_inner_texts()
    assert list(zip(whats, amounts, strict=True))[:3] == [
        ("Refund: the unused part of a reserved fee", "0.30"),
        ("Your share as the model's owner", "0.04"),
        ("Fee reserved for an answer", "-0.50"),
    ]
    assert "Inference fee settled" not in page.locator("#statement").inner_text()
    assert page.locator("#available span").get_attribute("title").endswith("000 credits")
    assert not re.search(r"\d\.\d{6}", page.locator("main").inner_text())
    keep_screenshots(page, "wallet")
    # On a phone the statement drops its model column, so that each line's amount is on screen without scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    headers = page.locator("#statement thead th")
    expect(headers.filter(has_text="Model")).to_be_hidden()
    assert page.locator("#statement thead th.num").first.bounding_box()["x"] + 60 <= 390  # "Amount"
    page.set_viewport_size({"width": 1280, "height": 900})
    expect(headers.filter(has_text="Model")).to_be_visible()

    lines.first.get_by_role("link").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Receipt #\d+$"))).to_be_visible()
    expect(page.locator("#receipt-lines tbody tr")).to_have_text(
        ["Your share as the model's owner0.04", "Refund: the unused part of a reserved fee0.30"]
    )
    check = page.locator("#receipt-check")
    expect(check.locator("header")).to_have_text("Verified")
    expect(check).to_contain_text("This record still gives the fingerprint stored when it was written")
    raw = check.get_by_role("link", name="The raw proof (JSON)")
    expect(raw).to_be_hidden()
    check.locator("summary").click()
    keep_screenshots(page, "receipt")
    href = raw.get_attribute("href")
    proof = page.request.get(href).json()
    assert proof["seq"] == int(page.locator("h1").inner_text().split("#")[1])
    assert page.problems == []


def test_error_pages_are_friendly_and_in_the_site_layout(page, world, cast, live_server):
    log_in(page, live_server, cast.outsider)
    response = page.goto(f"/datanets/{world.datanet.slug}/")  # private: not even its existence is told
    assert response.status == 404
    expect(page.get_by_role("heading", name="We could not find that page")).to_be_visible()
    expect(page.locator("header.site-header")).to_be_visible()
    response = page.goto(f"/datanets/{world.public_datanet.slug}/review/")  # public: say why
    assert response.status == 403
    expect(page.get_by_role("heading", name="You cannot open this page")).to_be_visible()
    expect(page.locator("#error-reason")).to_have_text("Only this datanet's curators can review its contributions.")
    assert "URLconf" not in page.content() and "Traceback" not in page.content()


def test_review_page_screenshots(owner_page, world):
    visit(owner_page, f"/datanets/{world.public_datanet.slug}/review/")
    keep_screenshots(owner_page, "review")


def test_a_partial_request_after_logging_out_sends_the_whole_page_to_log_in(owner_page, world):
    page = owner_page
    visit(page, "/wallet/")
    page.context.clear_cookies()  # logged out in another tab
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=%2Fwallet%2F$"))
    expect(page.get_by_role("heading", name="Wallet")).to_have_count(0)
    expect(page.locator("form input[name=username]")).to_have_count(1)
