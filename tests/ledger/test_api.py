"""The ledger's REST endpoints and wallet pages: shapes, scoping, errors, CSV safety."""

import csv
import io

import pytest
from django.urls import reverse

from ledger.calc.canonical import chain_hash
from ledger.calc.merkle import verify_inclusion
from ledger.models import Withdrawal
from ledger.services import checkpoint_create, settlement_post
from ledger.views import csv_safe
from tests.ledger.amounts import BAD
from tests.ledger.conftest import CREDIT, snapshot, wallet_balance

pytestmark = pytest.mark.django_db


@pytest.fixture
def settled(cast, fund):
    fund(cast.outsider, 10)
    return settlement_post(
        key="inference:1",
        payer_user_id=cast.outsider.pk,
        fee_micro=2 * CREDIT,
        owner_user_id=cast.owner.pk,
        contributor_shares={cast.teammate.pk: 1},
        metadata={"model": "=cmd|' /C calc'!A0", "datanet": "laws"},
        memo="-2+3",
    )


def test_balance_shape(api_client, cast, settled):
    api_client.force_authenticate(cast.owner)
    assert api_client.get("/api/v1/ledger/balance/").json() == {
        "currency": "CRD",
        "balance": "0.400000",
        "available": "0.400000",
        "earnings_pending": "0.000000",
        "earnings_next_release_at": None,
    }


def test_transactions_are_the_callers_only(api_client, cast, settled):
    api_client.force_authenticate(cast.teammate)
    body = api_client.get("/api/v1/ledger/transactions/").json()
    assert len(body["results"]) == 1
    line = body["results"][0]
    assert (line["transaction_id"], line["kind"], line["amount"], line["running_balance"]) == (
        settled.pk,
        "settlement",
        "1.400000",
        "1.400000",
    )
    api_client.force_authenticate(cast.staff)
    assert api_client.get("/api/v1/ledger/transactions/").json()["results"] == []


def test_statement_has_one_line_per_posting_each_with_its_own_id(api_client, cast, fund):
    """The owner who also contributed is paid twice by one settlement: two lines, told apart by posting_id."""
    fund(cast.outsider, 10)
    settled = settlement_post(
        key="inference:2", payer_user_id=cast.outsider.pk, fee_micro=2 * CREDIT, owner_user_id=cast.owner.pk,
        contributor_shares={cast.owner.pk: 1}, metadata={}, memo="",
    )  # fmt: skip
    postings = list(settled.postings.filter(account__owner=cast.owner).order_by("-id").values_list("id", "amount"))
    assert len(postings) == 2
    api_client.force_authenticate(cast.owner)
    lines = api_client.get("/api/v1/ledger/transactions/").json()["results"]
    assert [(line["posting_id"], line["transaction_id"]) for line in lines] == [(p, settled.pk) for p, _ in postings]
    assert [line["amount"] for line in lines] == [f"{a / CREDIT:.6f}" for _, a in postings]


def test_statement_pages_by_cursor(api_client, cast, fund):
    for n in range(5):
        fund(cast.owner, n + 1)
    api_client.force_authenticate(cast.owner)
    everything = api_client.get("/api/v1/ledger/transactions/?page_size=200").json()
    assert set(everything) == {"next", "previous", "results", "anchor"}
    expected = [line["posting_id"] for line in everything["results"]]
    assert len(expected) == 5
    seen, url, pages = [], "/api/v1/ledger/transactions/?page_size=2", 0
    while url:
        body = api_client.get(url).json()
        seen += [line["posting_id"] for line in body["results"]]
        assert "cursor=" in (body["next"] or "cursor=") and "page=" not in (body["next"] or "")
        url, pages = body["next"], pages + 1
        fund(cast.owner, 1)  # new lines arriving while the client pages never shift what it reads
    assert (seen, pages) == (expected, 3)


@pytest.mark.parametrize("cursor", ["null", "%F4%86%B1%96", "bz0tMQ%3D%3D"])  # the last: a negative offset
def test_a_bad_cursor_is_refused_naming_it(api_client, cast, cursor):
    api_client.force_authenticate(cast.owner)
    response = api_client.get(f"/api/v1/ledger/transactions/?cursor={cursor}")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "cursor": ["This is not a cursor this list gave out; follow `next` from the first page."]
    }


@pytest.mark.parametrize("value", ["null", "0", "-1", "201", "ten", "1e2", "9" * 5000])
def test_a_bad_page_size_is_refused_naming_it(api_client, cast, value):
    api_client.force_authenticate(cast.owner)
    for path in ("/api/v1/ledger/transactions/", "/api/v1/ledger/withdrawals/"):
        response = api_client.get(f"{path}?page_size={value}")
        assert response.status_code == 400, path
        assert response.json()["error"] == {
            "code": "invalid",
            "message": "Some values are not valid: page_size",
            "details": {"page_size": ["Enter a whole number from 1 to 200."]},
        }


@pytest.mark.parametrize(
    ("query", "details"),
    [
        ("from=yesterday", {"from": ["Enter a valid date."]}),
        ("to=2026-13-01", {"to": ["Enter a valid date."]}),
        ("kind=nope", {"kind": ["Select a valid choice. nope is not one of the available choices."]}),
    ],
)
def test_statement_filter_errors_name_the_parameter_sent(api_client, cast, query, details):
    api_client.force_authenticate(cast.owner)
    response = api_client.get(f"/api/v1/ledger/transactions/?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == details


def test_statement_dates_are_typed_in_the_schema(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    params = {p["name"]: p["schema"] for p in schema["paths"]["/api/v1/ledger/transactions/"]["get"]["parameters"]}
    assert params["from"] == params["to"] == {"type": "string", "format": "date"}
    assert params["cursor"]["type"] == "string" and params["page_size"]["type"] == "integer"


def test_transactions_filter_errors_are_in_the_error_shape(api_client, cast):
    api_client.force_authenticate(cast.owner)
    response = api_client.get("/api/v1/ledger/transactions/?kind=nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_proof_verifies_and_is_scoped(api_client, cast, settled):
    checkpoint = checkpoint_create()
    api_client.force_authenticate(cast.teammate)
    proof = api_client.get(f"/api/v1/ledger/proofs/{settled.pk}/").json()
    assert chain_hash(proof["prev_hash"], proof["content"].encode()) == proof["hash"] == settled.hash
    assert proof["checkpoint"]["merkle_root"] == checkpoint.merkle_root
    assert verify_inclusion(proof["hash"], proof["merkle_proof"], checkpoint.merkle_root)
    api_client.force_authenticate(cast.staff.__class__.objects.create(username="stranger"))
    response = api_client.get(f"/api/v1/ledger/proofs/{settled.pk}/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_proof_before_checkpoint_says_so(api_client, cast, settled):
    api_client.force_authenticate(cast.owner)
    proof = api_client.get(f"/api/v1/ledger/proofs/{settled.pk}/").json()
    assert proof["checkpoint"] is None and proof["merkle_proof"] is None


def test_withdrawal_api(api_client, cast, settled, settings):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = CREDIT
    api_client.force_authenticate(cast.outsider)
    response = api_client.post("/api/v1/ledger/withdrawals/", {"amount": "2.5"}, HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 201, response.json()
    assert response.json()["amount"] == "2.500000" and response.json()["status"] == "requested"
    again = api_client.post("/api/v1/ledger/withdrawals/", {"amount": "2.5"}, HTTP_IDEMPOTENCY_KEY="k1")
    assert again.status_code == 201
    assert again.json() == response.json()
    location = f"http://testserver/api/v1/ledger/withdrawals/{response.json()['id']}/"
    assert response["Location"] == again["Location"] == location
    assert api_client.get(location).json() == response.json()
    api_client.force_authenticate(cast.owner)
    assert api_client.get(location).status_code == 404  # only its owner reads it
    assert Withdrawal.objects.count() == 1
    assert wallet_balance(cast.outsider) == 8 * CREDIT - 2_500_000


@pytest.mark.parametrize(
    ("amount", "code", "status"),
    [("100", "insufficient_funds", 400), ("0.5", "invalid", 400), ("1.0000001", "invalid", 400), ("x", "invalid", 400)],
)
def test_withdrawal_api_errors(api_client, cast, settled, settings, amount, code, status):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = CREDIT
    api_client.force_authenticate(cast.outsider)
    before = Withdrawal.objects.count(), wallet_balance(cast.outsider)
    response = api_client.post("/api/v1/ledger/withdrawals/", {"amount": amount})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert (Withdrawal.objects.count(), wallet_balance(cast.outsider)) == before


def test_idempotency_conflict_is_409(api_client, cast, settled, settings):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = CREDIT
    api_client.force_authenticate(cast.outsider)
    api_client.post("/api/v1/ledger/withdrawals/", {"amount": "2"}, HTTP_IDEMPOTENCY_KEY="k")
    before = snapshot()
    response = api_client.post("/api/v1/ledger/withdrawals/", {"amount": "3"}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 409
    assert response.json()["error"] == {  # the ledger's own key (withdrawal:<user id>:k) is not shown
        "code": "idempotency_conflict",
        "message": "The Idempotency-Key “k” was already used with a different request; send a new key, or the "
        "same request to get the first answer back.",
        "details": {},
    }
    assert snapshot() == before


def test_anonymous_is_refused(api_client):
    assert api_client.get("/api/v1/ledger/balance/").status_code == 401


def test_wallet_page(client, cast, settled):
    client.force_login(cast.teammate)
    response = client.get(reverse("ledger:wallet"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "1.400000" in body and "earnings-by-day" in body and "laws" in body


def test_wallet_page_filters_and_partial(client, cast, settled):
    client.force_login(cast.outsider)
    response = client.get(reverse("ledger:wallet") + "?kind=grant", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="statement"')
    assert "Credit grant" in body and "Inference fee settled" not in body


def test_wallet_page_count_follows_new_postings_while_cached(client, cast, fund):
    """The unfiltered statement's size is cached per user until their next posting; the page count must follow."""
    client.force_login(cast.teammate)
    for _ in range(25):
        fund(cast.teammate, 1)
    assert 'class="pager"' not in client.get(reverse("ledger:wallet")).content.decode()  # 25 rows: one page
    fund(cast.teammate, 1)
    assert "Page 1 of 2</span>" in client.get(reverse("ledger:wallet")).content.decode()
    filtered = client.get(reverse("ledger:wallet") + "?kind=settlement").content.decode()
    assert 'class="pager"' not in filtered and "Nothing here yet." in filtered  # a filter counts afresh
    grants = client.get(reverse("ledger:wallet") + "?kind=grant").content.decode()
    assert 'href="?kind=grant&amp;page=2">Older</a>' in grants  # the pager keeps the filter


def test_wallet_needs_login(client):
    assert client.get(reverse("ledger:wallet")).status_code == 302


def test_csv_export_neutralises_formulas(client, cast, settled):
    client.force_login(cast.teammate)
    response = client.get(reverse("ledger:statement_csv"))
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["date", "transaction", "kind", "description", "model", "amount", "balance after"]
    assert rows[1][3:] == ["'-2+3", "'=cmd|' /C calc'!A0", "1.400000", "1.400000"]


def test_csv_safe():
    assert [csv_safe(v) for v in ["=1+1", "+1", "@x", "plain", "-3"]] == ["'=1+1", "'+1", "'@x", "plain", "'-3"]


def test_withdrawal_form(client, cast, settled, settings):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = CREDIT
    client.force_login(cast.outsider)
    client.post(reverse("ledger:withdrawal_create"), {"amount": "3", "nonce": "n1"})
    assert Withdrawal.objects.get().amount == 3 * CREDIT
    response = client.post(reverse("ledger:withdrawal_create"), {"amount": "999", "nonce": "n2"}, follow=True)
    assert "Not enough credit" in response.content.decode()
    assert Withdrawal.objects.count() == 1


def test_admin_grant_and_withdrawal_actions(client, cast, settings):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = CREDIT
    client.force_login(cast.staff)
    client.post(reverse("admin:ledger_grant"), {"username": "owner", "amount": "5", "memo": "launch"})
    assert wallet_balance(cast.owner) == 5 * CREDIT
    from ledger.services import withdrawal_request

    w = withdrawal_request(user=cast.owner, amount_micro=2 * CREDIT)
    client.post(reverse("admin:ledger_withdrawal_changelist"), {"action": "complete", "_selected_action": [w.pk]})
    assert Withdrawal.objects.get(pk=w.pk).status == "completed"
    assert client.get(reverse("admin:ledger_transaction_changelist")).status_code == 200
    assert client.get(reverse("admin:ledger_posting_changelist")).status_code == 200


BAD_IDS = [repr(text)[:30] for text, _ in BAD]


@pytest.mark.parametrize(("amount", "message"), BAD, ids=BAD_IDS)
def test_withdrawal_api_refuses_amounts_that_are_not_plain_digits(api_client, cast, settled, amount, message):
    api_client.force_authenticate(cast.outsider)
    before = snapshot(), Withdrawal.objects.count()
    response = api_client.post("/api/v1/ledger/withdrawals/", {"amount": amount}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "invalid", "message": "Some values are not valid: amount", "details": {"amount": [message]}}
    }
    assert (snapshot(), Withdrawal.objects.count()) == before


@pytest.mark.parametrize(("amount", "message"), BAD, ids=BAD_IDS)
def test_withdrawal_form_refuses_amounts_that_are_not_plain_digits(client, cast, settled, amount, message):
    client.force_login(cast.outsider)
    before = snapshot(), Withdrawal.objects.count()
    response = client.post(reverse("ledger:withdrawal_create"), {"amount": amount, "nonce": "n1"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [message]
    assert (snapshot(), Withdrawal.objects.count()) == before


@pytest.mark.parametrize(("amount", "message"), BAD, ids=BAD_IDS)
def test_admin_grant_refuses_amounts_that_are_not_plain_digits(client, cast, amount, message):
    client.force_login(cast.staff)
    before = snapshot()
    response = client.post(reverse("admin:ledger_grant"), {"username": "owner", "amount": amount, "memo": "m"})
    assert response.status_code == 200
    assert response.context["form"].errors == {"amount": [message]}
    assert snapshot() == before


def test_plain_amounts_are_read_exactly_everywhere(api_client, client, cast, settled, settings):
    settings.MF_LEDGER_WITHDRAWAL_MIN_MICRO = 1
    api_client.force_authenticate(cast.outsider)
    response = api_client.post("/api/v1/ledger/withdrawals/", {"amount": ".000001"}, format="json")
    assert (response.status_code, response.json()["amount"]) == (201, "0.000001")
    response = api_client.post("/api/v1/ledger/withdrawals/", {"amount": 2}, format="json")  # a JSON whole number
    assert (response.status_code, response.json()["amount"]) == (201, "2.000000")
    settings.MF_LEDGER_GRANT_MAX_CREDITS = 10**9  # the largest amount anyone may type, under a ceiling that allows it
    client.force_login(cast.staff)
    before = wallet_balance(cast.owner)
    client.post(reverse("admin:ledger_grant"), {"username": "owner", "amount": "1000000000", "memo": "m"})
    assert wallet_balance(cast.owner) - before == 10**15


def test_statement_dates_must_not_be_empty_and_unknown_filters_are_refused(api_client, cast):
    client = api_client
    client.force_authenticate(cast.owner)
    response = client.get("/api/v1/ledger/transactions/?to=")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"to": ["This parameter is empty; leave it out or give a value."]}
    response = client.get("/api/v1/ledger/transactions/?since=2026-01-01")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "since": ["Unknown query parameter 'since'. This operation accepts: cursor, from, kind, page_size, to."]
    }
