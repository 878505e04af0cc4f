"""What each training row earned: a contributor's pay for one answer divided over their rows.

Fees are settled per contributor (one ledger transaction per answer, split by contributor share). The engine also
says how much of the answer each row shaped (AttributionResult.row_shares, rule step 5), so the pay can be traced
to rows: contributor c's amount for an answer is divided over c's rows in proportion to each row's part of c's
settled share (AttributionRow.settled_share over Attribution.settlement_shares[c]), in whole micro-units, the
largest remainders first. What no single row accounts for stays "not tied to a single row":

- under settle-1, the part paid by row count (the unattributed share spread over the contributors' rows);
- a fallback (the engine failed): nothing is tied to a row;
- credit spread over more rows than the engine keeps (ROW_SHARES_KEPT, the largest first);
- answers settled before rows were recorded.

So for every contributor, the sum over their rows plus the part not tied to a row equals what the ledger paid them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from fractions import Fraction

from django.db import connection

from attribution.models import Attribution, AttributionRow
from datanets.models import Record


def row_amounts(*, amount_micro: int, basis: float | str, parts: Iterable[tuple[Hashable, float]]) -> dict:
    """{key: micro-units} for one contributor's `amount_micro` for one answer, divided over `parts` (key, part of
    the contributor's settled share) against `basis` (that whole share). The rows together get the amount times
    their parts' sum over the basis, rounded to the micro-unit and never more than the amount; that total is split
    by part, largest remainders first (ties by key). Exact: the values sum to that total."""
    parts = [(key, Fraction(str(part))) for key, part in parts if part > 0]
    basis = Fraction(str(basis))
    if amount_micro <= 0 or basis <= 0 or not parts:
        return {key: 0 for key, _ in parts}
    weight = sum(part for _, part in parts)
    tied = min(amount_micro, round(amount_micro * min(weight, basis) / basis))
    exact = [(key, tied * part / weight) for key, part in parts]
    amounts = {key: int(value) for key, value in exact}  # floor: the values are non-negative
    left = tied - sum(amounts.values())
    for key, _ in sorted(exact, key=lambda kv: (-(kv[1] - int(kv[1])), kv[0]))[:left]:
        amounts[key] += 1
    return amounts


def attribution_rows_for(
    *, row_shares: list[dict], rule: str, retrieval_part: Fraction, citations: list[dict], settled: dict
) -> list[dict]:
    """The rows of one answer to record ({record_id, contributor_id, share, settled_share}): the engine's row
    shares (`row_shares`: [{record_id, contributor_id, share}]) under the settlement rule, plus, under settle-3,
    each cited row's part of the retrieval part. Rows of contributors the settlement pays nothing are left out.
    A fallback passes no row shares (and so, without citations, records no rows)."""
    rows: dict[int, dict] = {}
    scale = float(1 - retrieval_part) if rule == "settle-3" else 1.0
    for row in row_shares:
        rows[row["record_id"]] = {
            "record_id": row["record_id"],
            "contributor_id": row["contributor_id"],
            "share": float(row["share"]),
            "settled_share": scale * float(row["share"]),
        }
    if rule == "settle-3" and retrieval_part > 0 and citations:
        scores = [max(0.0, float(c.get("score") or 0.0)) for c in citations]
        total = sum(scores)
        for citation, score in zip(citations, scores, strict=True):
            weight = score / total if total > 0 else 1 / len(citations)
            row = rows.setdefault(
                int(citation["record_id"]),
                {
                    "record_id": int(citation["record_id"]),
                    "contributor_id": int(citation["contributor_id"]),
                    "share": 0.0,
                    "settled_share": 0.0,
                },
            )
            if row["contributor_id"] == int(citation["contributor_id"]):
                row["settled_share"] += float(retrieval_part) * weight
    return [row for row in rows.values() if str(row["contributor_id"]) in settled and row["settled_share"] > 0]


def original_rows(*, rows: list[dict]) -> list[dict]:
    """Credit of a row that copies another contributor's row (Record.copy_of) belongs to the original's contributor
    (the index's owners say so): such a row is recorded as the row it copies when that row is the contributor's,
    so that the pay shows on the original. One query."""
    copies = {row["record_id"] for row in rows}
    parents = {
        pk: (parent, owner)
        for pk, parent, owner in Record.objects.filter(pk__in=copies, copy_of__isnull=False).values_list(
            "pk", "copy_of_id", "copy_of__contributor_id"
        )
    }
    merged: dict[int, dict] = {}
    for row in rows:
        parent = parents.get(row["record_id"])
        if parent is not None and parent[1] == row["contributor_id"]:
            row = {**row, "record_id": parent[0]}
        if row["record_id"] in merged:
            merged[row["record_id"]]["share"] += row["share"]
            merged[row["record_id"]]["settled_share"] += row["settled_share"]
        else:
            merged[row["record_id"]] = dict(row)
    return list(merged.values())


def row_amounts_write(*, paid: dict[int, dict[str, int]]) -> None:
    """Writes each settled answer's row amounts from `paid` {attribution id: {str(user id): micro-units}}, the
    ledger's split, against the answer's settlement_shares. Inside the settlement's database transaction; one
    query when no row was recorded, three (two on SQLite) otherwise."""
    rows = list(
        AttributionRow.objects.filter(attribution_id__in=paid).values_list(
            "pk", "attribution_id", "contributor_id", "settled_share"
        )
    )
    if not rows:
        return
    bases = dict(Attribution.objects.filter(pk__in={row[1] for row in rows}).values_list("pk", "settlement_shares"))
    groups: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for pk, attribution_id, user_id, settled_share in rows:
        groups.setdefault((attribution_id, user_id), []).append((pk, settled_share))
    amounts: list[tuple[int, int]] = []
    for (attribution_id, user_id), parts in groups.items():
        basis = bases.get(attribution_id, {}).get(str(user_id), "0")
        amount = int(paid[attribution_id].get(str(user_id), 0))
        amounts.extend(row_amounts(amount_micro=amount, basis=basis, parts=parts).items())
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE attribution_attributionrow r SET amount_micro = v.amount "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, amount) WHERE r.id = v.id",
                [[pk for pk, _ in amounts], [amount for _, amount in amounts]],
            )
    else:
        AttributionRow.objects.bulk_update(
            [AttributionRow(pk=pk, amount_micro=amount) for pk, amount in amounts], ["amount_micro"], batch_size=500
        )
