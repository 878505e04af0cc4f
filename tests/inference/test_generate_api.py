"""POST /api/v1/models/{slug}/generate/: the Inference row, the hold and the fee; every bad input refused with a
clear error and nothing charged."""

import pytest

from ledger.models import Hold
from modelfactory.models import Inference
from modelfactory.services import fee_for_tokens
from tests.inference.conftest import CREDIT, PRICE, balance

pytestmark = pytest.mark.django_db(transaction=True)


def _generate(api_client, user, slug="zorb-expert", **body):
    api_client.force_authenticate(user)
    return api_client.post(f"/api/v1/models/{slug}/generate/", body, format="json")


def test_generate_records_the_exact_version_tokens_and_fee(api_client, cast, served):
    response = _generate(api_client, cast.outsider, prompt="What colour is the sky on Zorb?", max_new_tokens=12)
    assert response.status_code == 200, response.content
    body = response.json()
    inference = Inference.objects.get()
    assert body["inference_id"] == inference.pk
    assert (body["model"], body["model_version"]) == ("zorb-expert", 1)
    assert inference.model_version == served.latest_version
    assert inference.status == Inference.Status.COMPLETED
    assert inference.caller == cast.outsider
    assert inference.messages == [{"role": "user", "content": "What colour is the sky on Zorb?"}]
    assert body["output"] == inference.output
    assert body["usage"] == {"prompt_tokens": inference.prompt_tokens, "completion_tokens": inference.completion_tokens}
    assert len(inference.prompt_token_ids) == inference.prompt_tokens > 0
    assert len(inference.output_token_ids) == inference.completion_tokens
    assert 1 <= inference.completion_tokens <= 12
    assert inference.finish_reason in ("stop", "length")
    assert inference.latency_ms is not None
    reserved = fee_for_tokens(price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + 12)
    fee = fee_for_tokens(price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + inference.completion_tokens)
    assert (inference.fee_reserved_micro, inference.fee_micro) == (reserved, fee)
    assert body["fee"] == f"0.{fee:06d}"
    hold = Hold.objects.get(key=f"inference:{inference.pk}")
    assert (hold.amount, hold.status, hold.payer.owner) == (reserved, Hold.Status.HELD, cast.outsider)
    assert balance(cast.outsider) == CREDIT - reserved  # settled later by the attribution app's handler


def test_generate_calls_completed_handlers_inside_the_transaction(api_client, cast, served, monkeypatch):
    from modelfactory import hooks

    seen = []
    monkeypatch.setattr(hooks, "inference_completed_handlers", [lambda *, inference: seen.append(inference.status)])
    assert _generate(api_client, cast.outsider, prompt="Hi", max_new_tokens=3).status_code == 200
    assert seen == ["completed"]


def test_free_model_needs_no_credit_and_no_hold(api_client, cast, served):
    served.price_per_1k_tokens = 0
    served.save()
    response = _generate(api_client, cast.teammate, prompt="Hi", max_new_tokens=3)
    assert response.status_code == 200, response.content
    assert response.json()["fee"] == "0.000000"
    assert Hold.objects.count() == 0


def _refused(response, status, code):
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"prompt": "   "}, "empty_prompt", "The prompt is empty: every message is blank."),
        ({}, "empty_prompt", "The prompt is empty: send a prompt or at least one message."),
        ({"prompt": "Hi", "temperature": -0.5}, "invalid_temperature",
         "temperature must be a number of 0 or more; 0 always picks the likeliest word (got -0.5)."),
        ({"prompt": "Hi", "max_new_tokens": 5000}, "invalid_max_new_tokens",
         "max_new_tokens must be a whole number from 1 to 1024 (got 5000)."),
        ({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, "invalid_request",
         "Send either messages or prompt, not both."),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_nothing_is_charged(api_client, cast, served, body, code, message):
    assert _refused(_generate(api_client, cast.outsider, **body), 400, code) == message
    assert Inference.objects.count() == 0
    assert Hold.objects.count() == 0
    assert balance(cast.outsider) == CREDIT


def test_over_long_prompt_says_the_numbers(api_client, cast, served):
    long_prompt = "zorb " * 400  # the tiny model's context is 256 tokens
    message = _refused(_generate(api_client, cast.outsider, prompt=long_prompt), 400, "prompt_too_long")
    assert message.startswith("The prompt is ") and "this model reads at most 256 tokens" in message
    message = _refused(_generate(api_client, cast.outsider, prompt="Hi", max_new_tokens=1000), 400, "prompt_too_long")
    assert "over this model's context length of 256" in message
    assert Inference.objects.count() == Hold.objects.count() == 0


def test_unknown_unpublished_and_private_models_are_not_found(api_client, cast, served, tiny_dirs):
    from tests.inference.conftest import make_model

    make_model(owner=cast.owner, tiny_dirs=tiny_dirs, slug="draft-model", publish=False)
    _refused(_generate(api_client, cast.outsider, slug="nope", prompt="Hi"), 404, "model_not_found")
    _refused(_generate(api_client, cast.outsider, slug="draft-model", prompt="Hi"), 404, "model_not_found")
    assert Inference.objects.count() == 0


def test_owner_may_try_a_draft_model(api_client, cast, served, tiny_dirs):
    from ledger.services import credit_grant
    from tests.inference.conftest import make_model

    make_model(owner=cast.owner, tiny_dirs=tiny_dirs, slug="draft-model", publish=False)
    credit_grant(user_id=cast.owner.pk, amount_micro=CREDIT, granted_by=cast.staff, key="grant-owner")
    response = _generate(api_client, cast.owner, slug="draft-model", prompt="Hi", max_new_tokens=2)
    assert response.status_code == 200, response.content


def test_insufficient_credit_says_needed_and_available(api_client, cast, served):
    response = _generate(api_client, cast.teammate, prompt="Hi", max_new_tokens=10)  # teammate has no credit
    message = _refused(response, 402, "insufficient_credit")
    details = response.json()["error"]["details"]
    assert details["available"] == "0.000000"
    assert details["needed"].endswith(tuple("0123456789")) and len(details["needed"].split(".")[1]) == 6
    needed = details["needed"].rstrip("0").ljust(len(details["needed"].split(".")[0]) + 3, "0")
    assert message.startswith(f"Not enough credit: this answer can cost up to {needed} credits")
    assert message.endswith("and you have 0.00 available. Add credit or ask for a shorter answer.")
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0


def test_no_inference_worker_is_a_503_and_nothing_is_charged(api_client, cast, served, settings):
    settings.MF_INFERENCE_INLINE = False  # and no WorkerHeartbeat row for the inference queue
    message = _refused(_generate(api_client, cast.outsider, prompt="Hi"), 503, "server_unreachable")
    assert message.startswith("The model server is not reachable right now")
    assert Inference.objects.count() == 0 and balance(cast.outsider) == CREDIT


def test_worker_that_never_answers_fails_the_inference_and_releases_the_hold(
    api_client, cast, served, settings, monkeypatch
):
    from modelfactory import services
    from modelfactory.services import inference_requests

    settings.MF_INFERENCE_START_TIMEOUT_SECONDS = 1
    monkeypatch.setattr(inference_requests, "_dispatch", lambda inference_id: None)  # enqueued, but no worker takes it
    _refused(_generate(api_client, cast.outsider, prompt="Hi", max_new_tokens=4), 503, "server_unreachable")
    inference = Inference.objects.get()
    assert inference.status == Inference.Status.FAILED and inference.fee_micro == 0
    assert Hold.objects.get().status == Hold.Status.RELEASED
    assert balance(cast.outsider) == CREDIT
    # a worker that picks it up late does nothing
    assert services.inference_generate(inference_id=inference.pk) == Inference.Status.FAILED


def test_generation_error_fails_and_releases(api_client, cast, served, monkeypatch):
    from modelfactory import serving_runtime

    def broken(path):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(serving_runtime, "batcher_for", broken)
    message = _refused(_generate(api_client, cast.outsider, prompt="Hi", max_new_tokens=4), 500, "generation_failed")
    assert message == "The model server failed while answering; nothing was charged. Try again."
    assert Inference.objects.get().status == Inference.Status.FAILED
    assert Hold.objects.get().status == Hold.Status.RELEASED and balance(cast.outsider) == CREDIT


def test_inferences_left_pending_are_reaped_and_their_holds_released(api_client, cast, served, settings, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from modelfactory import services
    from modelfactory.services import inference_requests

    monkeypatch.setattr(inference_requests, "_dispatch", lambda inference_id: None)
    inference = services.inference_start(user=cast.outsider, slug="zorb-expert", source="api", prompt="Hi",
                                         max_new_tokens=4)  # fmt: skip
    assert services.inference_reap_stale() == []  # still within its time
    Inference.objects.filter(pk=inference.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.inference_reap_stale() == [inference.pk]
    assert Inference.objects.get().status == Inference.Status.FAILED
    assert Hold.objects.get().status == Hold.Status.RELEASED and balance(cast.outsider) == CREDIT


def test_an_answer_with_a_nul_character_is_recorded_not_lost(cast, served, monkeypatch):
    """Seen in the browser test on PostgreSQL: a tiny model emitted U+0000, which PostgreSQL text refuses, and the
    whole answer failed. The record keeps U+FFFD in its place; the caller pays as for any answer."""
    from modelfactory import services

    monkeypatch.setattr("modelfactory.services.inference_requests._dispatch", lambda inference_id: None)
    inference = services.inference_start(user=cast.outsider, slug="zorb-expert", source="api", prompt="Hi",
                                         max_new_tokens=4)  # fmt: skip
    done = services.inference_complete(inference_id=inference.pk, output="a\x00b", output_token_ids=[5, 6],
                                       finish_reason="length", latency_ms=3)  # fmt: skip
    assert done is not None
    inference.refresh_from_db()
    assert (inference.status, inference.output, inference.completion_tokens) == ("completed", "a\ufffdb", 2)
