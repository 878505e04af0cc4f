"""Pending earnings in the wallet, and a curator confirming a flagged contribution next to the contributors'
reputation, in real Chromium. Screenshots at 1280 and 390 px are kept in test-artifacts/pages/ (wallet-pending,
datanet-curator, wallet-forfeited)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from attribution.models import ContributionValue, ModelIndex
from datanets import services as datanet_services
from ledger.services import PendingPart, credit_grant, settlement_post
from tests.browser.conftest import keep_screenshots, log_in, visit

pytestmark = pytest.mark.django_db(transaction=True)


def test_pending_earnings_and_a_confirmed_flag(owner_page, world, cast, live_server):
    page = owner_page
    datanet_services.datanet_update(datanet=world.datanet, actor=cast.owner, holding_days=7)
    credit_grant(user_id=cast.outsider.pk, amount_micro=5_000_000, granted_by=cast.staff, memo="test")
    settlement_post(
        key="pending-answer", payer_user_id=cast.outsider.pk, fee_micro=1_000_000, owner_user_id=cast.owner.pk,
        contributor_shares={cast.teammate.pk: 1}, metadata={"model": world.model.name},
        pending={cast.teammate.pk: [PendingPart(world.contribution.pk, world.datanet.pk, 1,
                                                timezone.now() + timedelta(days=7))]},
    )  # fmt: skip
    index = ModelIndex.objects.create(
        job=world.job, folder="x", index_path="x", spans_path="x", owners_path="x", method_version="poa-2", k=8,
        seed=1, rows=3, bytes=1, build_seconds=0.1,
    )  # fmt: skip
    ContributionValue.objects.create(
        index=index, contribution=world.contribution, contributor=cast.teammate, datanet=world.datanet, value=-3.2,
        rows=3, z=-4.1, p=0.01, harmful=True,
    )  # fmt: skip
    log_in(page, live_server, cast.teammate)
    visit(page, "/wallet/")
    expect(page.locator("#earnings-pending")).to_contain_text("Earnings under review")
    expect(page.get_by_text("Available on", exact=False).first).to_be_visible()
    keep_screenshots(page, "wallet-pending")

    log_in(page, live_server, cast.owner)
    visit(page, f"/attribution/datanets/{world.datanet.slug}/")
    expect(page.locator("#reputation")).to_contain_text("teammate")
    keep_screenshots(page, "datanet-curator")
    page.get_by_label("Why (the contributor reads this)").fill("The answers it taught are wrong")
    page.get_by_role("button", name="Confirm harmful").click()
    expect(page.get_by_text("Confirmed harmful: its rows leave the next version", exact=False)).to_be_visible()

    log_in(page, live_server, cast.teammate)
    visit(page, "/wallet/")
    expect(page.get_by_text("The answers it taught are wrong", exact=False).first).to_be_visible()
    keep_screenshots(page, "wallet-forfeited")
