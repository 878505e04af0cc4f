"""The parameters of OpenAI's chat completion request: each one we honour is turned into the inference services'
arguments; each one we do not is refused with a 400 naming it, never ignored. The README's parameter table
lists the same."""

from __future__ import annotations

import math

SUPPORTED = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "response_format", "user",
}  # fmt: skip
REFUSED = {  # known OpenAI parameters we do not support, and why (shown to the caller)
    "tools": "Tool calls are not supported by these models.",
    "tool_choice": "Tool calls are not supported by these models.",
    "parallel_tool_calls": "Tool calls are not supported by these models.",
    "functions": "Function calls are not supported by these models.",
    "function_call": "Function calls are not supported by these models.",
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
    }
    return {
        "max_new_tokens": data.get("max_completion_tokens", data.get("max_tokens")),
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": data.get("top_p"),
        "stream": bool(stream),
        "include_usage": bool((options or {}).get("include_usage")),
        "controls": {key: value for key, value in controls.items() if value is not None},
    }
