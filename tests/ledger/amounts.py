"""Credit amounts people type, shared by the parser's tests and the tests of every form and endpoint that takes one:
each bad input with the exact message it gets, and good inputs with their exact micro-units."""

from ledger.calc.money import (
    EXPONENT_MESSAGE,
    NOT_AN_AMOUNT_MESSAGE,
    PLACES_MESSAGE,
    SIGN_MESSAGE,
    TOO_LARGE_MESSAGE,
)

BAD = [
    ("1e999999", EXPONENT_MESSAGE),  # was a 500: the Decimal context overflowed
    ("1E3", EXPONENT_MESSAGE),
    ("2.5e-1", EXPONENT_MESSAGE),
    ("5_0", NOT_AN_AMOUNT_MESSAGE),  # was read as 50
    ("\u0661\u0662", NOT_AN_AMOUNT_MESSAGE),  # Arabic-Indic digits: was read as 12
    ("\uff11\uff12", NOT_AN_AMOUNT_MESSAGE),  # fullwidth digits
    ("1,5", NOT_AN_AMOUNT_MESSAGE),
    ("1 000", NOT_AN_AMOUNT_MESSAGE),
    ("1.2.3", NOT_AN_AMOUNT_MESSAGE),
    (".", NOT_AN_AMOUNT_MESSAGE),
    ("0x10", NOT_AN_AMOUNT_MESSAGE),
    ("NaN", NOT_AN_AMOUNT_MESSAGE),
    ("Infinity", NOT_AN_AMOUNT_MESSAGE),
    ("-1", SIGN_MESSAGE),
    ("+1", SIGN_MESSAGE),
    ("\u22121", SIGN_MESSAGE),
    ("1.0000001", PLACES_MESSAGE),
    ("1.0000000", PLACES_MESSAGE),
    ("1000000000.000001", TOO_LARGE_MESSAGE),
    ("12345678901234567890123456789", TOO_LARGE_MESSAGE),  # 29 digits: was rounded silently
    ("9" * 100_000, TOO_LARGE_MESSAGE),
]

GOOD = [
    ("0", 0),
    ("2", 2_000_000),
    ("2.5", 2_500_000),
    (" 2.5 ", 2_500_000),
    ("007.50", 7_500_000),
    (".5", 500_000),
    ("5.", 5_000_000),
    ("0.000001", 1),
    ("999999999.999999", 999_999_999_999_999),
    ("1000000000", 10**15),
    ("1000000000.000000", 10**15),
]
