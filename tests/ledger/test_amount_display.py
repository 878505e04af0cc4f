"""Amounts on pages: what matters (10.00, 0.0112), the exact value on hover; the API keeps 6 places."""

import pytest
from django.template import Context, Template

from ledger.calc.money import format_credits_short


@pytest.mark.parametrize(
    ("micro", "shown"),
    [
        (10_000_000, "10.00"),
        (1_234_567_890, "1,234.57"),
        (1_005_000, "1.01"),  # half away from zero
        (1_004_999, "1.00"),
        (999_600, "1.00"),
        (500_000, "0.50"),
        (202_000, "0.202"),
        (123_456, "0.123"),
        (56_000, "0.056"),
        (11_200, "0.0112"),
        (1_234, "0.00123"),
        (1, "0.000001"),
        (0, "0.00"),
        (-202_000, "-0.202"),
        (-10_000_000, "-10.00"),
    ],
)
def test_short_amounts(micro, shown):
    assert format_credits_short(micro) == shown


def test_credits_filter_shows_the_short_amount_with_the_exact_one_on_hover():
    html = Template("{% load ledger_tags %}{{ a|credits }} / {{ b|credits_exact }}").render(
        Context({"a": 10_000_000, "b": 11_200})
    )
    assert html == '<span class="amount" title="10.000000 credits">10.00</span> / 0.011200'
