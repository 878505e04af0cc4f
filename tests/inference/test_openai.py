"""The real `openai` client against the live test server: chat completion, streaming, errors; and a client that
disconnects mid-stream pays only for what it received."""

import http.client
import json
import socket
import threading
import time
from urllib.parse import urlparse

import httpx2
import openai
import pytest
from django.test import Client

from accounts.services import api_token_create
from ledger.calc.money import format_credits
from ledger.models import Hold
from modelfactory import selectors
from modelfactory.models import Inference
from modelfactory.services import fee_for_tokens
from tests.inference.conftest import PRICE

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(live_server, cast, served):
    _, key = api_token_create(user=cast.outsider, name="openai")
    with openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=60) as client:
        yield client  # closed while the server runs: no idle keep-alive connection outlives the test


def test_chat_completion(client, served):
    answer = client.chat.completions.create(
        model="zorb-expert", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, temperature=0
    )
    inference = Inference.objects.get()
    assert answer.id == f"chatcmpl-{inference.pk}"
    assert answer.model == "zorb-expert"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == inference.output
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens == inference.prompt_tokens
    assert answer.usage.completion_tokens == inference.completion_tokens
    assert answer.usage.total_tokens == inference.prompt_tokens + inference.completion_tokens
    assert inference.source == Inference.Source.OPENAI


def test_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="zorb-expert", messages=[{"role": "user", "content": "Hello"}], max_tokens=10, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    inference = Inference.objects.get()
    assert inference.status == Inference.Status.COMPLETED
    assert text == inference.output
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == inference.completion_tokens
    assert inference.finish_reason in ("stop", "length")


def test_errors_in_openai_shape(client, live_server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.body["message"] == "There is no published model called “no-such-model”."
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="zorb-expert", messages=[{"role": "user", "content": "Hi"}], temperature=-1
        )
    assert caught.value.body["param"] == "temperature"
    with (
        openai.OpenAI(api_key="wrong", base_url=f"{live_server.url}/v1", max_retries=0) as bad_key,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        bad_key.models.list()
    assert caught.value.code == "invalid_api_key"
    assert Inference.objects.count() == 0


def test_model_list(client):
    assert [m.id for m in client.models.list()] == ["zorb-expert"]


def test_malformed_json_and_unknown_route(live_server, cast, served):
    _, key = api_token_create(user=cast.outsider, name="raw")
    url = urlparse(live_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body="{not json", headers=headers)
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 400
    assert body["error"]["code"] == "invalid_json" and body["error"]["type"] == "invalid_request_error"
    conn.request("GET", "/v1/engines", headers=headers)
    response = conn.getresponse()
    assert response.status == 404
    assert json.loads(response.read())["error"]["code"] == "unknown_url"
    conn.close()


def test_insufficient_credit_is_insufficient_quota(live_server, cast, served):
    """OpenAI's answer to a caller without credit: 429 insufficient_quota (the SDK's RateLimitError), with
    Retry-After, and not retried by the SDK on its own (one request only, even with retries on)."""
    _, key = api_token_create(user=cast.teammate, name="poor")
    requests = []
    http = httpx2.Client(event_hooks={"request": [requests.append]})
    with (
        openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=2, http_client=http) as poor,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        poor.chat.completions.create(model="zorb-expert", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert caught.value.status_code == 429
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"
    assert caught.value.response.headers["Retry-After"] == "60"
    assert len(requests) == 1
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0


def test_disconnect_mid_stream_pays_only_for_delivered_tokens(live_server, cast, served, monkeypatch):
    """The worker is slowed down so that the answer is still being generated when the client hangs up."""
    from modelfactory.serving import engine as engine_module

    real_step = engine_module.Engine.step

    def slow_step(self):
        time.sleep(0.05)
        return real_step(self)

    monkeypatch.setattr(engine_module.Engine, "step", slow_step)
    _, key = api_token_create(user=cast.outsider, name="raw")
    url = urlparse(live_server.url)
    before = set(threading.enumerate())
    body = json.dumps({"model": "zorb-expert", "messages": [{"role": "user", "content": "Tell me a long story"}],
                       "max_tokens": 60, "temperature": 0, "stream": True}).encode()  # fmt: skip
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 200")
    received = ""
    events = 0
    while events < 4:  # the role chunk, then three text deltas
        line = reader.readline().decode()
        if line.startswith("data: "):
            chunk = json.loads(line[6:])
            received += chunk["choices"][0]["delta"].get("content") or ""
            events += 1
    reader.close()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()

    deadline = time.monotonic() + 30
    while Inference.objects.get().status == Inference.Status.PENDING and time.monotonic() < deadline:
        time.sleep(0.1)
    for thread in set(threading.enumerate()) - before:  # this request's thread and its generation thread end
        if "process_request_thread" in thread.name or thread.name == "inline-inference":
            thread.join(timeout=30)
            assert not thread.is_alive(), thread.name
    inference = Inference.objects.get()
    assert inference.status == Inference.Status.COMPLETED  # nothing left pending
    assert inference.finish_reason == "cancelled"
    assert inference.output.startswith(received)
    assert 3 <= inference.completion_tokens < 60
    assert len(inference.output_token_ids) == inference.completion_tokens
    assert inference.fee_micro == fee_for_tokens(
        price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + inference.completion_tokens
    )
    assert inference.fee_micro < inference.fee_reserved_micro
    assert Hold.objects.get().amount == inference.fee_reserved_micro


def _read_event(sock) -> str:
    """One SSE event read byte by byte, so nothing the test did not read waits in this side's buffers."""
    data = b""
    while not data.endswith(b"\n\n"):
        byte = sock.recv(1)
        assert byte, "the server closed the stream"
        data += byte
    return data.decode()


def test_hang_up_pays_exactly_for_what_was_read(live_server, cast, served, monkeypatch):
    """The client reads the role chunk and three text deltas, then hangs up: the answer recorded and billed is
    exactly the text it read, not one token more (the write after a hang-up still succeeds once)."""
    from modelfactory.serving import engine as engine_module

    real_step = engine_module.Engine.step
    monkeypatch.setattr(engine_module.Engine, "step", lambda self: (time.sleep(0.05), real_step(self))[1])
    _, key = api_token_create(user=cast.outsider, name="raw")
    url = urlparse(live_server.url)
    body = json.dumps({"model": "zorb-expert", "messages": [{"role": "user", "content": "Tell me a long story"}],
                       "max_tokens": 60, "temperature": 0, "stream": True}).encode()  # fmt: skip
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = _read_event(sock)  # the status line and headers
    assert head.startswith("HTTP/1.1 200")
    received = ""
    for _ in range(4):  # the role chunk, then three text deltas
        event = _read_event(sock)
        received += json.loads(event[len("data: ") :])["choices"][0]["delta"].get("content") or ""
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()

    deadline = time.monotonic() + 30
    while Inference.objects.get().status == Inference.Status.PENDING and time.monotonic() < deadline:
        time.sleep(0.1)
    inference = Inference.objects.get()
    assert inference.finish_reason == "cancelled"
    assert inference.output == received
    tokenizer = selectors.base_tokenizer(served.base_model.path)
    ids = inference.output_token_ids
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # noqa: E731
    assert decode(ids) == received and len(decode(ids[:-1])) < len(received)  # the fewest tokens that made it
    assert inference.completion_tokens == len(ids)
    assert inference.fee_micro == fee_for_tokens(price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + len(ids))


def test_completion_id_names_the_inference_the_rest_api_shows(client, cast, served):
    """chatcmpl-<N> is inference N: GET /api/v1/inferences/N/ shows the past answer to its caller only."""
    answer = client.chat.completions.create(
        model="zorb-expert", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, temperature=0
    )
    number = int(answer.id.removeprefix("chatcmpl-"))
    inference = Inference.objects.get(pk=number)
    web = Client()
    web.force_login(cast.outsider)
    body = web.get(f"/api/v1/inferences/{number}/").json()
    assert body == {
        "id": number, "completion_id": answer.id, "model": "zorb-expert", "model_version": 1, "source": "openai",
        "status": "completed", "output": answer.choices[0].message.content,
        "finish_reason": answer.choices[0].finish_reason,
        "usage": {"prompt_tokens": answer.usage.prompt_tokens, "completion_tokens": answer.usage.completion_tokens},
        "fee": format_credits(inference.fee_micro), "fee_reserved": format_credits(inference.fee_reserved_micro),
        "error": "", "created": body["created"], "completed": body["completed"],
        "attribution": f"http://testserver/api/v1/inferences/{number}/attribution/",
    }  # fmt: skip
    assert body["created"].startswith(inference.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert inference.fee_micro > 0
    web.force_login(cast.owner)  # the model's owner did not ask: not theirs to read
    response = web.get(f"/api/v1/inferences/{number}/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
