"""The playground page: start an answer, stream it as server-sent events, the base-model comparison (free, not
recorded), the answer footer, and clear errors."""

import json

import pytest

from modelfactory.models import Inference
from tests.inference.conftest import CREDIT, balance

pytestmark = pytest.mark.django_db(transaction=True)


def _events(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def _start(client, **body):
    return client.post("/models/zorb-expert/playground/start/", json.dumps(body), content_type="application/json")


def test_page_streams_an_answer_and_the_base_models(client, cast, served):
    client.force_login(cast.outsider)
    page = client.get("/models/zorb-expert/playground/")
    assert page.status_code == 200 and b"js/playground.js" in page.content
    response = _start(client, messages=[{"role": "user", "content": "Hello"}], temperature=0, max_new_tokens=6,
                      compare=True)  # fmt: skip
    assert response.status_code == 200, response.content
    urls = response.json()
    events = _events(client.get(urls["stream_url"]))
    inference = Inference.objects.get()
    assert events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == inference.output
    assert inference.source == "playground" and inference.status == "completed"
    assert inference.finish_reason in ("stop", "length")  # the page read to the end: not a disconnect

    base_events = _events(client.get(urls["base_stream_url"]))
    assert base_events[-1]["type"] == "done" and base_events[-1]["fee_micro"] == 0
    assert Inference.objects.count() == 1  # the base comparison is not recorded nor charged
    assert balance(cast.outsider) == CREDIT - inference.fee_reserved_micro

    footer = client.get(urls["answer_url"]).content.decode()
    assert f'fee <span class="amount" title="{inference.fee_micro / 1_000_000:.6f} credits">' in footer


def test_someone_elses_answer_stream_is_not_found(client, cast, served):
    client.force_login(cast.outsider)
    urls = _start(client, messages=[{"role": "user", "content": "Hello"}], max_new_tokens=3).json()
    _events(client.get(urls["stream_url"]))
    client.force_login(cast.teammate)
    assert client.get(urls["stream_url"]).status_code == 404
    assert client.get(urls["answer_url"]).status_code == 404
    assert client.get("/models/zorb-expert/playground/base/base-0123/").status_code == 404


def test_clear_errors(client, cast, served):
    client.force_login(cast.teammate)  # no credit
    response = _start(client, messages=[{"role": "user", "content": "Hello"}], max_new_tokens=3)
    assert response.status_code == 402
    assert response.json()["error"]["message"].startswith("Not enough credit")
    client.force_login(cast.outsider)
    response = _start(client, messages=[{"role": "user", "content": " "}])
    assert response.status_code == 400 and response.json()["error"]["code"] == "empty_prompt"
    assert Inference.objects.count() == 0


def test_unpublished_model_has_no_playground_for_others(client, cast, served):
    served.status = "draft"
    served.save()
    client.force_login(cast.outsider)
    assert client.get("/models/zorb-expert/playground/").status_code == 404
