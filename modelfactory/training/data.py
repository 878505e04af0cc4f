"""Datanet rows -> tokenised training examples with labels only on the answer tokens.

A row is a plain dict `{"id": int, "kind": "instruction" | "chat" | "text", "content": {...}}`:

- instruction: `{"instruction", "input"?, "output"}` -> one user turn (instruction, then a blank line and the input
  when there is one) and one assistant turn (output), rendered with the tokenizer's chat template.
- chat: `{"messages": [{"role", "content"}, ...]}` -> all turns rendered; loss on every assistant turn.
- text: `{"text"}` -> plain causal language modelling on the whole text followed by the end-of-sequence token,
  without a chat template.

Each rendered conversation is cut into segments (text, trained or not). Segments are tokenised one by one and
concatenated, so the trained tokens are exactly the tokens of the assistant content plus its end token: the same
tokens the model produces when it answers after the generation prompt. Labels are -100 everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
KINDS = ("instruction", "chat", "text")
ROLES = ("system", "user", "assistant")

# Used only when a tokenizer ships without a chat template (a base, non-instruct model): ChatML with its own eos.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class DataError(ValueError):
    """A row cannot be turned into a training example; the message says which row and why."""


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass
class Example:
    row_id: int
    input_ids: list[int]
    labels: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class BuildReport:
    rows_total: int = 0
    rows_used: int = 0
    too_long: list[int] = field(default_factory=list)  # row ids longer than max_length tokens
    no_answer: list[int] = field(default_factory=list)  # row ids with nothing to learn (empty answer, no assistant)
    invalid: dict[int, str] = field(default_factory=dict)  # row id -> why the row could not be read
    tokens: int = 0
    answer_tokens: int = 0

    @property
    def dropped(self) -> int:
        return len(self.too_long) + len(self.no_answer) + len(self.invalid)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_total": self.rows_total,
            "rows_used": self.rows_used,
            "too_long": list(self.too_long),
            "no_answer": list(self.no_answer),
            "invalid": {str(k): v for k, v in self.invalid.items()},
            "tokens": self.tokens,
            "answer_tokens": self.answer_tokens,
        }


def row_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The default mapping of an instruction or chat row to chat messages (DataError when malformed)."""
    kind = row.get("kind")
    content = row.get("content")
    if not isinstance(content, dict):
        raise DataError("content must be an object")
    if kind == "instruction":
        instruction = content.get("instruction")
        output = content.get("output")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError("an instruction row needs a non-empty 'instruction'")
        if not isinstance(output, str):
            raise DataError("an instruction row needs an 'output'")
        extra = content.get("input") or ""
        if not isinstance(extra, str):
            raise DataError("'input' must be text")
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if kind == "chat":
        messages = content.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError("a chat row needs a non-empty 'messages' list")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise DataError(f"message {i + 1} needs a role among {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise DataError(f"message {i + 1} needs text content")
            clean.append({"role": message["role"], "content": message["content"]})
        return clean
    raise DataError(f"kind must be one of {', '.join(KINDS)}")


def _render(tokenizer, messages, *, generation_prompt: bool = False) -> str:
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
    )


def _end_token(tokenizer, after: str) -> str:
    """The special token that closes an answer in the rendered text (eos first, then any special token)."""
    candidates = [tokenizer.eos_token, *sorted(tokenizer.all_special_tokens, key=len, reverse=True)]
    for token in candidates:
        if token and after.startswith(token):
            return token
    return ""


def row_segments(tokenizer, row: dict[str, Any]) -> list[Segment]:
    """The row rendered as it is trained: consecutive text segments, each trained-on or not."""
    if row.get("kind") == "text":
        content = row.get("content")
        text = content.get("text") if isinstance(content, dict) else None
        if not isinstance(text, str):
            raise DataError("a text row needs 'text'")
        return [Segment(text, True), Segment(tokenizer.eos_token or "", True)] if text.strip() else []
    messages = row_messages(row)
    segments: list[Segment] = []
    done = ""  # rendered text of the messages handled so far
    for i, message in enumerate(messages):
        full = _render(tokenizer, messages[: i + 1])
        if not full.startswith(done):
            raise DataError("the chat template does not render this conversation turn by turn")
        if message["role"] != "assistant" or not message["content"]:
            segments.append(Segment(full[len(done) :], False))
            done = full
            continue
        content = message["content"]
        start = -1
        if i > 0:
            prompt = _render(tokenizer, messages[:i], generation_prompt=True)
            if full.startswith(prompt) and full[len(prompt) :].startswith(content):
                start = len(prompt)
        if start < 0:
            found = full.rfind(content, len(done))
            if found < 0:
                raise DataError("the chat template drops the assistant's answer")
            start = found
        end = start + len(content)
        end += len(_end_token(tokenizer, full[end:]))
        segments += [Segment(full[len(done) : start], False), Segment(full[start:end], True)]
        segments.append(Segment(full[end:], False))
        done = full
    return [s for s in segments if s.text]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_example(tokenizer, row: dict[str, Any]) -> Example:
    input_ids: list[int] = []
    labels: list[int] = []
    for segment in row_segments(tokenizer, row):
        ids = _encode(tokenizer, segment.text)
        input_ids += ids
        labels += ids if segment.trained else [IGNORE_INDEX] * len(ids)
    return Example(row_id=int(row["id"]), input_ids=input_ids, labels=labels)


def build_examples(tokenizer, rows: list[dict[str, Any]], *, max_length: int) -> tuple[list[Example], BuildReport]:
    """Tokenised examples for every usable row, and a report of the rows left out and why.

    A row longer than `max_length` tokens is dropped rather than cut (a cut answer teaches the model to stop
    mid-sentence); a row without a single answer token is dropped too."""
    report = BuildReport(rows_total=len(rows))
    examples: list[Example] = []
    for row in rows:
        row_id = int(row.get("id", -1))
        try:
            example = build_example(tokenizer, row)
        except DataError as exc:
            report.invalid[row_id] = str(exc)
            continue
        if example.n_answer_tokens == 0:
            report.no_answer.append(row_id)
        elif example.n_tokens > max_length:
            report.too_long.append(row_id)
        else:
            examples.append(example)
            report.tokens += example.n_tokens
            report.answer_tokens += example.n_answer_tokens
    report.rows_used = len(examples)
    return examples, report


def preview_rows(tokenizer, rows: list[dict[str, Any]], *, max_length: int, limit: int = 3) -> list[dict[str, Any]]:
    """For the wizard: the first `limit` rows rendered as segments `{text, trained, tokens}` with totals.

    `too_long` flags a row that would be dropped at this max length; `error` explains a row that cannot be read."""
    previews = []
    for row in rows[:limit]:
        item: dict[str, Any] = {"row_id": row.get("id"), "segments": [], "tokens": 0, "trained_tokens": 0}
        try:
            segments = row_segments(tokenizer, row)
        except DataError as exc:
            item.update(error=str(exc), too_long=False)
            previews.append(item)
            continue
        # The conversation as a person reads it (the chat preview's bubbles); the segments are the exact text.
        item["messages"] = (
            None
            if row.get("kind") == "text"
            else [{**m, "trained": m["role"] == "assistant" and bool(m["content"])} for m in row_messages(row)]
        )
        for segment in segments:
            count = len(_encode(tokenizer, segment.text))
            item["segments"].append({"text": segment.text, "trained": segment.trained, "tokens": count})
            item["tokens"] += count
            item["trained_tokens"] += count if segment.trained else 0
        item["too_long"] = item["tokens"] > max_length
        item["error"] = None
        previews.append(item)
    return previews


def prompt_and_reference(tokenizer, row: dict[str, Any]) -> tuple[str, str, str] | None:
    """(display prompt, rendered prompt for generation, reference answer) for a held-out row, or None.

    Chat rows end at their last assistant turn; text rows are cut after their first third."""
    if row.get("kind") == "text":
        text = (row.get("content") or {}).get("text") or ""
        ids = _encode(tokenizer, text)
        if len(ids) < 6:
            return None
        cut = max(3, len(ids) // 3)
        head = tokenizer.decode(ids[:cut])
        return head, head, tokenizer.decode(ids[cut:])
    try:
        messages = row_messages(row)
    except DataError:
        return None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last <= 0:
        return None
    asked = [m["content"] for m in messages[:last] if m["role"] == "user"]
    shown = asked[-1] if asked else messages[last - 1]["content"]
    rendered = _render(tokenizer, messages[:last], generation_prompt=True)
    return shown, rendered, messages[last]["content"]
