"""The playground page: start an answer, stream it as server-sent events, the base-model comparison (free, not
recorded), the answer footer, and clear errors."""

import json
import time

import pytest

from modelfactory.models import Inference
from modelfactory.services import fee_for_tokens
from tests.inference.conftest import CREDIT, PRICE, balance

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


def _slow_engine(monkeypatch):
    """Each generation step waits, so the answer is still being written when the page presses Stop."""
    from modelfactory.serving import engine as engine_module

    real_step = engine_module.Engine.step
    monkeypatch.setattr(engine_module.Engine, "step", lambda self: (time.sleep(0.05), real_step(self))[1])


def test_stop_ends_the_answer_where_the_page_is_and_bills_only_what_it_showed(client, cast, served, monkeypatch):
    _slow_engine(monkeypatch)
    client.force_login(cast.outsider)
    urls = _start(client, messages=[{"role": "user", "content": "Tell me a long story"}], temperature=0,
                  max_new_tokens=60).json()  # fmt: skip
    chunks = iter(client.get(urls["stream_url"]).streaming_content)
    shown = []
    while len(shown) < 3:
        event = json.loads(next(chunks).decode()[6:])
        if event["type"] == "delta":
            shown.append(event["text"])
    response = client.post(urls["stop_url"], json.dumps({"shown": 3}), content_type="application/json")
    assert response.status_code == 200 and response.json() == {"stopped": True}
    rest = [json.loads(chunk.decode()[6:]) for chunk in chunks]  # the reader goes on relaying up to `done`
    assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "cancelled"

    inference = Inference.objects.get()
    assert inference.output == "".join(shown)
    assert inference.finish_reason == "cancelled" and 1 <= inference.completion_tokens < 60
    assert inference.completion_tokens == len(inference.output_token_ids)
    assert inference.fee_micro == fee_for_tokens(
        price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + inference.completion_tokens
    )
    assert balance(cast.outsider) == CREDIT - inference.fee_reserved_micro  # held until settled; never more


def test_stop_is_for_the_caller_only_and_needs_a_count(client, cast, served):
    client.force_login(cast.outsider)
    urls = _start(client, messages=[{"role": "user", "content": "Hello"}], max_new_tokens=3).json()
    _events(client.get(urls["stream_url"]))
    bad = client.post(urls["stop_url"], json.dumps({"shown": "many"}), content_type="application/json")
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == 'Say how many pieces of the answer the page showed: {"shown": 12}.'
    client.force_login(cast.teammate)
    assert client.post(urls["stop_url"], json.dumps({"shown": 1}), content_type="application/json").status_code == 404
    assert client.get(urls["stop_url"]).status_code == 405


def test_the_page_offers_stop_a_writing_line_a_short_default_and_the_temperature(client, cast, served):
    client.force_login(cast.outsider)
    page = client.get("/models/zorb-expert/playground/").content.decode()
    assert 'id="playground-stop" hidden>Stop</button>' in page
    assert "The model is writing…" in page
    assert 'name="max_new_tokens" min="1" max="1024" value="128"' in page
    assert '<output id="temperature-value" for="temperature">0.7</output>' in page
