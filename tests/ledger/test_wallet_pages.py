"""The wallet says what each line is: an owner's share, a contributor's share, a refund of the unused part of a
reserved fee; earnings (and their charts) count shares only; each line's receipt is readable and checked."""

import json
import re

import pytest
from django.utils import timezone

from ledger.models import Account
from ledger.selectors import earnings
from ledger.services import account_for_user, hold_create, settlement_post
from tests.factories import UserFactory

LABELS = {"model": "zorb-guide", "datanet": "Zorb facts"}


@pytest.fixture
def answers(cast, fund, settings):
    """ada owns the model and gave data; bruno gave data. bruno asks once (1 credit reserved, fee 0.3), ada asks her
    own model once (0.5 reserved, fee 0.2). Default split 20/70/10."""
    settings.MF_LEDGER_SHARDS = 1
    Account.objects.create(role=Account.Role.PLATFORM, shard=0)
    ada, bruno = cast.owner, UserFactory(username="bruno")
    fund(ada, 10)
    fund(bruno, 10)
    hold_create(key="h1", payer_user_id=bruno.pk, amount_micro=1_000_000)
    first = settlement_post(
        key="s1", fee_micro=300_000, owner_user_id=ada.pk, contributor_shares={ada.pk: 1, bruno.pk: 1},
        hold_key="h1", metadata=LABELS,
    )  # fmt: skip
    hold_create(key="h2", payer_user_id=ada.pk, amount_micro=500_000)
    second = settlement_post(
        key="s2", fee_micro=200_000, owner_user_id=ada.pk, contributor_shares={bruno.pk: 1},
        hold_key="h2", metadata=LABELS,
    )  # fmt: skip
    account_for_user(user_id=ada.pk)
    return ada, bruno, first, second


def test_earnings_count_shares_only_never_refunds(answers):
    ada, bruno, _, _ = answers
    today = timezone.localdate().isoformat()
    # ada: owner 60_000 + contributor 105_000 (bruno's answer), owner 40_000 (her own; her 300_000 refund is not one)
    assert earnings(user=ada) == {
        "by_model": {"zorb-guide": 205_000}, "by_datanet": {"Zorb facts": 205_000}, "by_day": {today: 205_000},
    }  # fmt: skip
    # bruno paid for the first answer and still earned his contributor share in it: 105_000 + 140_000
    assert earnings(user=bruno)["by_day"] == {today: 245_000}


def test_wallet_labels_each_line_and_charts_earnings_only(client, answers):
    ada, _, _, _ = answers
    client.force_login(ada)
    response = client.get("/wallet/")
    lines = [(p.label, p.amount) for p in response.context["page"].object_list]
    assert lines == [
        ("Refund: the unused part of a reserved fee", 300_000),
        ("Your share as the model's owner", 40_000),
        ("Fee reserved for an answer", -500_000),
        ("Your share as a data contributor", 105_000),
        ("Your share as the model's owner", 60_000),
        ("Credit grant", 10_000_000),
    ]
    body = response.content.decode()
    chart = re.search(r'<script id="earnings-by-day" type="application/json">(.*?)</script>', body).group(1)
    assert json.loads(chart) == {timezone.localdate().isoformat(): 205_000}
    assert "Inference fee settled" not in body.split('id="statement"')[1]
    assert '<span class="amount" title="0.300000 credits">0.30</span>' in body


def test_receipt_is_readable_and_verified(client, answers):
    _, bruno, first, _ = answers
    client.force_login(bruno)
    response = client.get(f"/wallet/receipts/{first.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert [(line.label, line.amount) for line in response.context["lines"]] == [
        ("Your share as a data contributor", 105_000),
        ("Refund: the unused part of a reserved fee", 700_000),
    ]
    assert response.context["checks"] == {"content": True, "link": True, "checkpoint": None}
    assert "<strong>Verified</strong>" in body
    assert 'How the fee of <span class="amount" title="0.300000 credits">0.30</span> credits was shared' in body
    assert (
        'The people whose data trained the model (2): <span class="amount" title="0.210000 credits">0.21</span> '
        "credits" in body
    )
    # The exact amounts stay in the technical details.
    assert "fee 0.300000 (owner 0.060000, contributors 0.210000, platform 0.030000)" in body
    assert f'href="/api/v1/ledger/proofs/{first.pk}/?format=json"' in body


def test_receipt_of_someone_elses_transaction_is_404(client, answers, cast):
    _, _, first, _ = answers
    client.force_login(cast.outsider)
    assert client.get(f"/wallet/receipts/{first.pk}/").status_code == 404


def test_receipt_says_not_verified_when_a_record_was_changed(client, answers, monkeypatch):
    ada, _, _, second = answers
    client.force_login(ada)
    monkeypatch.setattr("ledger.selectors.chain_hash", lambda previous, content: "0" * 64)  # contents changed
    response = client.get(f"/wallet/receipts/{second.pk}/")
    assert response.context["verified"] is False
    assert "<strong>Not verified</strong>" in response.content.decode()
