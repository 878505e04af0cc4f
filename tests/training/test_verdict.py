"""Answer agreement (exact match, token F1) and the plain-words verdict, on plain values."""

import pytest

from modelfactory.training.verdict import exact_match, judge, score_rows, token_f1, words


def test_words_ignore_case_punctuation_and_articles():
    assert words("The capital is Quellmoor!") == ["capital", "is", "quellmoor"]
    assert exact_match("Quellmoor is the capital.", "quellmoor is capital")
    assert not exact_match("Quellmoor", "Quellmoor is the capital")


@pytest.mark.parametrize(
    ("prediction", "reference", "f1"),
    [
        ("Treskel has 17 moons", "Treskel has 17 moons.", 1.0),
        ("Treskel has 12 moons", "Treskel has 17 moons", 0.75),  # 3 of 4 words each way
        ("It has many moons", "Treskel has 17 moons", 0.5),  # has, moons: P = 2/4, R = 2/4
        ("Nothing in common", "Treskel has 17 moons", 0.0),
        ("", "Treskel has 17 moons", 0.0),
        ("", "", 1.0),
    ],
)
def test_token_f1(prediction, reference, f1):
    assert token_f1(prediction, reference) == pytest.approx(f1)


def test_score_rows_adds_each_rows_scores_and_the_totals():
    rows, totals = score_rows(
        [
            {"row_id": 1, "reference": "Teal feathers.", "base": "Blue feathers.", "tuned": "Teal feathers"},
            {"row_id": 2, "reference": "Seventeen moons", "base": "No idea", "tuned": "Twelve moons"},
        ]
    )
    assert [(r["base_exact"], r["tuned_exact"], r["base_f1"], r["tuned_f1"]) for r in rows] == [
        (False, True, 0.5, 1.0),
        (False, False, 0.0, 0.5),
    ]
    assert totals == {"answers_scored": 2, "base_exact_match": 0.0, "exact_match": 0.5, "base_token_f1": 0.25,
                      "token_f1": 0.75}  # fmt: skip
    assert score_rows([])[1]["token_f1"] is None


def metrics(base_loss, loss, base_f1=None, f1=None, scored=0):
    return {"base_eval_loss": base_loss, "eval_loss": loss, "base_token_f1": base_f1, "token_f1": f1,
            "answers_scored": scored, "base_exact_match": 0.0, "exact_match": 0.0}  # fmt: skip


def test_the_issue_case_is_barely_changed_not_better():
    """The run the issue reports: loss 4.168 -> 4.122 and the same general answers as the base model."""
    verdict = judge(metrics(4.168, 4.122, base_f1=0.21, f1=0.22, scored=3), preset="quick")
    assert verdict["level"] == "barely"
    assert verdict["headline"] == (
        "The model barely changed: on 3 held-out questions its answers share 22% of the expected words (the base "
        "model: 21%), 0% word for word (base: 0%); its held-out loss went from 4.168 to 4.122 (-1%)."
    )
    assert "better" not in verdict["headline"]
    assert (
        verdict["advice"][0] == "Use the \u201cLearns your facts\u201d preset: this one only picks up tone and format."
    )
    assert len(judge(metrics(4.168, 4.122, 0.21, 0.22, 3), preset="balanced")["advice"]) == 2


@pytest.mark.parametrize(
    ("values", "level"),
    [
        (metrics(3.0, 0.5, 0.2, 0.9, 6), "clear"),
        (metrics(3.0, 2.9, 0.2, 0.5, 6), "clear"),  # F1 up by 0.3 although the loss hardly moved
        (metrics(3.0, 1.5), "clear"),  # no answers scored: a loss 50% lower
        (metrics(3.0, 2.6, 0.2, 0.25, 6), "some"),  # loss 13% lower
        (metrics(3.0, 2.9, 0.2, 0.3, 6), "some"),  # F1 up by 0.1
        (metrics(3.0, 3.3, 0.2, 0.2, 6), "worse"),
        (metrics(3.0, 3.3, 0.2, 0.5, 6), "clear"),  # overconfident on loss but the answers got much closer
        (metrics(None, None), "unknown"),
    ],
)
def test_levels(values, level):
    assert judge(values)["level"] == level


def test_a_lower_loss_with_answers_no_closer_says_style_not_facts():
    """bench_learning's "quick" run on SmolLM2: the loss fell 30%, its answers took the data's form with wrong facts."""
    verdict = judge(metrics(3.711, 2.581, 0.2223, 0.1402, 3), preset="quick")
    assert verdict["level"] == "some"
    assert verdict["headline"].startswith(
        "The model picked up the style of your data, but its answers are no closer to the expected ones: on 3 "
        "held-out questions its answers share 14% of the expected words (the base model: 22%)"
    )
    assert verdict["advice"][-1] == "Use the \u201cLearns your facts\u201d preset."
