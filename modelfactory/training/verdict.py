"""How much did fine-tuning change the model? Answer agreement and a plain-words verdict. No torch, no Django.

Answer agreement is scored as in SQuAD: both texts are lower-cased, stripped of punctuation and of the articles
"a", "an", "the", and split on white space; *exact match* is equality of the word lists, *token F1* the harmonic
mean of word precision and recall (counting repeats). `judge(metrics)` turns held-out loss and agreement, base vs
tuned, into a level, a one-line headline and advice, never calling a change "better" on noise.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d"})

# Thresholds of the verdict: an F1 gain of 0.25 (a quarter of the expected words more) or a held-out loss 30% lower
# is a clear change; 0.08 / 8% is a small one; below both it "barely changed"; a loss 5% higher with no F1 gain is
# worse.
CLEAR_F1, CLEAR_LOSS = 0.25, 0.30
SOME_F1, SOME_LOSS = 0.08, 0.08
WORSE_LOSS = 0.05


def words(text: str) -> list[str]:
    text = (text or "").lower().translate(_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def exact_match(prediction: str, reference: str) -> bool:
    return words(prediction) == words(reference)


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = words(prediction), words(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def score_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`rows`: [{"reference", "base", "tuned", ...}]. Returns the rows with base/tuned exact match and F1 added, and
    the totals {"answers_scored", "base_exact_match", "exact_match", "base_token_f1", "token_f1"} (shares 0..1;
    None when no row was scored)."""
    scored = []
    for row in rows:
        scored.append(
            {
                **row,
                "base_exact": exact_match(row["base"], row["reference"]),
                "tuned_exact": exact_match(row["tuned"], row["reference"]),
                "base_f1": round(token_f1(row["base"], row["reference"]), 4),
                "tuned_f1": round(token_f1(row["tuned"], row["reference"]), 4),
            }
        )
    n = len(scored)

    def mean(key: str) -> float | None:
        return round(sum(float(r[key]) for r in scored) / n, 4) if n else None

    totals = {
        "answers_scored": n,
        "base_exact_match": mean("base_exact"),
        "exact_match": mean("tuned_exact"),
        "base_token_f1": mean("base_f1"),
        "token_f1": mean("tuned_f1"),
    }
    return scored, totals


def _percent(share: float) -> str:
    return f"{round(share * 100)}%"


def judge(metrics: dict[str, Any], *, preset: str | None = None) -> dict[str, Any]:
    """{"level": "clear" | "some" | "barely" | "worse" | "unknown", "headline": str, "advice": [str]} from the
    held-out metrics (base_eval_loss, eval_loss, base_token_f1, token_f1, answers_scored, base_exact_match,
    exact_match)."""
    base_loss, loss = metrics.get("base_eval_loss"), metrics.get("eval_loss")
    base_f1, f1 = metrics.get("base_token_f1"), metrics.get("token_f1")
    scored = metrics.get("answers_scored") or 0
    if base_loss is None or loss is None:
        return {
            "level": "unknown",
            "headline": "There were too few rows to keep some aside for a check, so we cannot say how much the model "
            "learned.",
            "advice": ["Add more rows (20 or more) so that some can be held out to measure the result."],
        }
    loss_drop = (base_loss - loss) / base_loss if base_loss > 0 else 0.0
    f1_gain = (f1 - base_f1) if scored and f1 is not None and base_f1 is not None else None
    parts = []
    if f1_gain is not None:
        parts.append(
            f"on {scored} held-out question{'s' if scored != 1 else ''} its answers share {_percent(f1)} of the "
            f"expected words (the base model: {_percent(base_f1)}), {_percent(metrics.get('exact_match') or 0)} "
            f"word for word (base: {_percent(metrics.get('base_exact_match') or 0)})"
        )
    parts.append(f"its held-out loss went from {base_loss:.3f} to {loss:.3f} ({-loss_drop * 100:+.0f}%)")
    measures = "; ".join(parts) + "."
    gain = f1_gain if f1_gain is not None else 0.0
    facts_preset = preset in (None, "balanced", "thorough")
    if loss_drop <= -WORSE_LOSS and gain <= 0:
        return {
            "level": "worse",
            "headline": "The fine-tuned model does worse than the base model on rows it did not train on: " + measures,
            "advice": [
                "Lower the learning rate (Advanced settings) or train for fewer passes: it may have memorised "
                "the training rows.",
                "Check that the rows agree with each other and that each answer fits its question.",
            ],
        }
    if gain >= CLEAR_F1 or (f1_gain is None and loss_drop >= CLEAR_LOSS) or (loss_drop >= CLEAR_LOSS and gain >= 0):
        return {"level": "clear", "headline": "The model learned your data: " + measures, "advice": []}
    if gain >= SOME_F1 or loss_drop >= SOME_LOSS:
        advice = ["Train longer (more epochs, or a higher minimum of learning steps) to learn more of it."]
        if not facts_preset:
            advice.append("Use the \u201cLearns your facts\u201d preset.")
        if f1_gain is not None and f1_gain < SOME_F1:  # the loss fell, but the answers did not get closer
            headline = (
                "The model picked up the style of your data, but its answers are no closer to the expected ones: "
            )
            return {"level": "some", "headline": headline + measures, "advice": advice}
        return {"level": "some", "headline": "The model learned some of your data: " + measures, "advice": advice}
    advice = [
        "Train longer: more epochs, or a higher minimum of learning steps (Advanced settings).",
        "Add more rows that state your facts, each in a few different ways.",
    ]
    if not facts_preset:
        advice.insert(0, "Use the \u201cLearns your facts\u201d preset: this one only picks up tone and format.")
    return {"level": "barely", "headline": "The model barely changed: " + measures, "advice": advice}
