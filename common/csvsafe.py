"""CSV cells that spreadsheet programs will not run as formulas (CSV injection)."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value) -> str:
    """A cell that spreadsheet programs will not run as a formula: text starting with = + - @ (or a tab/CR) gets a
    leading apostrophe, as OWASP recommends for CSV injection. None is an empty cell; anything else is str(value).
    Numbers that must stay numbers (a signed amount) are written as they are, not through this."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return "'" + text if text.startswith(FORMULA_STARTS) else text
