"""The chat completion parameters, with the real `openai` client against the live test server: each one we
honour does what OpenAI documents; each one we do not is a 400 naming it (nothing generated, nothing held)."""

from typing import Literal

import openai
import pytest
from pydantic import BaseModel

from accounts.services import api_token_create
from ledger.models import Hold
from modelfactory import selectors
from modelfactory.models import Inference
from modelfactory.services import fee_for_tokens
from tests.inference.conftest import PRICE

pytestmark = pytest.mark.django_db(transaction=True)
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def client(live_server, cast, served):
    _, key = api_token_create(user=cast.outsider, name="openai")
    with openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=60) as client:
        yield client


def ask(client, **kwargs):
    return client.chat.completions.create(model="zorb-expert", messages=HELLO, **kwargs)


def test_stop_ends_before_the_stop_text_and_bills_only_up_to_it(client):
    sampled = {"max_tokens": 16, "temperature": 1.0, "seed": 3}
    free = ask(client, **sampled)
    text = free.choices[0].message.content
    at = next(p for p in range(2, 12) if text.find(text[p : p + 2]) == p)
    for stop in (text[at : at + 2], ["never-there", text[at : at + 2]]):
        stopped = ask(client, stop=stop, **sampled)
        assert stopped.choices[0].message.content == text[:at]
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.usage.completion_tokens < free.usage.completion_tokens
        inference = Inference.objects.get(pk=int(stopped.id.removeprefix("chatcmpl-")))
        assert inference.output == text[:at] and inference.completion_tokens == stopped.usage.completion_tokens
        assert inference.fee_micro == fee_for_tokens(
            price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + inference.completion_tokens
        )
    assert Inference.objects.get(pk=int(free.id.removeprefix("chatcmpl-"))).parameters["seed"] == 3


def test_seed_gives_the_same_answer_at_any_temperature(client):
    for temperature in (0.7, 1.9):
        first, again = (ask(client, max_tokens=12, temperature=temperature, seed=42) for _ in range(2))
        assert first.choices[0].message.content == again.choices[0].message.content
    other = ask(client, max_tokens=12, temperature=1.9, seed=43)
    assert other.choices[0].message.content != again.choices[0].message.content


def test_logprobs(client):
    answer = ask(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 5
    for entry in content:
        assert entry.bytes == list(entry.token.encode())
        assert [t.token for t in entry.top_logprobs][0] == entry.token  # greedy: the likeliest
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == entry.top_logprobs[0].logprob <= 0
    assert ask(client, max_tokens=2).choices[0].logprobs is None


def test_logit_bias_and_penalties(client, served):
    tokenizer = selectors.base_tokenizer(served.base_model.path)
    token = tokenizer("zorb", add_special_tokens=False)["input_ids"][0]
    forced = ask(client, max_tokens=4, temperature=0, logit_bias={str(token): 100})
    assert Inference.objects.get(pk=int(forced.id.removeprefix("chatcmpl-"))).output_token_ids == [token] * 4
    plain = ask(client, max_tokens=16, temperature=0)
    penalised = ask(client, max_tokens=16, temperature=0, frequency_penalty=2, presence_penalty=2)
    tokens = {a.id: Inference.objects.get(pk=int(a.id.removeprefix("chatcmpl-"))).output_token_ids
              for a in (plain, penalised)}  # fmt: skip
    assert len(set(tokens[penalised.id])) > len(set(tokens[plain.id]))


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    sure: bool


def test_stop_in_a_streamed_answer(client):
    sampled = {"max_tokens": 16, "temperature": 1.0, "seed": 3}
    text = ask(client, **sampled).choices[0].message.content
    at = next(p for p in range(2, 12) if text.find(text[p : p + 2]) == p)
    chunks = list(ask(client, stop=text[at : at + 2], stream=True, stream_options={"include_usage": True}, **sampled))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[:at]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    inference = Inference.objects.get(pk=int(chunks[0].id.removeprefix("chatcmpl-")))
    assert inference.output == text[:at] and chunks[-1].usage.completion_tokens == inference.completion_tokens


def test_json_schema_with_the_sdks_parse(client):
    """The SDK's structured-output example: it sends a strict json_schema and parses the answer into the model."""
    completion = client.chat.completions.parse(
        model="zorb-expert", messages=HELLO, response_format=Verdict, max_tokens=30, temperature=0
    )
    verdict = completion.choices[0].message.parsed
    assert isinstance(verdict, Verdict)
    assert completion.choices[0].message.content == verdict.model_dump_json()  # compact JSON, nothing around it
    assert completion.choices[0].finish_reason == "stop"


def test_json_mode_starts_an_object(client):
    answer = ask(client, max_tokens=10, temperature=0, response_format={"type": "json_object"})
    assert answer.choices[0].message.content.startswith('{"')
    assert ask(client, max_tokens=3, response_format={"type": "text"}).choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools",
         "This model's chat template has no tool-calling format, so it cannot be given tools or tool results: "
         "call it without `tools`, or use a base model whose chat template renders tools."),
        ({"tool_choice": "none"}, "tool_choice", "`tool_choice` needs `tools`."),
        ({"n": 2}, "n", "Only n=1 is supported: one answer per request."),
        ({"temperature": 2.5}, "temperature", "`temperature` must be a number from 0 to 2 (got 2.5)."),
        ({"extra_body": {"best_of": 2}}, "best_of", "Unknown parameter `best_of`; see the README's parameter table."),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop",
         "`stop` must be a non-empty string or a list of 1 to 4 non-empty strings."),
        ({"logprobs": True, "stream": True}, "logprobs",
         "`logprobs` is supported on answers that are not streamed only."),
        ({"top_logprobs": 2}, "top_logprobs", "`top_logprobs` needs `logprobs: true`."),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs",
         "top_logprobs must be a whole number from 0 to 20 (got 21)."),
        ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be a number from -2 to 2 (got 2.5)."),
        ({"frequency_penalty": -3}, "frequency_penalty", "frequency_penalty must be a number from -2 to 2 (got -3)."),
        ({"logit_bias": {"5": 101}}, "logit_bias",
         "logit_bias values must be numbers from -100 to 100 (got 101 for token 5)."),
        ({"logit_bias": {"x": 1}}, "logit_bias", "`logit_bias` keys must be token ids (got 'x')."),
        ({"seed": -1}, "seed", "seed must be a whole number from 0 to 2^63 - 1 (got -1)."),
        ({"stop": "a\x00"}, "stop", "The request contains a NUL character, which is never valid here."),
        ({"response_format": {"type": "yaml"}}, "response_format",
         "`response_format.type` must be text, json_object or json_schema."),
    ],
)  # fmt: skip
def test_unsupported_or_invalid_parameters_are_refused_by_name(client, kwargs, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, max_tokens=3, **kwargs)
    assert caught.value.body == {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": caught.value.body["code"]}  # fmt: skip
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0


def test_a_schema_that_cannot_be_used_is_refused(client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, max_tokens=3, response_format=bad)
    assert caught.value.body["param"] == "response_format"
    assert caught.value.body["code"] == "invalid_response_format"
    assert caught.value.body["message"].startswith("The JSON schema cannot be used: ")
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0
