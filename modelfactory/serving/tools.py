"""Tool calls (OpenAI's `tools`): which base models can take them, how the conversation goes through their chat
template, and the grammar that constrains an answer to a call. Plain Python with llguidance and transformers'
chat templates, no Django, no torch.

A call is generated as one compact JSON object, `{"name":"<tool>","arguments":{...}}`, the arguments matching
that tool's `parameters` schema (llguidance masks every token that would leave it). The template's own markup
around a call (e.g. Qwen's `<tool_call>` tags) is not generated; earlier calls in the conversation are rendered
by the template in its own format. `tool_choice`:
- "required" or {"name": N}: the answer is a call (to tool N);
- "auto": the answer is either a call or text; it is a call exactly when its first character is `{` (text
  answers therefore never start with `{`);
- "none": no grammar; the model answers in text with the tools still in its prompt.
At most one call per answer."""

from __future__ import annotations

import json

from .types import InvalidRequest

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool_support",
        "description": "Checks whether the chat template renders tools.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
_PROBE_MESSAGES = [{"role": "user", "content": "Hello"}]
CALL_START = "{"  # an "auto" answer that starts with this is a call


def template_supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders the tools it is given: the prompt with a tool differs from
    the prompt without (a template that never reads `tools` renders both alike)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    plain = tokenizer.apply_chat_template(_PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
    with_tool = tokenizer.apply_chat_template(
        _PROBE_MESSAGES, tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=True
    )
    return plain != with_tool


def template_messages(messages: list[dict]) -> list[dict]:
    """The conversation as chat templates take it: an assistant turn's tool calls with their arguments as an
    object (OpenAI sends them as JSON text, kept as text in our records so the order of their keys survives)."""
    out = []
    for message in messages:
        item = dict(message)
        if item.get("tool_calls"):
            item["tool_calls"] = [
                {**call, "function": {**call["function"], "arguments": json.loads(call["function"]["arguments"])}}
                for call in item["tool_calls"]
            ]
        out.append(item)
    return out


def tool_parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _call_schema(tool: dict) -> dict:
    name = tool["function"]["name"]
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": tool_parameters(tool)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_grammar(tools: list[dict], choice) -> str | None:
    """The llguidance grammar for an answer under `choice` ("auto", "required", "none" or {"name": N}), or None
    when the answer is free ("none"). Raises InvalidRequest (code invalid_tools) for a schema llguidance cannot
    use."""
    import llguidance

    if choice == "none":
        return None
    chosen = tools
    if isinstance(choice, dict):
        chosen = [tool for tool in tools if tool["function"]["name"] == choice["name"]]
    schema = {"anyOf": [_call_schema(tool) for tool in chosen], "x-guidance": {"whitespace_flexible": False}}
    lark = f"start: call\ncall: %json {json.dumps(schema)}\n"
    if choice == "auto":  # a call, or any text that does not start as one
        lark = f"start: call | TEXT\ncall: %json {json.dumps(schema)}\nTEXT: /[^{{](.|\\n)*/\n"
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"A tool's parameters schema cannot be used: {exc}", code="invalid_tools") from None
    if is_error:
        raise InvalidRequest(f"A tool's parameters schema cannot be used: {'; '.join(messages)}", code="invalid_tools")
    return grammar
