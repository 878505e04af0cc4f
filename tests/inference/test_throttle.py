"""Generation is throttled per caller (the `generate` scope), in our error shape and in OpenAI's."""

import pytest
from rest_framework.throttling import ScopedRateThrottle

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _two_per_minute(monkeypatch):
    monkeypatch.setattr(
        ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "generate": "2/min"}
    )


def test_rest_generate_is_throttled_per_caller(api_client, cast):
    api_client.force_authenticate(cast.outsider)
    for _ in range(2):
        assert api_client.post("/api/v1/models/nope/generate/", {"prompt": "Hi"}, format="json").status_code == 404
    response = api_client.post("/api/v1/models/nope/generate/", {"prompt": "Hi"}, format="json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "throttled"
    api_client.force_authenticate(cast.teammate)  # another caller has its own allowance
    assert api_client.post("/api/v1/models/nope/generate/", {"prompt": "Hi"}, format="json").status_code == 404


def test_openai_path_is_throttled_in_openai_shape(api_client, cast):
    api_client.force_authenticate(cast.outsider)
    body = {"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}
    for _ in range(2):
        assert api_client.post("/v1/chat/completions", body, format="json").status_code == 404
    response = api_client.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_exceeded"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_unexpected_error_on_the_openai_path_is_a_500_in_openai_shape(api_client, cast, monkeypatch):
    from modelfactory import services

    def boom(**kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(services, "inference_start", boom)
    api_client.raise_request_exception = False
    api_client.force_authenticate(cast.outsider)
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}]}
    response = api_client.post("/v1/chat/completions", body, format="json")
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "Something went wrong on our side; it has been logged.",
                                         "type": "server_error", "param": None, "code": "server_error"}}  # fmt: skip
