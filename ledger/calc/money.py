"""Amounts: integer micro-units (1 credit = 1,000,000), parsed from and shown as decimal strings with 6 places."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
PLACES = 6


class AmountError(ValueError):
    """An amount that cannot be represented exactly in micro-units."""


def parse_credits(value: str | int | Decimal) -> int:
    """'1.5' -> 1_500_000. Refuses more than 6 decimal places, NaN and infinities (never rounds money silently)."""
    if isinstance(value, bool | float):
        raise AmountError("Give the amount as a decimal string such as '1.50', not a binary float.")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise AmountError(f"{value!r} is not a number.") from None
    if not number.is_finite():
        raise AmountError(f"{value!r} is not a finite number.")
    micro = number * MICRO
    if micro != micro.to_integral_value():
        raise AmountError(f"{value!r} has more than {PLACES} decimal places.")
    return int(micro)


def format_credits(micro: int) -> str:
    """1_500_000 -> '1.500000'; exact for any integer."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), MICRO)
    return f"{sign}{whole}.{frac:06d}"
