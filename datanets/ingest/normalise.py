"""Text normalisation applied before hashing, so that visually identical rows hash identically."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING = re.compile(r"[ \t]+\n")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """NFC; CRLF/CR -> LF; invisible characters and control characters removed; unusual spaces -> space; runs of
    spaces inside a line collapsed (indentation at line start is kept, it matters for code); trailing spaces per
    line and blank lines beyond one removed; leading/trailing whitespace stripped."""
    if text.isascii():
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
    else:
        text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
        text = _ODD_SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n"))
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    if "  " in text or "\t" in text:
        text = _INNER_SPACES.sub(" ", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("\n", text)
    if "\n\n\n" in text:
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def canonical_json(content: dict) -> str:
    """The exact string that is hashed: keys sorted, no spaces, UTF-8 (not \\u-escaped)."""
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(content: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a normalised row. This is the row hash used for dedup and manifests."""
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()
