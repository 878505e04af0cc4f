"""Amounts: integer micro-units (1 credit = 1,000,000), parsed from and shown as decimal strings with 6 places."""

from __future__ import annotations

import re

MICRO = 1_000_000
PLACES = 6
MAX_CREDITS = 10**9  # far above any real wallet; thousands of maximum amounts still fit a 64-bit balance in micro-units
MAX_MICRO = MAX_CREDITS * MICRO

# Plain ASCII digits with at most one '.': no sign, exponent, underscore, spaces inside or other scripts' digits.
_PLAIN = re.compile(r"(?P<whole>[0-9]*)(?:\.(?P<frac>[0-9]*))?", re.ASCII)
_EXPONENT = re.compile(r"[0-9.]+[eE][+-]?[0-9]*", re.ASCII)

SIGN_MESSAGE = "Enter the amount without a sign; amounts are never negative."
EXPONENT_MESSAGE = "Write the amount out in digits (such as 1500), without an exponent like 1.5e3."
NOT_AN_AMOUNT_MESSAGE = "Enter the amount in credits using only the digits 0-9 and at most one '.', such as 12.5."
PLACES_MESSAGE = (
    "Use at most 6 digits after the point: the smallest amount is 0.000001 credits (one millionth of a credit)."
)
TOO_LARGE_MESSAGE = f"The amount can be at most {MAX_CREDITS:,} credits."
FLOAT_MESSAGE = (
    'Send the amount as text in quotes, such as "1.50", not as a JSON number with a fraction: those cannot be kept '
    "exactly."
)


class AmountError(ValueError):
    """An amount given by a person that is not a plain, exact number of credits; the message says what to fix."""


def parse_credits(value: str | int) -> int:
    """Credits given by a person ('1.5', '12', '0.000001', or a whole number) -> micro-units (1_500_000).

    The one parser for every amount typed into a form or sent to the API: plain ASCII digits with at most one '.'
    ('5', '5.', '.5', '5.5'), at most 6 decimal places, from 0 to MAX_CREDITS. Refuses signs, exponents,
    underscores, other scripts' digits, NaN and infinities, and never rounds: the integer comes from the digits
    themselves, with no Decimal context that could round past 28 digits or overflow. Surrounding spaces are
    ignored. Raises AmountError with a message for the person who typed it."""
    if isinstance(value, bool | float):
        raise AmountError(FLOAT_MESSAGE)
    if isinstance(value, int):  # a JSON number without a fraction
        if value < 0:
            raise AmountError(SIGN_MESSAGE)
        if value > MAX_CREDITS:
            raise AmountError(TOO_LARGE_MESSAGE)
        return value * MICRO
    if not isinstance(value, str):
        raise AmountError(NOT_AN_AMOUNT_MESSAGE)
    text = value.strip(" \t\r\n")
    match = _PLAIN.fullmatch(text)
    if match is None or not (match["whole"] or match["frac"]):
        if text[:1] in ("-", "+", "\N{MINUS SIGN}"):
            raise AmountError(SIGN_MESSAGE)
        if _EXPONENT.fullmatch(text):
            raise AmountError(EXPONENT_MESSAGE)
        raise AmountError(NOT_AN_AMOUNT_MESSAGE)
    whole, frac = match["whole"].lstrip("0"), match["frac"] or ""
    if len(frac) > PLACES:
        raise AmountError(PLACES_MESSAGE)
    if len(whole) > len(str(MAX_CREDITS)):  # before int(): a million-digit string is not converted
        raise AmountError(TOO_LARGE_MESSAGE)
    micro = int(whole or "0") * MICRO + int(frac.ljust(PLACES, "0"))
    if micro > MAX_MICRO:
        raise AmountError(TOO_LARGE_MESSAGE)
    return micro


def format_credits(micro: int) -> str:
    """1_500_000 -> '1.500000'; exact for any integer."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def format_credits_short(micro: int) -> str:
    """What a person needs to read, for pages (exact values stay in the API and in details views):
    one credit or more -> 2 decimals with thousands separators (10_000_000 -> '10.00', 1_234_567_890 -> '1,234.57');
    below one credit -> 3 significant digits, at least 2 decimals, never past the micro-unit (11_200 -> '0.0112',
    202_000 -> '0.202', 500_000 -> '0.50', 1 -> '0.000001'); zero -> '0.00'. Rounds half away from zero, on the
    integer itself (no float)."""
    micro = int(micro)
    sign = "-" if micro < 0 else ""
    value = abs(micro)
    if value >= MICRO:
        cents = (value + 5_000) // 10_000  # half up, to hundredths of a credit
        return f"{sign}{cents // 100:,}.{cents % 100:02d}"
    if value == 0:
        return "0.00"
    places = min(PLACES, max(2, 6 - len(str(value)) + 3))  # 3 significant digits, 2 to 6 decimals
    step = 10 ** (PLACES - places)
    rounded = (value + step // 2) // step if step > 1 else value
    if rounded * step >= MICRO:  # 0.9996 rounds to one credit
        return f"{sign}1.00"
    digits = f"{rounded:0{places}d}".rstrip("0")
    return f"{sign}0.{digits.ljust(2, '0')}"


def format_credits_exact(micro: int) -> str:
    """The exact amount without trailing zeros past the cents, for sentences (2_000 -> '0.002', 1_000_000 -> '1.00',
    156 -> '0.000156', 0 -> '0.00')."""
    text = format_credits(micro)
    whole, frac = text.split(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
