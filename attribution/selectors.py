"""Attribution reads, each scoped to who may see it.

- One answer's attribution: its caller, the model's owner and staff (anyone else gets DoesNotExist -> 404).
- A model's summary: the models the user may see (modelfactory.selectors.trained_models_visible).
- A contributor's summary: their own.
- A datanet's summary: whoever may see the datanet; the data valuation flags only its curators.
- What a contributor's rows earned: the contributor's own (attribution.services.row_earnings says how).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

from django.db.models import Avg, Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from attribution import quality
from attribution.models import Attribution, AttributionRow, AttributionShare, ContributionValue
from attribution.services.settlement import RETRIEVAL_PART
from ledger.calc.money import format_credits, format_credits_short
from ledger.calc.split import sub_part_amounts, to_fraction

# What a datanet's pool is for, in the words the datanet page and the API show.
POOL_PURPOSE = (
    "Money forfeited by uploads a curator confirmed harmful (their earnings still under review) and the bonds of "
    "uploads rejected as spam or confirmed harmful, kept for this datanet's curation. Nothing is paid out of the pool "
    "yet: a way to spend it (for example on curators' work) is not built."
)


def attribution_get_for(*, user, inference_id: int) -> Attribution:
    """Raises Attribution.DoesNotExist when there is none yet or the user may not see it."""
    from modelfactory.models import Inference

    inferences = Inference.objects.filter(pk=inference_id)
    if not user.is_staff:
        inferences = inferences.filter(Q(caller=user) | Q(model__owner=user))
    inference = inferences.select_related("model", "caller").first()
    if inference is None:
        raise Attribution.DoesNotExist
    return Attribution.objects.select_related("inference__model__owner", "inference__caller", "settlement_tx").get(
        inference=inference
    )


def attribution_detail(*, attribution: Attribution, user, top: int = 10) -> dict:
    """Everything the answer page and the API show `user`: contributors with shares and amounts, the top rows with
    their text and owner, the spans, and the answer cut into plain and highlighted pieces.

    A row's text is shown only to whoever may see its datanet (public: everyone; private: its owner, curators and
    staff) and to the row's own contributor; for anyone else it is None (`text_hidden` True) and only the row's
    contributor, score and record id remain: a public model trained on a private datanet must not hand out the
    private rows to its callers. Spans carry no row text, only offsets into the answer the caller already has."""
    from accounts.models import User
    from datanets.models import Record
    from datanets.selectors import datanet_ids_visible

    shares = list(attribution.shares.select_related("contributor").order_by("-share", "-settled_share", "contributor"))
    settled = attribution.settlement_status == Attribution.Settlement.SETTLED
    contributors = [
        {
            "username": s.contributor.username,
            "user_id": s.contributor_id,
            "share": s.share,
            "settled_share": s.settled_share,
            "amount": s.amount_micro if settled else None,
            "why": why_paid(
                name=s.contributor.username, traced=s.share, settled_share=s.settled_share,
                amount=s.amount_micro if settled else None, unattributed=attribution.unattributed,
                fallback=attribution.status == Attribution.Status.FALLBACK, rule=attribution.settlement_rule,
            ),
        }
        for s in shares
    ]  # fmt: skip
    retrieval = _retrieval_detail(attribution, contributors, settled=settled)
    record_ids = [r["record_id"] for r in attribution.top_rows[:top]] + [s["record_id"] for s in attribution.spans]
    records = {r.pk: r for r in Record.objects.filter(pk__in=record_ids)}
    users = dict(User.objects.filter(pk__in=[r.contributor_id for r in records.values()]).values_list("pk", "username"))
    readable = datanet_ids_visible(user=user, datanet_ids={r.datanet_id for r in records.values()})
    rows = []
    influence_total = sum(max(0.0, row["score"]) for row in attribution.top_rows[:top])
    for row in attribution.top_rows[:top]:
        record = records.get(row["record_id"])
        hidden = record is not None and record.datanet_id not in readable and record.contributor_id != user.pk
        rows.append(
            {
                "record_id": row["record_id"],
                "contributor": users.get(record.contributor_id, "") if record else "",
                "score": row["score"],
                "influence": max(0.0, row["score"]) / influence_total if influence_total else 0.0,
                "text": None if hidden else (record.text if record else ""),
                "text_hidden": hidden,
            }
        )
    split = {}
    if settled and attribution.settlement_tx is not None:
        split = (attribution.settlement_tx.metadata.get("settlement") or {}).get("split", {})
    return {
        "contributors": contributors,
        "rows": rows,
        "spans": [
            {**span, "contributor": users.get(getattr(records.get(span["record_id"]), "contributor_id", None), "")}
            for span in attribution.spans
        ],
        "pieces": answer_pieces(attribution.inference.output, attribution.spans),
        "owner_amount": split.get("owner") if settled else None,
        "platform_amount": split.get("platform") if settled else None,
        "retrieval": retrieval,
    }


def _retrieval_detail(attribution: Attribution, contributors: list[dict], *, settled: bool) -> dict | None:
    """Rule settle-3's retrieval part on the answer page: {part, amount, cited: [username]}, and for each
    contributor whose rows were cited `cited_amount` (of `amount`) and a sentence added to `why`. None when the
    answer cited nothing."""
    weights = {int(uid): to_fraction(w) for uid, w in (attribution.citation_weights or {}).items()}
    if attribution.settlement_rule != "settle-3" or not weights:
        return None
    part = RETRIEVAL_PART
    shares = {int(uid): to_fraction(v) for uid, v in attribution.settlement_shares.items()}
    amounts = {c["user_id"]: c["amount"] or 0 for c in contributors}
    cited = sub_part_amounts(amounts, shares, {uid: part * w for uid, w in weights.items()}) if settled else {}
    for c in contributors:
        if c["user_id"] in weights:
            c["cited_amount"] = cited.get(c["user_id"]) if settled else None
            paid = f" ({credits(c['cited_amount'])} of it)" if c["cited_amount"] is not None else ""
            c["why"] += (
                f" Their rows were cited as sources of the answer: they had {percent(float(weights[c['user_id']]))}"
                f" of the sources' part{paid}."
            )
    return {
        "part": float(part),
        "amount": sum(cited.values()) if settled else None,
        "cited": [c["username"] for c in contributors if c["user_id"] in weights],
    }


def credits(micro: int) -> str:
    return f"{format_credits_short(micro)} credits"


def percent(value: float) -> str:
    """A share 0..1 as a person reads it: '40%', '<1%' for a sliver, '0%' for none."""
    if value <= 0:
        return "0%"
    return "<1%" if value < 0.005 else f"{int(value * 100 + 0.5):d}%"  # half up


def why_paid(
    *,
    name: str,
    traced: float,
    settled_share: float,
    amount: int | None,
    unattributed: float,
    fallback: bool,
    rule: str = "settle-1",
) -> str:
    """One plain sentence on why a contributor got what they got for one answer, under the answer's own settlement
    rule: "settle-1" paid the traced share plus a part of the untraced rest by how many training rows each person
    gave; later rules pay the traced share only (the untraced rest goes to the model's owner)."""
    paid = "is owed" if amount is None else ("was paid nothing" if amount == 0 else f"was paid {credits(amount)}")
    part = f"{percent(settled_share)} of what the answer paid its contributors"
    if rule != "settle-1":
        return _why_paid_traced_only(name=name, paid=paid, part=part, traced=traced, unattributed=unattributed,
                                     fallback=fallback)  # fmt: skip
    if fallback:
        return (
            f"{name} {paid} ({part}) for the training rows they gave: this answer could not be traced to single "
            "rows, so the contributors were paid by how many rows each gave."
        )
    untraced = f"the {percent(unattributed)} of the answer that could not be traced to anyone"
    if traced <= 0:
        return (
            f"{name} {paid} ({part}) although none of the answer was traced to their rows: {untraced} is shared "
            "by how many training rows each person gave."
        )
    if unattributed <= 0:
        return f"{name} {paid} ({part}) because {percent(traced)} of the answer was traced to their rows."
    return (
        f"{name} {paid} ({part}): {percent(traced)} of the answer was traced to their rows, and {untraced} is "
        "shared by how many training rows each person gave."
    )


def _why_paid_traced_only(*, name, paid, part, traced, unattributed, fallback) -> str:
    if fallback:
        return (
            f"{name} {paid}: this answer could not be traced to single rows, so the contributors' part went to the "
            "model's owner."
        )
    if traced <= 0:
        return f"{name} {paid}: none of the answer was traced to their rows."
    if unattributed <= 0:
        return f"{name} {paid} ({part}) because {percent(traced)} of the answer was traced to their rows."
    return (
        f"{name} {paid} ({part}) because {percent(traced)} of the answer was traced to their rows; the "
        f"{percent(unattributed)} that could not be traced to anyone went to the model's owner, not to rows."
    )


def answer_pieces(text: str, spans: list[dict]) -> list[dict]:
    """The answer as consecutive pieces {text, highlighted, record_ids}, for highlighting the verbatim spans."""
    marks: dict[int, set[int]] = defaultdict(set)
    for span in spans:
        start, end = span.get("char_start"), span.get("char_end")
        if start is None or end is None:
            continue
        for position in range(max(0, start), min(len(text), end)):
            marks[position].add(span["record_id"])
    pieces: list[dict] = []
    for position, char in enumerate(text):
        ids = sorted(marks.get(position, ()))
        if pieces and pieces[-1]["record_ids"] == ids:
            pieces[-1]["text"] += char
        else:
            pieces.append({"text": char, "highlighted": bool(ids), "record_ids": ids})
    return pieces


def attributions_visible(*, user) -> QuerySet[Attribution]:
    """The answers the user asked or that their models gave (staff: all), newest first."""
    rows = Attribution.objects.select_related("inference__model", "inference__caller")
    if not user.is_staff:
        rows = rows.filter(Q(inference__caller=user) | Q(inference__model__owner=user))
    return rows.order_by("-created_at", "-id")


def model_summary(*, model) -> dict:
    """Contributors' share over all of a model's attributed answers, and per day (for the chart)."""
    shares = AttributionShare.objects.filter(model=model)
    answers = Attribution.objects.filter(inference__model=model, status__in=Attribution.FINISHED).count()
    totals = list(
        shares.values("contributor__username")
        .annotate(share=Sum("share"), settled=Sum("settled_share"), amount=Sum("amount_micro"), answers=Count("id"))
        .order_by("-share", "contributor__username")
    )
    for row in totals:
        row["mean_share"] = row["share"] / answers if answers else 0.0
    per_day = (
        shares.annotate(day=TruncDate("created_at"))
        .values("day", "contributor__username")
        .annotate(share=Sum("share"))
        .order_by("day", "contributor__username")
    )
    days = sorted({str(row["day"]) for row in per_day})
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for row in per_day:
        series[row["contributor__username"]][str(row["day"])] = row["share"]
    return {
        "answers": answers,
        "contributors": totals,
        "chart": {
            "labels": days,
            "datasets": [
                {"label": name, "data": [values.get(day, 0.0) for day in days]} for name, values in series.items()
            ],
        },
    }


def model_quality(*, version) -> dict:
    """How well this model version's answers are traced (issue 15), for its page and its API detail, in one query:

    - `method_version`: the attribution method its index records (None: the version has no index);
    - `measurements`: what the benches recorded for that method in attribution/quality.json, best first per metric
      (attribution.quality; [] when it has not been measured yet);
    - `answers`: its completed answers (`total`), those traced by the engine (`traced`) and the mean share of them
      that was traced to training rows (`traced_share`, None before the first), those whose tracing failed and were
      paid by row shares (`fallback`), and those not traced yet (`pending`: waiting, retrying, or not picked up)."""
    from modelfactory.models import Inference, ModelVersion

    done, fallback = Attribution.Status.DONE, Attribution.Status.FALLBACK
    completed = Q(inferences__status=Inference.Status.COMPLETED)
    row = (
        ModelVersion.objects.filter(pk=version.pk)
        .annotate(
            method_version=F("job__attribution_index__method_version"),
            answers=Count("inferences", filter=completed),
            traced=Count("inferences", filter=completed & Q(inferences__attribution__status=done)),
            fallback=Count("inferences", filter=completed & Q(inferences__attribution__status=fallback)),
            mean_unattributed=Avg(
                "inferences__attribution__unattributed", filter=completed & Q(inferences__attribution__status=done)
            ),
        )
        .values("method_version", "answers", "traced", "fallback", "mean_unattributed")
        .get()
    )
    method = row["method_version"] or None
    measured = quality.quality_read().get(method, []) if method else []
    traced_share = None if row["mean_unattributed"] is None else 1.0 - row["mean_unattributed"]
    return {
        "method_version": method,
        "measurements": [asdict(m) for m in _best_first(measured)],
        "answers": {
            "total": row["answers"],
            "traced": row["traced"],
            "fallback": row["fallback"],
            "pending": row["answers"] - row["traced"] - row["fallback"],
            "traced_share": traced_share,
        },
    }


def _best_first(measurements: list) -> list:
    """Per metric (in the order attribution.quality.METRICS lists them), a real base model's measurement before the
    tiny test model's, the newest first: the first of each metric is the one a page states."""
    order = list(quality.METRICS)
    return sorted(measurements, key=lambda m: (order.index(m.metric), m.bench_model == quality.TINY, _neg_date(m.date)))


def _neg_date(date: str) -> int:
    return -int(date.replace("-", ""))


def contributor_summary(*, user) -> dict:
    """'Your data was used in N answers of M models', per model, and earnings from the ledger."""
    from datanets.models import Datanet
    from ledger.selectors import earnings

    # Every answer that traced to the user's rows or paid them (a share of the untraced part, by rows given, is
    # pay for their data too): the same answers whose shares the wallet shows as earnings.
    shares = AttributionShare.objects.filter(Q(share__gt=0) | Q(amount_micro__gt=0), contributor=user)
    per_model = list(
        shares.values("model__slug", "model__name")
        .annotate(answers=Count("id"), share=Sum("share"), amount=Sum("amount_micro"))
        .order_by("-answers", "model__slug")
    )
    return {
        "answers": shares.values("attribution").distinct().count(),
        "models": len(per_model),
        "per_model": per_model,
        "paid": AttributionShare.objects.filter(contributor=user).aggregate(t=Sum("amount_micro"))["t"] or 0,
        "earnings": earnings(user=user, days=365),
        "datanets": list(
            Datanet.objects.filter(Q(owner=user) | Q(curators=user) | Q(records__contributor=user))
            .distinct()
            .order_by("name")
            .values("slug", "name")
        ),
    }


def row_earnings(*, user, contribution_id: int | None = None, record_ids=()) -> dict:
    """What `user`'s rows earned them (services.row_earnings): {"rows": {record id: micro-units} for `record_ids`
    (0 for a row that earned nothing), "contribution": the total of the rows of `contribution_id`, "paid": all the
    user was paid for answers, "tied": the part of it tied to single rows, "untied": the rest}. paid = tied +
    untied, exactly. Three queries, however many rows and answers."""
    mine = AttributionRow.objects.filter(contributor=user)
    rows = dict.fromkeys(record_ids, 0)
    if rows:
        for record_id, amount in (
            mine.filter(record_id__in=rows)
            .values("record_id")
            .annotate(t=Sum("amount_micro"))
            .values_list("record_id", "t")
        ):
            rows[record_id] = amount or 0
    totals = mine.aggregate(
        tied=Sum("amount_micro"),
        contribution=Sum("amount_micro", filter=Q(record__contribution_id=contribution_id)),
    )
    paid = AttributionShare.objects.filter(contributor=user).aggregate(t=Sum("amount_micro"))["t"] or 0
    tied = totals["tied"] or 0
    return {
        "rows": rows,
        "contribution": totals["contribution"] or 0,
        "paid": paid,
        "tied": tied,
        "untied": paid - tied,
    }


def top_earning_rows(*, user, limit: int = 5) -> list[dict]:
    """The user's rows that earned them the most: [{record_id, contribution_id, datanet, text, amount, answers}]."""
    return list(
        AttributionRow.objects.filter(contributor=user, amount_micro__gt=0)
        .values("record_id")
        .annotate(amount=Sum("amount_micro"), answers=Count("attribution_id"))
        .values(
            "record_id",
            "amount",
            "answers",
            "record__contribution_id",
            "record__line",
            "record__text",
            "record__datanet__name",
        )  # fmt: skip
        .order_by("-amount", "record_id")[:limit]
    )


def datanet_summary(*, datanet, user) -> dict:
    """Answers and shares per contributor of this datanet's rows; data valuation (curators only)."""
    from datanets.selectors import datanet_can_curate

    user_ids = set(datanet.records.values_list("contributor_id", flat=True).distinct())
    job_ids = datanet.versions.values("finetune_jobs")
    shares = AttributionShare.objects.filter(
        contributor_id__in=user_ids, attribution__inference__model_version__job__in=job_ids
    )
    per_contributor = list(
        shares.values("contributor__username")
        .annotate(answers=Count("id"), share=Sum("share"), amount=Sum("amount_micro"))
        .order_by("-share", "contributor__username")
    )
    for row in per_contributor:
        row["mean_share"] = row["share"] / row["answers"] if row["answers"] else 0.0
    curator = datanet_can_curate(user=user, datanet=datanet)
    values = []
    if curator:
        values = list(
            ContributionValue.objects.filter(datanet=datanet)
            .select_related("contribution", "contributor", "index__job")
            .order_by("z", "id")
        )
        strongest = max((abs(v.value) for v in values), default=0.0)
        for v in values:  # relative to the strongest effect on this page, not a raw score
            v.relative = abs(v.value) / strongest if strongest else 0.0
    return {
        "per_contributor": per_contributor,
        "values": values,
        "harmful": [v for v in values if v.harmful],
        "curator": curator,
    }


def attribution_receipt(*, attribution: Attribution, user) -> dict:
    """What anyone holding the answer needs to re-check its attribution and payment: the model version and adapter
    hash, the method with its parameters and seeds (the noise floor included), the index (rows, seed, file digests),
    every contributor's share, the top rows with their scores, the spans, and the settlement with its ledger proof.
    Row text is not in a receipt (record ids only)."""
    from attribution.models import ModelIndex
    from ledger import selectors as ledger_selectors
    from ledger.models import Transaction

    inference = attribution.inference
    version = inference.model_version
    index = ModelIndex.objects.filter(job_id=version.job_id).first()
    detail = attribution_detail(attribution=attribution, user=user, top=len(attribution.top_rows) or 1)
    proof = None
    if attribution.settlement_tx_id is not None:
        try:
            proof = ledger_selectors.transaction_proof(user=user, tx_id=attribution.settlement_tx_id)
        except Transaction.DoesNotExist:
            proof = None  # a transaction the viewer took no part in (a caller who paid nothing): no proof for them
    return {
        "inference_id": inference.pk,
        "answered_at": inference.completed_at or inference.created_at,
        "model": inference.model.slug,
        "model_version": version.number,
        "adapter_sha256": version.artifact_hash,
        "base_model": version.job.base_model.slug,
        "answer_tokens": len(inference.output_token_ids or []),
        "status": attribution.status,
        "method_version": attribution.method_version,
        "params": attribution.params,
        "index": None
        if index is None
        else {
            "rows": index.rows,
            "seed": index.seed,
            "method_version": index.method_version,
            "files_sha256": (index.params or {}).get("files_sha256"),
        },
        "contributors": [
            {
                "username": c["username"],
                "share": c["share"],
                "settled_share": c["settled_share"],
                "amount": None if c["amount"] is None else format_credits(c["amount"]),
            }
            for c in detail["contributors"]
        ],
        "unattributed": attribution.unattributed,
        "span_coverage": attribution.span_coverage,
        "top_rows": [
            {"record_id": row["record_id"], "contributor": row["contributor"], "score": row["score"]}
            for row in detail["rows"]
        ],
        "spans": [{k: s[k] for k in ("start", "end", "record_id")} for s in attribution.spans],
        "settlement": {
            "rule": attribution.settlement_rule,
            "status": attribution.settlement_status,
            "transaction_id": attribution.settlement_tx_id,
            "proof": proof,
        },
        "verify_command": f"python manage.py attribution_verify {inference.pk}",
    }
