"""Row shapes per datanet kind, checked with plain-language reasons, and the flat text of a row."""

from __future__ import annotations

from datanets.ingest.normalise import normalise_text

KINDS = ("instruction", "chat", "text")
FIELDS = {"instruction": ("instruction", "input", "output"), "chat": ("messages",), "text": ("text",)}
REQUIRED = {"instruction": ("instruction", "output"), "chat": ("messages",), "text": ("text",)}
ROLES = ("system", "user", "assistant")
# Other names people commonly give these columns/keys; matched case-insensitively.
ALIASES = {
    "instruction": ("instruction", "question", "prompt", "query", "ask"),
    "input": ("input", "context"),
    "output": ("output", "answer", "response", "completion", "reply"),
    "messages": ("messages", "conversation", "conversations"),
    "text": ("text", "content", "body", "document"),
}


_ALIAS_KEYS = {kind: {a for f in fields for a in ALIASES[f]} for kind, fields in FIELDS.items()}


class RowInvalid(ValueError):
    """The reason a row does not fit the datanet's kind, in plain words."""


def _describe(value) -> str:
    if value is None:
        return "empty (null)"
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _text(row: dict, key: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None and key not in row:  # common other names: {"question", "answer"}, {"prompt", "response"}
        for alias in ALIASES[key]:
            if alias in row:
                value = row[alias]
                break
    if value is None:
        if required:
            raise RowInvalid(f"the field '{key}' is missing")
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowInvalid(f"'{key}' should be text but is {_describe(value)}")
    return normalise_text(value)


def validate_row(kind: str, row) -> tuple[dict, list[str]]:
    """Returns (normalised content, names of fields that were ignored) or raises RowInvalid.

    Empty text is allowed here: screening flags it as `empty` and the curator's choice decides."""
    if not isinstance(row, dict):
        raise RowInvalid(
            f"each row should be an object with {', '.join(FIELDS[kind])}, but this one is {_describe(row)}"
        )
    ignored = [k for k in row if k not in FIELDS[kind] and k not in _ALIAS_KEYS[kind]]
    if kind == "instruction":
        content = {"instruction": _text(row, "instruction", required=True)}
        input_text = _text(row, "input", required=False)
        if input_text:
            content["input"] = input_text
        content["output"] = _text(row, "output", required=True)
        return content, ignored
    if kind == "text":
        return {"text": _text(row, "text", required=True)}, ignored
    messages = row.get("messages", row.get("conversation", row.get("conversations")))
    if messages is None:
        raise RowInvalid("the field 'messages' is missing")
    if not isinstance(messages, list):
        raise RowInvalid(f"'messages' should be a list of {{role, content}} but is {_describe(messages)}")
    if not messages:
        raise RowInvalid("'messages' is an empty list")
    clean = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise RowInvalid(f"message {i} should be an object with role and content but is {_describe(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise RowInvalid(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise RowInvalid(f"message {i} content should be text but is {_describe(content)}")
        clean.append({"role": role, "content": normalise_text(content)})
    if not any(m["role"] == "assistant" for m in clean):
        raise RowInvalid("the conversation has no assistant message to learn from")
    return {"messages": clean}, ignored


def row_text(kind: str, content: dict) -> str:
    """One flat string per row: what is screened, counted in tokens, searched and exported."""
    if kind == "instruction":
        parts = [content["instruction"], content.get("input", ""), content["output"]]
        return "\n\n".join(p for p in parts if p)
    if kind == "chat":
        return "\n".join(f"{m['role']}: {m['content']}" for m in content["messages"])
    return content["text"]


def answer_text(kind: str, content: dict) -> str:
    """What a model trained on the row learns to say: the output, the assistant's turns, or the whole text."""
    if kind == "instruction":
        return content["output"]
    if kind == "chat":
        return "\n".join(m["content"] for m in content["messages"] if m["role"] == "assistant")
    return content["text"]


def map_columns(kind: str, columns: list[str], mapping: dict[str, str] | None) -> dict[str, str]:
    """Maps the datanet's fields to file columns. `mapping` ({field: column}) wins; otherwise exact or alias names
    (case-insensitive). Raises RowInvalid naming a required field that has no column."""
    lowered = {c.strip().lower(): c for c in columns}
    result = {}
    for field in FIELDS[kind]:
        if mapping and mapping.get(field):
            if mapping[field] not in columns:
                raise RowInvalid(f"the column '{mapping[field]}' chosen for '{field}' is not in the file")
            result[field] = mapping[field]
            continue
        for alias in ALIASES[field]:
            if alias in lowered:
                result[field] = lowered[alias]
                break
    missing = [f for f in REQUIRED[kind] if f not in result]
    if missing:
        raise RowInvalid(
            "the file has no column for "
            + ", ".join(f"'{m}'" for m in missing)
            + " (columns found: "
            + ", ".join(columns)
            + ")"
        )
    return result
