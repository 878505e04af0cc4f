"""Quality and privacy screening of one row's text, and redaction of what was found."""

from __future__ import annotations

import re
from dataclasses import dataclass

KEEP, REDACT, DROP = "keep", "redact", "drop"
ACTIONS = (KEEP, REDACT, DROP)
# Flag kind -> (plain-language label, whether redaction applies).
FLAG_KINDS = {
    "empty": ("an empty field", False),
    "too_short": ("very short", False),
    "too_long": ("very long", False),
    "repeated_chars": ("repeated-character or repeated-word spam", False),
    "email": ("an e-mail address", True),
    "phone": ("a phone number", True),
    "card_number": ("a payment card number", True),
    "api_key": ("an API key or access token", True),
    "private_key": ("a private key", True),
    "near_duplicate": ("nearly the same as another row", False),
    "copied": ("a copy of another contributor's earlier row (its credit goes to them)", False),
}
DEFAULT_ACTIONS = {
    "empty": DROP,
    "too_short": DROP,
    "too_long": KEEP,
    "repeated_chars": DROP,
    "email": REDACT,
    "phone": REDACT,
    "card_number": REDACT,
    "api_key": REDACT,
    "private_key": DROP,
    "near_duplicate": KEEP,
    "copied": KEEP,
}
REPLACEMENT = {
    "email": "[email removed]",
    "phone": "[phone removed]",
    "card_number": "[card number removed]",
    "api_key": "[API key removed]",
    "private_key": "[private key removed]",
}

# Each pattern runs only when a cheap test says it could match: most rows contain none of these.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# One scan finds every run of 20+ non-space characters: API keys and 25-character repeats both live in such runs.
_LONG_RUN = re.compile(r"\S{16,}")
_API_TOKEN = re.compile(
    r"(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|A(?:KIA|SIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
    r"|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}|mf_[A-Za-z0-9_-]{40,})(?![A-Za-z0-9_-])"
)
_NAMED_SECRET = re.compile(
    r"(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-/+]{16,})",
    re.IGNORECASE,
)
_DIGIT_RUN = re.compile(r"(?<![\w.,/:])\+?\(?\d[\d ().-]{6,24}\d(?![\w]|[.,]\d)")
# A phone or card number has at least 8 digits/separators in a row; most text has none, and this is cheap to scan.
_DIGITS_AHEAD = re.compile(r"\d[\d ().-]{7}")
_REPEATED_CHAR = re.compile(r"(.)\1{24}")
_SEPARATORS = set(" \t\n-=_*#.~`|+")
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){9,}", re.IGNORECASE)
_PHONE_GROUPS = re.compile(r"^\+?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\(?\d{2,5}\)?)+$")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _classify_digits(span: str) -> str | None:
    digits = re.sub(r"\D", "", span)
    n = len(digits)
    if 13 <= n <= 19 and not re.search(r"[().]", span) and luhn_valid(digits) and len(set(digits)) > 1:
        return "card_number"
    if 9 <= n <= 15 and (span.startswith("+") or re.search(r"[ ().-]", span)) and _PHONE_GROUPS.match(span.strip()):
        return "phone"
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    min_chars: int = 8
    max_chars: int = 20_000


def find_sensitive(text: str, words: list[str] | None = None) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every e-mail, phone number, card number (Luhn-checked), API key and private key.

    `words` (text.split(), when the caller has it) lets the API-key check look only at long words."""
    found = []
    if "PRIVATE KEY" in text:
        found.extend(("private_key", m.start(), m.end()) for m in _PRIVATE_KEY.finditer(text))
    if "@" in text:
        found.extend(("email", m.start(), m.end()) for m in _EMAIL.finditer(text))
    if words is None:
        words = text.split()
    if any(len(w) >= 16 for w in words):
        for run in _LONG_RUN.finditer(text):
            for m in _API_TOKEN.finditer(run.group()):
                if m.start() == 0 or not run.group()[m.start() - 1].isalnum():
                    found.append(("api_key", run.start() + m.start(), run.start() + m.end()))
    lowered = text.lower()
    if "key" in lowered or "token" in lowered:
        found.extend(("api_key", m.start(1), m.end(1)) for m in _NAMED_SECRET.finditer(text))
    if _DIGITS_AHEAD.search(text):
        for m in _DIGIT_RUN.finditer(text):
            kind = _classify_digits(m.group())
            if kind is not None:
                found.append((kind, m.start(), m.end()))
    if len(found) < 2:
        return found
    # Overlaps (a key inside a private key block, the same key found twice) keep the earliest, longest span.
    found.sort(key=lambda s: (s[1], -s[2]))
    kept, end = [], -1
    for span in found:
        if span[1] >= end:
            kept.append(span)
            end = span[2]
    return kept


def is_spam(text: str, words: list[str] | None = None) -> bool:
    """A character repeated 25+ times in a row (separators such as ---- excepted) or a word repeated 10+ times."""
    if words is None:
        words = text.split()
    for word in words:
        if len(word) >= 25:
            for m in _REPEATED_CHAR.finditer(word):
                if m.group(1) not in _SEPARATORS:
                    return True
    if len(words) >= 10 and len(set(words)) * 2 <= len(words):
        return _REPEATED_WORD.search(text) is not None
    return False


def screen_fields(fields: list[str], flat_text: str, *, limits: Limits) -> set[str]:
    """Flag kinds found in a row. `fields` are the row's text fields (an empty one is flagged `empty`)."""
    flags = set()
    if not all(fields):
        flags.add("empty")
    size = len(flat_text)
    if 0 < size < limits.min_chars:
        flags.add("too_short")
    elif size > limits.max_chars:
        flags.add("too_long")
    words = flat_text.split()
    if is_spam(flat_text, words):
        flags.add("repeated_chars")
    for kind, _, _ in find_sensitive(flat_text, words):
        flags.add(kind)
    return flags


def empty_field_names(content: dict) -> list[str]:
    """The fields of a row's content that are empty, named for a person: ["output"], ["message 2"]."""
    names = []
    for key, value in content.items():
        if key == "messages" and isinstance(value, list):
            names += [
                f"message {i}"
                for i, message in enumerate(value, 1)
                if isinstance(message, dict) and not str(message.get("content") or "").strip()
            ]
        elif isinstance(value, str) and not value.strip():
            names.append(key)
    return names


def redact(text: str, kinds: set[str]) -> str:
    """Replaces every match of the given sensitive kinds with a readable marker such as "[email removed]"."""
    spans = [s for s in find_sensitive(text) if s[0] in kinds]
    for kind, start, end in reversed(spans):
        text = text[:start] + REPLACEMENT[kind] + text[end:]
    return text
