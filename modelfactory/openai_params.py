"""The parameters of OpenAI's chat completion request: each one we honour is turned into the inference services'
arguments; each one we do not is refused with a 400 naming it, never ignored. The README's parameter table
lists the same."""

from __future__ import annotations

import json
import math
import re

SUPPORTED = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "response_format", "user", "tools", "tool_choice", "parallel_tool_calls",
}  # fmt: skip
REFUSED = {  # known OpenAI parameters we do not support, and why (shown to the caller)
    "functions": "The legacy `functions` parameter is not supported; send `tools` instead.",
    "function_call": "The legacy `function_call` parameter is not supported; send `tool_choice` instead.",
    "audio": "Audio answers are not supported.",
    "modalities": "Only text answers are supported.",
    "prediction": "Predicted outputs are not supported.",
    "reasoning_effort": "These models do not reason in a separate step.",
    "service_tier": "There is one service tier.",
    "store": "Answers are always recorded (see GET /api/v1/inferences/{id}/); `store` is not supported.",
    "metadata": "Metadata on answers is not supported.",
    "web_search_options": "Web search is not supported.",
}


class ParamError(Exception):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message, self.param = message, param


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(_has_nul(v) for v in value)


def _check_unsupported(data: dict) -> None:
    for name, value in data.items():  # PostgreSQL cannot store NUL in text or JSON: refused, not a 500
        if _has_nul(name) or _has_nul(value):
            raise ParamError("The request contains a NUL character, which is never valid here.", name)
    for name, value in data.items():
        if value is None or name in SUPPORTED:
            continue
        raise ParamError(REFUSED.get(name, f"Unknown parameter `{name}`; see the README's parameter table."), name)
    if data.get("n") not in (None, 1):
        raise ParamError("Only n=1 is supported: one answer per request.", "n")


def _stop(value) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
        raise ParamError("`stop` must be a non-empty string or a list of 1 to 4 non-empty strings.", "stop")
    return stops


def _logit_bias(value) -> dict[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ParamError("`logit_bias` must be an object mapping token ids to a bias from -100 to 100.", "logit_bias")
    bias = {}
    for token, amount in value.items():
        if not str(token).isdigit():
            raise ParamError(f"`logit_bias` keys must be token ids (got {token!r}).", "logit_bias")
        bias[int(token)] = amount
    return bias


def _top_logprobs(data: dict, *, stream: bool) -> int | None:
    logprobs, top = data.get("logprobs"), data.get("top_logprobs")
    if logprobs not in (None, True, False):
        raise ParamError("`logprobs` must be true or false.", "logprobs")
    if top is not None and logprobs is not True:
        raise ParamError("`top_logprobs` needs `logprobs: true`.", "top_logprobs")
    if logprobs is not True:
        return None
    if stream:
        raise ParamError("`logprobs` is supported on answers that are not streamed only.", "logprobs")
    return 0 if top is None else top


def _json_schema(value) -> dict | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ParamError("`response_format.json_schema` must be {name, schema}.", "response_format")
        return spec.get("schema") or {"type": "object"}
    raise ParamError("`response_format.type` must be text, json_object or json_schema.", "response_format")


TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
TOOL_CHOICES = ("none", "auto", "required")


def _tools(value) -> list[dict] | None:
    """OpenAI's tool definitions, each {type: "function", function: {name, description?, parameters?, strict?}}
    (the schema itself is checked by the grammar compiler, before anything is held)."""
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TOOLS:
        raise ParamError(f"`tools` must be a list of 1 to {MAX_TOOLS} tools.", "tools")
    names = set()
    for index, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ParamError(f'`tools[{index}]` must be {{type: "function", function: {{name, parameters}}}}.', "tools")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ParamError(
                f"`tools[{index}].function.name` must be 1 to 64 letters, digits, _ or - (got {name!r}).", "tools"
            )
        if name in names:
            raise ParamError(f"Two tools are called `{name}`; tool names must be unique.", "tools")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and (
            not isinstance(parameters, dict) or parameters.get("type", "object") != "object"
        ):
            raise ParamError(f"`tools[{index}].function.parameters` must be a JSON schema of an object.", "tools")
        if not isinstance(function.get("description", ""), str) or function.get("strict") not in (None, True, False):
            raise ParamError(f"`tools[{index}].function`: description is text and strict is true or false.", "tools")
        if set(function) - {"name", "description", "parameters", "strict"} or set(tool) - {"type", "function"}:
            raise ParamError(f"`tools[{index}]` has fields other than OpenAI's function tool fields.", "tools")
    return value


def _tool_choice(value, tools: list[dict] | None):
    """ "none" | "auto" | "required" | {"name": N}; "auto" when tools come without a choice."""
    if value is None:
        return None if tools is None else "auto"
    if tools is None:
        raise ParamError("`tool_choice` needs `tools`.", "tool_choice")
    if value in TOOL_CHOICES:
        return value
    name = (
        value.get("function", {}).get("name") if isinstance(value, dict) and value.get("type") == "function" else None
    )
    if not isinstance(name, str):
        raise ParamError(
            '`tool_choice` must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.',
            "tool_choice",
        )
    if name not in {tool["function"]["name"] for tool in tools}:
        raise ParamError(f"`tool_choice` names `{name}`, which is not one of the `tools`.", "tool_choice")
    return {"name": name}


def _tool_controls(data: dict) -> dict:
    tools = _tools(data.get("tools"))
    choice = _tool_choice(data.get("tool_choice"), tools)
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and (tools is None or parallel not in (True, False)):
        raise ParamError("`parallel_tool_calls` is true or false and goes with `tools` only.", "parallel_tool_calls")
    return {"tools": tools, "tool_choice": choice}


def _tool_call(call, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(function, dict):
        raise ParamError(f'{where} must be {{id, type: "function", function: {{name, arguments}}}}.', "messages")
    if not isinstance(call.get("id"), str) or not call["id"] or not isinstance(function.get("name"), str):
        raise ParamError(f"{where} needs an `id` and a `function.name`.", "messages")
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ParamError(f"{where}.function.arguments must be a JSON object, as text.", "messages")
    return {"id": call["id"], "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def chat_messages(raw) -> list[dict]:
    """OpenAI messages as the inference services take them: a content given as a list of parts keeps its text
    parts; `developer` is `system`; an assistant turn's `tool_calls` (arguments as JSON text) and a tool result's
    `tool_call_id` are kept. ParamError naming `messages` for a shape we cannot take."""
    if not isinstance(raw, list):
        raise ParamError("`messages` must be a list of {role, content}.", "messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ParamError("`messages` must be a list of {role, content}.", "messages")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        role = "system" if message.get("role") == "developer" else message.get("role")
        item = {"role": role, "content": content}
        if role == "assistant" and message.get("tool_calls") is not None:
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not calls:
                raise ParamError(f"`messages[{index}].tool_calls` must be a non-empty list.", "messages")
            item["tool_calls"] = [_tool_call(c, f"`messages[{index}].tool_calls[{n}]`") for n, c in enumerate(calls)]
            item["content"] = "" if content is None else content
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str) or not message["tool_call_id"]:
                raise ParamError(f"`messages[{index}]` has role tool but no `tool_call_id`.", "messages")
            item["tool_call_id"] = message["tool_call_id"]
            if isinstance(message.get("name"), str):
                item["name"] = message["name"]
        messages.append(item)
    return messages


def chat_arguments(data: dict) -> dict:
    """inference_start's arguments (less user, slug, source, messages) from a chat completion body, or
    ParamError naming the first parameter at fault."""
    _check_unsupported(data)
    temperature = data.get("temperature")
    if temperature is not None and (not _number(temperature) or not 0 <= temperature <= 2):
        raise ParamError(f"`temperature` must be a number from 0 to 2 (got {temperature!r}).", "temperature")
    stream = data.get("stream")
    if stream not in (None, True, False):
        raise ParamError("`stream` must be true or false.", "stream")
    options = data.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ParamError("`stream_options` is {include_usage} and goes with `stream: true` only.", "stream_options")
    controls = {
        "stop": _stop(data.get("stop")),
        "seed": data.get("seed"),
        "presence_penalty": data.get("presence_penalty"),
        "frequency_penalty": data.get("frequency_penalty"),
        "logit_bias": _logit_bias(data.get("logit_bias")),
        "top_logprobs": _top_logprobs(data, stream=bool(stream)),
        "json_schema": _json_schema(data.get("response_format")),
        **_tool_controls(data),
    }
    return {
        "max_new_tokens": data.get("max_completion_tokens", data.get("max_tokens")),
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": data.get("top_p"),
        "stream": bool(stream),
        "include_usage": bool((options or {}).get("include_usage")),
        "controls": {key: value for key, value in controls.items() if value is not None},
    }
