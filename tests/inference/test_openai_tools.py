"""Tool calls with the real `openai` client against the live test server: a base model whose chat template renders
tools answers with a call whose arguments match the tool's schema (tool_choice required, named, auto), takes the
tool's result in a follow-up turn, and streams the call in OpenAI's chunk shape; a model whose template has no
tool format, and every malformed tool request, is a 400 naming the parameter with nothing recorded or held."""

import json

import openai
import pytest
from django.utils import timezone

from accounts.services import api_token_create
from ledger.models import Hold
from ledger.services import credit_grant
from modelfactory import selectors
from modelfactory.models import FineTuneJob, Inference, ModelVersion, TrainedModel
from modelfactory.services import base_model_register, fee_for_tokens
from modelfactory.serving.tools import template_messages
from tests.inference.conftest import CREDIT, PRICE, balance
from tests.serving.conftest import save_random_adapter
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db(transaction=True)

# A Hermes/Qwen-style template: the tools go into the system turn, earlier calls and tool results are rendered.
TOOL_TEMPLATE = (
    "{%- if tools -%}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n{% endif %}"
    "Tools:{% for tool in tools %}\n{{ tool.function | tojson }}{% endfor %}\n"
    'Call one as {"name": ..., "arguments": ...}.<|im_end|>\n'
    "{%- elif messages[0].role == 'system' -%}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}"
    "{%- elif message.role == 'assistant' and message.tool_calls -%}<|im_start|>assistant\n"
    "{%- for call in message.tool_calls -%}"
    '<tool_call>{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}</tool_call>'
    "{%- endfor -%}<|im_end|>\n"
    "{%- elif message.role == 'tool' -%}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response>"
    "<|im_end|>\n"
    "{%- else -%}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)
# The openai SDK's function-calling example, with one change: `location` is at most 30 characters. These tests'
# model has random weights and, left free inside a string, writes until max_tokens (a trained model closes it);
# the bound lets the grammar close it.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                    "maxLength": 30,
                },
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def tool_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    base = build_tiny_model_dir(root / "base", chat_template=TOOL_TEMPLATE, context=1024)
    adapter = save_random_adapter(base, root / "adapter", rank=4, targets=["q_proj", "v_proj"], seed=7)
    return base, adapter


def _publish(*, owner, base_dir, adapter_dir, slug: str, base_slug: str) -> TrainedModel:
    base = base_model_register(path=base_dir, name=base_slug, slug=base_slug)
    job = FineTuneJob.objects.create(owner=owner, name=slug, base_model=base, preset="quick", idempotency_key=slug,
                                     status=FineTuneJob.Status.SUCCEEDED)  # fmt: skip
    model = TrainedModel.objects.create(
        owner=owner, slug=slug, name=slug, base_model=base, price_per_1k_tokens=PRICE,
        status=TrainedModel.Status.PUBLISHED, visibility=TrainedModel.Visibility.PUBLIC, published_at=timezone.now(),
    )  # fmt: skip
    ModelVersion.objects.create(model=model, number=1, job=job, adapter_path=str(adapter_dir), zip_path="",
                                artifact_hash="0" * 64, model_card="A test model.", metrics={})  # fmt: skip
    return model


@pytest.fixture
def client(live_server, cast, tool_dirs, tiny_dirs):
    _publish(owner=cast.owner, base_dir=tool_dirs[0], adapter_dir=tool_dirs[1], slug="tool-expert",
             base_slug="tiny-tools")  # fmt: skip
    _publish(owner=cast.owner, base_dir=tiny_dirs[0], adapter_dir=tiny_dirs[1], slug="plain-expert",
             base_slug="tiny-plain")  # fmt: skip
    credit_grant(user_id=cast.outsider.pk, amount_micro=CREDIT, granted_by=cast.staff, key="grant-outsider")
    _, key = api_token_create(user=cast.outsider, name="openai")
    with openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1", max_retries=0, timeout=60) as client:
        yield client


def ask(client, model="tool-expert", messages=ASK, **kwargs):
    return client.chat.completions.create(
        model=model, messages=messages, **({"max_tokens": 80, "temperature": 0} | kwargs)
    )


def _inference(completion_id: str) -> Inference:
    return Inference.objects.get(pk=int(completion_id.removeprefix("chatcmpl-")))


def _matches_schema(arguments: dict, name: str) -> None:
    if name == "get_weather":
        assert set(arguments) == {"location", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
        assert isinstance(arguments["location"], str) and len(arguments["location"]) <= 30
    else:
        assert set(arguments) == {"zone"} and type(arguments["zone"]) is int and -12 <= arguments["zone"] <= 14


def _check_call(completion, tool: dict) -> dict:
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", _inference(completion.id).output
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id == f"call_{_inference(completion.id).pk}" and call.type == "function"
    assert call.function.name == tool["function"]["name"]
    arguments = json.loads(call.function.arguments)
    _matches_schema(arguments, tool["function"]["name"])
    inference = _inference(completion.id)
    assert inference.output == json.dumps({"name": call.function.name, "arguments": arguments},
                                          separators=(",", ":"))  # fmt: skip
    assert inference.fee_micro == fee_for_tokens(
        price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + inference.completion_tokens
    )
    return arguments


def test_the_sdks_weather_example_with_tool_choice_required(client, cast):
    before = balance(cast.outsider)
    completion = ask(client, tools=[WEATHER], tool_choice="required")
    arguments = _check_call(completion, WEATHER)
    assert set(arguments) == {"location", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    inference = _inference(completion.id)
    assert completion.usage.completion_tokens == inference.completion_tokens > 0
    # the caller pays the call's tokens like any answer's: held now, settled by the attribution app's handler
    assert inference.fee_reserved_micro == fee_for_tokens(
        price_per_1k_tokens=PRICE, tokens=inference.prompt_tokens + 80
    )
    assert balance(cast.outsider) == before - inference.fee_reserved_micro
    assert json.loads(inference.parameters["tools"]) == [WEATHER]  # kept in the order it was sent
    assert inference.parameters["tool_choice"] == "required"


def test_a_named_tool_choice_calls_that_tool(client):
    for tool in (WEATHER, TIME):
        named = {"type": "function", "function": {"name": tool["function"]["name"]}}
        completion = ask(client, tools=[WEATHER, TIME], tool_choice=named, parallel_tool_calls=False)
        _check_call(completion, tool)


def test_auto_lets_the_model_choose_between_a_call_and_text(client):
    """ "auto": the grammar allows a call or any text that does not start with `{`; the model's first token decides.
    This random model starts with text; the same request with `{` favoured by logit_bias starts a call, and the
    grammar then holds it to the schema."""
    text = ask(client, tools=[WEATHER], max_tokens=10)
    assert text.choices[0].message.tool_calls is None and text.choices[0].finish_reason == "length"
    assert text.choices[0].message.content == _inference(text.id).output
    assert not text.choices[0].message.content.startswith("{")
    brace = selectors.base_tokenizer(_inference(text.id).model.base_model.path).convert_tokens_to_ids("{")
    call = ask(client, tools=[WEATHER], tool_choice="auto", logit_bias={str(brace): 100}, max_tokens=150)
    _check_call(call, WEATHER)
    plain = ask(client, tools=[WEATHER], tool_choice="none", max_tokens=6, logit_bias={str(brace): 100})
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "length"
    assert plain.choices[0].message.content == _inference(plain.id).output == "{" * 6


def test_the_follow_up_turn_with_the_tools_result(client):
    first = ask(client, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    follow_up = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),  # as the SDK's example sends it back
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 14, "unit": "celsius"}'},
    ]
    answer = ask(client, messages=follow_up, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert answer.choices[0].message.content == _inference(answer.id).output
    assert answer.choices[0].finish_reason in ("stop", "length")
    stored = _inference(answer.id).messages
    assert stored[1]["tool_calls"] == [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}
    ]
    assert stored[2] == {"role": "tool", "content": '{"temperature": 14, "unit": "celsius"}', "tool_call_id": call.id}
    # the prompt billed is the template's rendering of the whole conversation, tools included

    tokenizer = selectors.base_tokenizer(_inference(answer.id).model.base_model.path)
    rendered = tokenizer.apply_chat_template(template_messages(stored), tools=[WEATHER], tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
    assert '<tool_call>{"name": "get_weather", "arguments": {' in rendered
    assert "<tool_response>" in rendered
    assert answer.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_a_streamed_call_assembles_in_the_sdk(client):
    whole = ask(client, tools=[WEATHER], tool_choice="required")
    chunks = list(ask(client, tools=[WEATHER], tool_choice="required", stream=True,
                      stream_options={"include_usage": True}))  # fmt: skip
    parts = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert parts[0][0].id.startswith("call_") and parts[0][0].function.name == "get_weather"
    assert all(p[0].index == 0 for p in parts) and len(parts) > 2  # the arguments arrive piece by piece
    arguments = "".join(p[0].function.arguments or "" for p in parts)
    assert arguments == whole.choices[0].message.tool_calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)
    inference = _inference(chunks[0].id)
    assert chunks[-1].usage.completion_tokens == inference.completion_tokens == whole.usage.completion_tokens
    # the SDK's stream helper assembles the same call
    with client.chat.completions.stream(model="tool-expert", messages=ASK, tools=[WEATHER], tool_choice="required",
                                        max_tokens=80, temperature=0) as stream:  # fmt: skip
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == arguments
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_call_cut_by_max_tokens_ends_with_length(client):
    completion = ask(client, tools=[WEATHER], tool_choice="required", max_tokens=12)
    choice = completion.choices[0]
    inference = _inference(completion.id)
    assert choice.finish_reason == "length" and inference.completion_tokens == 12
    if choice.message.tool_calls:  # the name was complete: the arguments so far
        assert inference.output.endswith(choice.message.tool_calls[0].function.arguments)
    else:
        assert choice.message.content == inference.output


def test_a_template_without_tools_is_a_400_naming_tools(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model="plain-expert", tools=[WEATHER])
    assert caught.value.body == {
        "message": "This model's chat template has no tool-calling format, so it cannot be given tools or tool "
        "results: call it without `tools`, or use a base model whose chat template renders tools.",
        "type": "invalid_request_error", "param": "tools", "code": "tools_unsupported",
    }  # fmt: skip
    tool_turn = [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "14 C"}]
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model="plain-expert", messages=tool_turn)
    assert caught.value.body["param"] == "messages" and caught.value.body["code"] == "tools_unsupported"
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0


def _tool(**function):
    return {"type": "function", "function": function}


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"tools": [_tool(parameters={"type": "object"})]}, "tools",
         "`tools[0].function.name` must be 1 to 64 letters, digits, _ or - (got None)."),
        ({"tools": [_tool(name="has space")]}, "tools",
         "`tools[0].function.name` must be 1 to 64 letters, digits, _ or - (got 'has space')."),
        ({"tools": [WEATHER, WEATHER]}, "tools", "Two tools are called `get_weather`; tool names must be unique."),
        ({"tools": [_tool(name="f", parameters={"type": "string"})]}, "tools",
         "`tools[0].function.parameters` must be a JSON schema of an object."),
        ({"tools": [_tool(name="f", parameters=["location"])]}, "tools",
         "`tools[0].function.parameters` must be a JSON schema of an object."),
        ({"tools": [{"type": "retrieval"}]}, "tools",
         '`tools[0]` must be {type: "function", function: {name, parameters}}.'),
        ({"tools": []}, "tools", "`tools` must be a list of 1 to 128 tools."),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice",
         "`tool_choice` names `get_time`, which is not one of the `tools`."),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice",
         '`tool_choice` must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.'),
        ({"tool_choice": "auto"}, "tool_choice", "`tool_choice` needs `tools`."),
        ({"parallel_tool_calls": False}, "parallel_tool_calls",
         "`parallel_tool_calls` is true or false and goes with `tools` only."),
        ({"messages": [*ASK, {"role": "tool", "content": "14 C"}]}, "messages",
         "`messages[1]` has role tool but no `tool_call_id`."),
        ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]},
         "messages", "`messages[1].tool_calls[0]`.function.arguments must be a JSON object, as text."),
        ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]},
         "messages", "`messages[1].tool_calls[0]` needs an `id` and a `function.name`."),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format",
         'A JSON response format cannot be combined with tool calls: send `response_format` with '
         '`tool_choice: "none"`, or leave it out.'),
        ({"extra_body": {"functions": [{"name": "f"}]}}, "functions",
         "The legacy `functions` parameter is not supported; send `tools` instead."),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_refused_by_name(client, cast, kwargs, param, message):
    before = balance(cast.outsider)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **kwargs)
    assert caught.value.body == {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": caught.value.body["code"]}  # fmt: skip
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0
    assert balance(cast.outsider) == before


def test_a_parameters_schema_the_grammar_cannot_use_is_refused(client):
    bad = _tool(name="f", parameters={"type": "object", "properties": {"x": {"type": "no-such-type"}}})
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, tools=[bad], tool_choice="required")
    assert caught.value.body["param"] == "tools" and caught.value.body["code"] == "invalid_tools"
    assert caught.value.body["message"].startswith("A tool's parameters schema cannot be used: ")
    assert Inference.objects.count() == 0 and Hold.objects.count() == 0
