"""A curator rejects an upload as spam on the review page, which states what each choice does to the upload's bond,
and the datanet page then shows the datanet's pool, in real Chromium. Screenshots at 1280 and 390 px are kept in
test-artifacts/pages/ (review-reject-grounds, datanet-pool)."""

import pytest
from playwright.sync_api import expect

from datanets import services as datanet_services
from datanets.models import Datanet
from ledger.models import Account, Bond
from ledger.services import credit_grant
from tests.browser.conftest import keep_screenshots, visit
from tests.datanets.conftest import QA, jsonl, upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_reject_as_spam_then_the_pool_on_the_datanet_page(owner_page, cast, live_server, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    page = owner_page
    datanet = datanet_services.datanet_create(
        owner=cast.owner, name="Bonded garden", kind="instruction", summary="Rows with a bond.",
        policy=Datanet.Policy.APPROVAL,
    )  # fmt: skip
    datanet = datanet_services.datanet_update(datanet=datanet, actor=cast.owner, bond_micro=1_000_000)
    credit_grant(user_id=cast.outsider.pk, amount_micro=2_000_000, granted_by=cast.staff, memo="test")
    contribution = datanet_services.contribution_create(
        datanet=datanet, contributor=cast.outsider, upload=upload("spam.jsonl", jsonl(QA)), enqueue=False
    )
    datanet_services.contribution_ingest(contribution_id=contribution.pk)

    visit(page, f"/datanets/{datanet.slug}/review/")
    expect(page.get_by_text("the bond of 1.00 credits goes back to outsider", exact=False)).to_be_visible()
    expect(page.get_by_text("is forfeited to this datanet's pool", exact=False)).to_be_visible()
    keep_screenshots(page, "review-reject-grounds")
    page.get_by_label("Spam", exact=False).check()
    page.get_by_label("Reason").fill("Advertising, not gardening answers")
    page.get_by_role("button", name="Reject").click()
    expect(page.get_by_text(f"Upload #{contribution.pk} rejected: spam.")).to_be_visible()
    assert Bond.objects.get(contribution_id=contribution.pk).status == Bond.Status.SLASHED
    assert Account.objects.get(role=Account.Role.DATANET_POOL, datanet_id=datanet.pk).balance == 1_000_000

    visit(page, f"/datanets/{datanet.slug}/")
    expect(page.locator("#pool")).to_contain_text("This datanet's pool: 1.00 credits")
    expect(page.locator("#pool")).to_contain_text("Advertising, not gardening answers")
    keep_screenshots(page, "datanet-pool")
