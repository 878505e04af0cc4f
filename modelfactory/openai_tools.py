"""An answer given with `tools`, in OpenAI's shapes: the model's text (a compact JSON call
`{"name":"<tool>","arguments":{...}}`, or plain text when `tool_choice` is "auto" and the answer does not start
with `{`; see modelfactory/serving/tools.py) becomes `message.tool_calls` with `finish_reason: "tool_calls"`, or
`content`. The same splitter shapes a streamed answer delta by delta and a whole answer at once, so both say the
same thing. Plain Python, no Django."""

from __future__ import annotations

import json
import re

_HEADER = re.compile(r'\{"name":("(?:[^"\\]|\\.)*"),"arguments":')


def call_id(inference_id: int) -> str:
    """An answer carries at most one call, so the inference's id names it."""
    return f"call_{inference_id}"


class AnswerSplitter:
    """Feeds an answer's text in (`push`), gets OpenAI message deltas out: {"content": ...} or {"tool_calls":
    [{index, id, type, function: {name, arguments}}]}. A call's text is held back until its name is complete,
    and its last character until the end (the call's closing brace is not part of the arguments); `finish`
    releases the rest and says the OpenAI finish reason."""

    def __init__(self, *, call_id: str, tool_choice):
        self.call_id = call_id
        self.tool_choice = tool_choice
        self.mode: str | None = None  # "text" or "call", from the answer's first character
        self.held = ""
        self.name: str | None = None
        self.text = ""  # the whole answer so far

    def push(self, text: str) -> list[dict]:
        self.text += text
        if self.mode is None and text:
            self.mode = "text" if self.tool_choice == "auto" and not text.startswith("{") else "call"
        if self.mode != "call":
            return [{"content": text}] if text else []
        self.held += text
        deltas = []
        if self.name is None:
            header = _HEADER.match(self.held)
            if header is None:
                return []
            self.name = json.loads(header.group(1))
            self.held = self.held[header.end() :]
            function = {"name": self.name, "arguments": ""}
            deltas.append({"tool_calls": [{"index": 0, "id": self.call_id, "type": "function", "function": function}]})
        if len(self.held) > 1:
            deltas.append(self._arguments(self.held[:-1]))
            self.held = self.held[-1:]
        return deltas

    def _arguments(self, text: str) -> dict:
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def finish(self, reason: str) -> tuple[list[dict], str]:
        """The last deltas and OpenAI's finish reason, given the engine's ("stop", "length" or "cancelled")."""
        openai_reason = "length" if reason == "length" else "stop"
        if self.mode != "call":
            return [], openai_reason
        held, self.held = self.held, ""
        if self.name is None:  # cut off before the call's name was complete: the text as it stands
            return ([{"content": held}] if held else []), openai_reason
        if reason == "stop" and _complete(self.text):  # the held character is the call's closing brace
            return [], "tool_calls"
        return ([self._arguments(held)] if held else []), openai_reason  # cut (max_tokens, a stop string, a cancel)


def _complete(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def answer_message(*, text: str, finish_reason: str, call_id: str, tool_choice) -> tuple[dict, str]:
    """A whole answer as OpenAI's assistant message ({role, content, tool_calls?}) and its finish reason."""
    splitter = AnswerSplitter(call_id=call_id, tool_choice=tool_choice)
    deltas = splitter.push(text)
    tail, reason = splitter.finish(finish_reason)
    content, call = None, None
    for delta in deltas + tail:
        if "content" in delta:
            content = (content or "") + delta["content"]
        for part in delta.get("tool_calls", ()):
            if call is None:
                call = {"id": part["id"], "type": "function", "function": {"name": part["function"]["name"],
                                                                           "arguments": ""}}  # fmt: skip
            call["function"]["arguments"] += part["function"]["arguments"]
    message = {"role": "assistant", "content": content if content is not None or call else "", "refusal": None}
    if call is not None:
        message["tool_calls"] = [call]
    return message, reason
