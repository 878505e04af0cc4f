"""The one sentence each contributor gets on the answer page, under the answer's own settlement rule."""

import pytest

from attribution.selectors import percent, why_paid


@pytest.mark.parametrize(
    ("kwargs", "sentence"),
    [
        (
            {"traced": 0.4, "settled_share": 0.55, "amount": 56_000, "unattributed": 0.3, "fallback": False},
            "ada was paid 0.056 credits (55% of what the answer paid its contributors): 40% of the answer was traced "
            "to their rows, and the 30% of the answer that could not be traced to anyone is shared by how many "
            "training rows each person gave.",
        ),
        (
            {"traced": 0.0, "settled_share": 0.2, "amount": 11_200, "unattributed": 1.0, "fallback": False},
            "ada was paid 0.0112 credits (20% of what the answer paid its contributors) although none of the answer "
            "was traced to their rows: the 100% of the answer that could not be traced to anyone is shared by how "
            "many training rows each person gave.",
        ),
        (
            {"traced": 1.0, "settled_share": 1.0, "amount": 10_000_000, "unattributed": 0.0, "fallback": False},
            "ada was paid 10.00 credits (100% of what the answer paid its contributors) because 100% of the answer "
            "was traced to their rows.",
        ),
        (
            {"traced": 0.0, "settled_share": 0.5, "amount": 0, "unattributed": 0.0, "fallback": True},
            "ada was paid nothing (50% of what the answer paid its contributors) for the training rows they gave: "
            "this answer could not be traced to single rows, so the contributors were paid by how many rows each "
            "gave.",
        ),
        (
            {"traced": 0.004, "settled_share": 0.004, "amount": None, "unattributed": 0.0, "fallback": False},
            "ada is owed (<1% of what the answer paid its contributors) because <1% of the answer was traced to "
            "their rows.",
        ),
    ],
)
def test_why_paid(kwargs, sentence):
    assert why_paid(name="ada", **kwargs) == sentence


@pytest.mark.parametrize(
    ("kwargs", "sentence"),
    [
        (
            {"traced": 0.4, "settled_share": 1.0, "amount": 56_000, "unattributed": 0.6, "fallback": False},
            "ada was paid 0.056 credits (100% of what the answer paid its contributors) because 40% of the answer was "
            "traced to their rows; the 60% that could not be traced to anyone went to the model's owner, not to "
            "rows.",
        ),
        (
            {"traced": 0.0, "settled_share": 0.0, "amount": 0, "unattributed": 1.0, "fallback": False},
            "ada was paid nothing: none of the answer was traced to their rows.",
        ),
        (
            {"traced": 0.0, "settled_share": 0.0, "amount": 0, "unattributed": 1.0, "fallback": True},
            "ada was paid nothing: this answer could not be traced to single rows, so the contributors' part went to "
            "the model's owner.",
        ),
    ],
)
def test_why_paid_under_the_rule_that_pays_traced_rows_only(kwargs, sentence):
    assert why_paid(name="ada", rule="settle-2", **kwargs) == sentence


def test_percent():
    assert [percent(v) for v in (0, -0.1, 0.001, 0.005, 0.4049, 1.0)] == ["0%", "0%", "<1%", "1%", "40%", "100%"]
