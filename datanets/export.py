"""CSV export helpers (pure)."""

from __future__ import annotations

import json

from common.csvsafe import csv_safe


def export_columns(kind: str) -> list[str]:
    fields = {"instruction": ["instruction", "input", "output"], "chat": ["messages"], "text": ["text"]}[kind]
    return ["record_id", "contributor", *fields, "content_hash", "tokens"]


def export_row(kind: str, record_id: int, contributor: str, content: dict, content_hash: str, tokens: int) -> list:
    if kind == "instruction":
        fields = [content.get("instruction", ""), content.get("input", ""), content.get("output", "")]
    elif kind == "chat":
        fields = [json.dumps(content.get("messages", []), ensure_ascii=False)]
    else:
        fields = [content.get("text", "")]
    return [csv_safe(v) for v in (record_id, contributor, *fields, content_hash, tokens)]
