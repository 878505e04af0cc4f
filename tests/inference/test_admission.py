"""Admission control: once MF_INFERENCE_QUEUE_MAX answers wait for a place in a batch, new calls get 429 with
Retry-After (REST in the API's error shape, /v1 in OpenAI's) instead of waiting; nothing is held for them. The queue
is filled deterministically: the hand-over to the worker is paused, so the answers admitted stay pending."""

from datetime import timedelta

import httpx2
import openai
import pytest
from django.utils import timezone

from accounts.services import api_token_create
from ledger.models import Hold
from modelfactory import services
from modelfactory.models import Inference
from modelfactory.services import inference_requests
from tests.inference.conftest import CREDIT, balance

pytestmark = pytest.mark.django_db(transaction=True)

BUSY = (
    "The model server is busy with other answers right now. Nothing was generated and nothing was charged; "
    "try again in 2 seconds."
)


@pytest.fixture
def paused(settings, monkeypatch):
    """One answer generated at a time, one allowed to wait; the worker never takes what is handed to it."""
    settings.MF_INFERENCE_BATCH_SIZE = 1
    settings.MF_INFERENCE_QUEUE_MAX = 1
    settings.MF_INFERENCE_RETRY_AFTER_SECONDS = 2
    monkeypatch.setattr(inference_requests, "_dispatch", lambda inference_id: None)


def _start(user) -> Inference:
    return services.inference_start(
        user=user, slug="zorb-expert", source=Inference.Source.API, prompt="Hi", max_new_tokens=4
    )


def _fill(user) -> list[Inference]:
    """One answer in the batch and one waiting: the queue is at its bound."""
    return [_start(user), _start(user)]


def _holds(user) -> int:
    return CREDIT - balance(user)


def test_a_full_queue_answers_429_with_retry_after_and_holds_nothing(api_client, cast, served, paused):
    admitted = _fill(cast.outsider)
    held = _holds(cast.outsider)
    assert held == sum(i.fee_reserved_micro for i in admitted) > 0
    api_client.force_authenticate(cast.outsider)
    response = api_client.post("/api/v1/models/zorb-expert/generate/", {"prompt": "Hi"}, format="json")
    assert response.status_code == 429
    assert response["Retry-After"] == "2"
    assert response.json() == {"error": {"code": "server_busy", "message": BUSY, "details": {"retry_after_seconds": 2}}}
    assert Inference.objects.count() == 2 and Hold.objects.count() == 2
    assert _holds(cast.outsider) == held


def test_under_the_bound_calls_go_through(api_client, cast, served, paused, monkeypatch):
    first, second = _fill(cast.outsider)
    with pytest.raises(services.ServingRefused) as refused:
        _start(cast.outsider)
    assert (refused.value.status, refused.value.code) == (429, "server_busy")
    services.inference_fail(inference_id=first.pk, error="done with")  # a place frees up
    monkeypatch.undo()  # the worker takes jobs again
    api_client.force_authenticate(cast.outsider)
    response = api_client.post(
        "/api/v1/models/zorb-expert/generate/", {"prompt": "Hi", "max_new_tokens": 3}, format="json"
    )
    assert response.status_code == 200, response.content
    assert Inference.objects.get(pk=response.json()["inference_id"]).status == Inference.Status.COMPLETED


def test_answers_older_than_the_timeout_do_not_count(cast, served, paused, settings):
    _fill(cast.outsider)
    Inference.objects.update(created_at=timezone.now() - timedelta(seconds=settings.MF_INFERENCE_TIMEOUT_SECONDS + 1))
    assert _start(cast.outsider).status == Inference.Status.PENDING


def test_a_bound_of_zero_refuses_only_calls_that_would_wait(cast, served, paused, settings):
    settings.MF_INFERENCE_QUEUE_MAX = 0
    _start(cast.outsider)  # the batch had room
    with pytest.raises(services.ServingRefused) as refused:
        _start(cast.outsider)
    assert refused.value.details == {"retry_after_seconds": 2}
    assert refused.value.message == BUSY
    assert Inference.objects.count() == 1


def test_openai_client_gets_rate_limit_error_and_retries_after_the_wait(live_server, cast, served, paused, settings):
    """OpenAI's shape; the SDK maps 429 to RateLimitError and, unlike for insufficient_quota, retries on its own
    after Retry-After seconds (here 1)."""
    settings.MF_INFERENCE_RETRY_AFTER_SECONDS = 1
    _fill(cast.outsider)
    _, key = api_token_create(user=cast.outsider, name="busy")
    sent = []
    http = httpx2.Client(event_hooks={"request": [sent.append]})
    with (
        openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=1, http_client=http) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(
            model="zorb-expert", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
        )
    assert len(sent) == 2  # the first try and one retry
    assert caught.value.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "1"
    assert "X-Should-Retry" not in caught.value.response.headers
    assert caught.value.body == {
        "message": BUSY.replace("2 seconds", "1 second"),
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "server_busy",
    }
    assert Inference.objects.count() == 2 and Hold.objects.count() == 2


def test_the_schema_documents_the_busy_answer():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    answer = schema["paths"]["/api/v1/models/{slug}/generate/"]["post"]["responses"]["429"]
    assert "code server_busy" in answer["description"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
