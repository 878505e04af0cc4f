"""Publishing: owner only, price within the operators' bounds, unpublishing; the REST endpoint and the page forms."""

import pytest

from modelfactory.models import ServingPolicy, TrainedModel
from tests.inference.conftest import make_model
from tests.ledger.amounts import BAD, GOOD

pytestmark = pytest.mark.django_db


@pytest.fixture
def draft(cast, tiny_dirs):
    return make_model(owner=cast.owner, tiny_dirs=tiny_dirs, slug="draft-model", publish=False)


def _publish(api_client, user, slug="draft-model", **body):
    api_client.force_authenticate(user)
    return api_client.post(f"/api/v1/models/{slug}/publish/", body, format="json")


def test_owner_publishes_with_a_price_in_credits(api_client, cast, draft):
    response = _publish(api_client, cast.owner, price_per_1k_tokens="0.002500", visibility="public")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "published"
    assert response.json()["price_per_1k_tokens"] == "0.002500"  # the unit it went in with: credits
    draft.refresh_from_db()
    assert (draft.status, draft.visibility, draft.price_per_1k_tokens) == ("published", "public", 2500)
    assert draft.published_at is not None
    listed = api_client.get("/api/v1/models/").json()["results"]
    assert [m["price_per_1k_tokens"] for m in listed] == ["0.002500"]
    shown = api_client.get("/api/v1/models/draft-model/").json()
    assert shown["price_per_1k_tokens"] == "0.002500"


@pytest.mark.parametrize("price", [0.5, 0.0025, True])
def test_a_json_number_with_a_fraction_is_refused_as_a_price(api_client, cast, draft, price):
    response = _publish(api_client, cast.owner, price_per_1k_tokens=price, visibility="public")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["price_per_1k_tokens"]
    draft.refresh_from_db()
    assert (draft.status, draft.price_per_1k_tokens) == ("draft", 2000)


def test_others_cannot_publish(api_client, cast, draft):
    response = _publish(api_client, cast.outsider, price_per_1k_tokens="0.001", visibility="public")
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "You have no model called “draft-model”.",
                                        "details": {}}  # fmt: skip
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_price_outside_the_operators_bounds_is_refused(api_client, cast, draft):
    ServingPolicy.objects.update_or_create(pk=1, defaults={"min_price_per_1k_tokens": 1000,
                                                           "max_price_per_1k_tokens": 50_000})  # fmt: skip
    response = _publish(api_client, cast.owner, price_per_1k_tokens="0.5", visibility="public")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "price_out_of_bounds"
    assert response.json()["error"]["message"] == (
        "The price must be between 0.001 and 0.05 credits per 1,000 tokens (you asked for 0.50)."
    )
    response = _publish(api_client, cast.owner, price_per_1k_tokens="-1", visibility="public")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["price_per_1k_tokens"]
    draft.refresh_from_db()
    assert (draft.status, draft.price_per_1k_tokens) == ("draft", 2000)


def test_unpublish(api_client, cast, tiny_dirs):
    model = make_model(owner=cast.owner, tiny_dirs=tiny_dirs)
    api_client.force_authenticate(cast.owner)
    response = api_client.post(f"/api/v1/models/{model.slug}/unpublish/")
    assert response.status_code == 200
    model.refresh_from_db()
    assert model.status == TrainedModel.Status.DRAFT


def test_a_model_without_a_version_cannot_be_published(api_client, cast, draft):
    draft.versions.all().delete()
    response = _publish(api_client, cast.owner, price_per_1k_tokens="0.001", visibility="public")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "no_version")


def test_publish_form_on_the_model_page(client, cast, draft):
    client.force_login(cast.owner)
    page = client.get(f"/models/{draft.slug}/")
    assert b"Publish this model" in page.content
    response = client.post(f"/models/{draft.slug}/publish/", {"price": "0.004", "visibility": "public"}, follow=True)
    assert "is published" in response.content.decode()
    draft.refresh_from_db()
    assert (draft.status, draft.price_per_1k_tokens) == ("published", 4000)
    response = client.post(f"/models/{draft.slug}/unpublish/", follow=True)
    assert "no longer published" in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_the_page_shows_no_publish_form_to_others(client, cast, tiny_dirs):
    model = make_model(owner=cast.owner, tiny_dirs=tiny_dirs)
    client.force_login(cast.outsider)
    page = client.get(f"/models/{model.slug}/").content.decode()
    assert "Publish this model" not in page and "Unpublish" not in page
    assert f"/models/{model.slug}/playground/" in page


def test_admin_pages(client, cast, tiny_dirs):
    make_model(owner=cast.owner, tiny_dirs=tiny_dirs)
    ServingPolicy.current()
    client.force_login(cast.staff)
    assert client.get("/admin/modelfactory/inference/").status_code == 200
    assert client.get("/admin/modelfactory/inference/add/").status_code == 403  # answers are records, read-only
    assert client.get("/admin/modelfactory/servingpolicy/1/change/").status_code == 200
    assert client.get("/admin/modelfactory/servingpolicy/add/").status_code == 403  # one row only


@pytest.mark.parametrize(("price", "message"), BAD, ids=[repr(text)[:30] for text, _ in BAD])
def test_prices_that_are_not_plain_digits_are_refused(api_client, client, cast, draft, price, message):
    response = _publish(api_client, cast.owner, price_per_1k_tokens=price, visibility="public")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid",
            "message": "Some values are not valid: price_per_1k_tokens",
            "details": {"price_per_1k_tokens": [message]},
        }
    }
    client.force_login(cast.owner)
    response = client.post(f"/models/{draft.slug}/publish/", {"price": price, "visibility": "public"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [message]
    draft.refresh_from_db()
    assert (draft.status, draft.price_per_1k_tokens, draft.published_at) == ("draft", 2000, None)


@pytest.mark.parametrize(("price", "micro"), [(t, m) for t, m in GOOD if m <= 50_000])
def test_plain_prices_are_read_exactly(api_client, cast, draft, price, micro):
    ServingPolicy.objects.update_or_create(pk=1, defaults={"min_price_per_1k_tokens": 0,
                                                           "max_price_per_1k_tokens": 50_000})  # fmt: skip
    response = _publish(api_client, cast.owner, price_per_1k_tokens=price, visibility="public")
    assert response.status_code == 200, response.content
    draft.refresh_from_db()
    assert draft.price_per_1k_tokens == micro


def test_the_model_page_says_where_the_fee_goes(client, cast, tiny_dirs):
    model = make_model(owner=cast.owner, tiny_dirs=tiny_dirs)
    page = client.get(f"/models/{model.slug}/").content.decode()
    assert "20% to the model owner, 70% to the people whose rows the answer draws on, 10% to the platform." in page
    assert "cannot be traced to any row goes to the model owner" in page
    assert "Settlement rule settle-2, split policy settle-2-2026-1." in page
