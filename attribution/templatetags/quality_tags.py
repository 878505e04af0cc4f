"""{% model_quality version %}: how well a model version's payments follow its training data, in plain words (the
published model page loads this tag rather than import attribution): the planted-fact score of its attribution
method as the product's own benches measured it (attribution/quality.json), and what share of its answers so far
was traced to training rows. The technical figures sit behind a details disclosure."""

import datetime as dt

from django import template

from attribution.quality import TINY
from attribution.selectors import model_quality as model_quality_read
from attribution.selectors import percent

register = template.Library()

LABELS = {
    "planted_fact_top1": "Made-up facts whose largest share went to the contributor who gave them",
    "lds": "Linear datamodeling score (LDS): how well the scores predict the effect of training without half the "
    "rows (−1 to 1, higher is better)",
    "unattributed_in_domain": "Share of an answer left untraced, questions from the data",
    "unattributed_out_of_domain": "Share of an answer left untraced, questions about things not in the data",
}


def _model_words(bench_model: str) -> str:
    return "a small test model" if bench_model == TINY else bench_model


def _result(m: dict) -> str:
    if m["metric"] == "planted_fact_top1":
        queries = m["counts"].get("queries")
        return f"{round(m['value'] * queries)} of {queries}" if queries else f"{m['value']:.3f}"
    if m["metric"] == "lds":
        return f"{m['value']:.3f}"
    return percent(m["value"])


def _sample(counts: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def quality_display(q: dict) -> dict:
    """The selector's figures as the page states them: the first (best) measurement of each metric."""
    first: dict[str, dict] = {}
    for m in q["measurements"]:
        first.setdefault(m["metric"], m)
    top1 = first.get("planted_fact_top1")
    outside = first.get("unattributed_out_of_domain")
    answers = q["answers"]
    return {
        "method_version": q["method_version"],
        "top1": top1
        and {
            "hits": round(top1["value"] * top1["counts"]["queries"]),
            "queries": top1["counts"]["queries"],
            "model": _model_words(top1["bench_model"]),
            "date": dt.date.fromisoformat(top1["date"]),
        },
        "outside": outside
        and {
            "untraced": percent(outside["value"]),
            "queries": outside["counts"].get("queries"),
            "model": _model_words(outside["bench_model"]),
            "date": dt.date.fromisoformat(outside["date"]),
        },
        "answers": answers | {"traced_percent": percent(answers["traced_share"] or 0.0)},
        "rows": [
            {
                "label": LABELS[m["metric"]],
                "metric": m["metric"],
                "result": _result(m),
                "value": m["value"],
                "model": _model_words(m["bench_model"]),
                "date": dt.date.fromisoformat(m["date"]),
                "sample": _sample(m["counts"]),
                "command": m["command"],
            }
            for m in q["measurements"]
        ],
    }


@register.inclusion_tag("attribution/_model_quality.html")
def model_quality(version) -> dict:
    return {"q": quality_display(model_quality_read(version=version))}
