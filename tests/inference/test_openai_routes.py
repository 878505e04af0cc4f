"""/v1 answers every path and method in OpenAI's JSON error shape (never Django's HTML CSRF page), and
GET /v1/models/{id} shows one callable model."""

import pytest
from django.test import Client

from accounts.services import api_token_create
from tests.inference.conftest import make_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def raw(cast):
    """A client that checks CSRF like a real browser-less caller meets it, authenticated by an API key."""
    _, key = api_token_create(user=cast.outsider, name="routes")
    return Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize(
    ("method", "path", "hint"),
    [
        ("post", "/v1/completions", "See /v1/chat/completions, /v1/models and /v1/models/{model}."),
        ("post", "/v1/embeddings", "See /v1/chat/completions, /v1/models and /v1/models/{model}."),
        ("post", "/v1/chat/completions/", "Did you mean /v1/chat/completions (no trailing slash)?"),
        ("get", "/v1/models/", "Did you mean /v1/models (no trailing slash)?"),
        ("delete", "/v1/files/abc", "See /v1/chat/completions, /v1/models and /v1/models/{model}."),
    ],
)
def test_unknown_paths_are_json_404s(raw, method, path, hint):
    response = raw.generic(method.upper(), path, "{}", content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": f"Unknown request URL: {method.upper()} {path}. {hint}",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }


@pytest.mark.parametrize(("method", "path"), [("get", "/v1/chat/completions"), ("post", "/v1/models"),
                                              ("delete", "/v1/models/zorb-expert")])  # fmt: skip
def test_wrong_method_is_a_json_405(raw, method, path):
    response = raw.generic(method.upper(), path, "{}", content_type="application/json")
    assert response.status_code == 405
    assert response.json() == {
        "error": {
            "message": f'Method "{method.upper()}" not allowed.',
            "type": "invalid_request_error",
            "param": None,
            "code": "method_not_allowed",
        }
    }


def test_model_retrieve(raw, cast, tiny_dirs):
    model = make_model(owner=cast.owner, tiny_dirs=tiny_dirs)
    make_model(owner=cast.owner, tiny_dirs=tiny_dirs, slug="secret-draft", publish=False)
    response = raw.get("/v1/models/zorb-expert")
    assert response.status_code == 200
    assert response.json() == {"id": "zorb-expert", "object": "model", "created": int(model.published_at.timestamp()),
                                "owned_by": "owner"}  # fmt: skip
    for slug in ("secret-draft", "nope"):  # another's draft is as unknown as a missing model
        response = raw.get(f"/v1/models/{slug}")
        assert response.status_code == 404
        assert response.json()["error"] == {"message": f"There is no published model called “{slug}”.",
                                            "type": "invalid_request_error", "param": "model",
                                            "code": "model_not_found"}  # fmt: skip
