"""What each row earned (attribution.services.row_earnings): a contributor's pay for an answer divided over their
rows by how much each row shaped it; with the part not tied to a row, exactly what the ledger paid them."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from attribution.models import Attribution, AttributionRow, AttributionShare
from attribution.services import attribution_rows_for, attribution_verify, row_amounts
from attribution.tasks import inference_attribute_task
from datanets.models import Contribution, Record
from ledger.calc.money import format_credits, format_credits_short
from ledger.models import Transaction
from modelfactory.models import Inference
from tests.attribution_app.conftest import LONG_QUESTION
from tests.world import build_world


def test_row_amounts_divide_the_pay_by_part_to_the_micro_unit():
    # 100 micro-units, three rows of one third each: 34, 33, 33 (the largest remainder; ties by key).
    assert row_amounts(amount_micro=100, basis=0.9, parts=[(7, 0.3), (5, 0.3), (9, 0.3)]) == {5: 34, 7: 33, 9: 33}
    # Rows that hold half of the contributor's share get half of the pay; the rest is not tied to a row.
    assert row_amounts(amount_micro=1_001, basis=0.5, parts=[(1, 0.2), (2, 0.05)]) == {1: 400, 2: 100}
    # Float noise above the basis never pays the rows more than the contributor got.
    assert row_amounts(amount_micro=999, basis=0.3, parts=[(1, 0.1), (2, 0.2000000000000001)]) == {1: 333, 2: 666}
    assert row_amounts(amount_micro=0, basis=0.3, parts=[(1, 0.3)]) == {1: 0}
    assert row_amounts(amount_micro=50, basis=0, parts=[(1, 0.3)]) == {1: 0}
    assert row_amounts(amount_micro=50, basis=0.4, parts=[(1, 0.0)]) == {}


@pytest.mark.parametrize("amount", [1, 7, 1_000, 123_457, 10_000_001])
def test_row_amounts_never_exceed_the_pay_and_sum_exactly(amount):
    parts = [(i, 1 / (i + 2)) for i in range(40)]
    basis = sum(p for _, p in parts)
    got = row_amounts(amount_micro=amount, basis=basis, parts=parts)
    assert sum(got.values()) == amount  # every row kept: the whole pay is tied to rows
    half = row_amounts(amount_micro=2 * amount, basis=basis * 2, parts=parts)
    assert sum(half.values()) == amount  # rows holding half the share: half the pay


def test_settle_3_ties_the_retrieval_part_to_the_cited_rows():
    rows = attribution_rows_for(
        row_shares=[{"record_id": 1, "contributor_id": 10, "share": 0.5}],
        rule="settle-3",
        retrieval_part=Fraction(3, 10),
        citations=[
            {"record_id": 1, "contributor_id": 10, "score": 3.0},
            {"record_id": 2, "contributor_id": 20, "score": 1.0},
        ],
        settled={"10": "0.575", "20": "0.075"},
    )
    assert rows == [
        {"record_id": 1, "contributor_id": 10, "share": 0.5, "settled_share": pytest.approx(0.7 * 0.5 + 0.3 * 0.75)},
        {"record_id": 2, "contributor_id": 20, "share": 0.0, "settled_share": pytest.approx(0.3 * 0.25)},
    ]
    # A contributor the settlement pays nothing records no rows.
    assert attribution_rows_for(
        row_shares=[{"record_id": 1, "contributor_id": 10, "share": 0.5}],
        rule="settle-2", retrieval_part=Fraction(0), citations=[], settled={},
    ) == []  # fmt: skip


def _ledger_paid() -> dict[int, int]:
    """{user id: micro-units} the settlement transactions' splits paid the contributors."""
    paid: dict[int, int] = defaultdict(int)
    for metadata in Transaction.objects.filter(kind="settlement").values_list("metadata", flat=True):
        for uid, amount in (metadata.get("settlement") or {}).get("split", {}).get("contributors", {}).items():
            paid[int(uid)] += int(amount)
    return dict(paid)


def test_the_rows_earnings_add_up_to_what_the_ledger_paid(planted, make_inference, cast, enqueued, client):
    # Planted facts asked as the datanet asks them (gradient credit), and an answer copying a row (span credit).
    questions = [LONG_QUESTION] + [
        next(q for q, _ in planted.rows[person] if q.startswith("code of ")) for person in sorted(planted.people)
    ]
    for question in questions:
        inference = make_inference(planted, question, caller=cast.teammate)
        inference_attribute_task.apply(args=[inference.pk])

    assert Attribution.objects.filter(settlement_status="settled").count() == len(questions)
    rows = list(AttributionRow.objects.select_related("record"))
    assert rows and sum(r.amount_micro for r in rows) > 0
    # Per answer and contributor: the rows' amounts are the pay divided by part, exactly (recomputed here).
    by_pair: dict[tuple[int, int], list[AttributionRow]] = defaultdict(list)
    for row in rows:
        by_pair[(row.attribution_id, row.contributor_id)].append(row)
    for (attribution_id, user_id), pair in by_pair.items():
        attribution = Attribution.objects.get(pk=attribution_id)
        paid = AttributionShare.objects.get(attribution_id=attribution_id, contributor_id=user_id).amount_micro
        expected = row_amounts(
            amount_micro=paid,
            basis=attribution.settlement_shares[str(user_id)],
            parts=[(r.pk, r.settled_share) for r in pair],
        )
        assert {r.pk: r.amount_micro for r in pair} == expected
        assert sum(expected.values()) <= paid
        # settle-2 (no retrieval, the engine kept every credited row): the whole pay is tied to rows.
        assert attribution.settlement_rule == "settle-2"
        assert sum(expected.values()) == paid
        assert all(r.record.contributor_id == user_id for r in pair)

    # attribution_verify recomputes the rows' shares from the index and divides the pay again.
    for attribution in Attribution.objects.all():
        result = attribution_verify(inference_id=attribution.inference_id)
        checks = {check.name: check.ok for check in result.checks}
        assert result.ok and checks["row shares"] and checks["row amounts"], result.checks
    tampered = rows[0]
    AttributionRow.objects.filter(pk=tampered.pk).update(amount_micro=tampered.amount_micro + 1)
    result = attribution_verify(inference_id=Attribution.objects.get(pk=tampered.attribution_id).inference_id)
    assert [(c.name, c.detail) for c in result.checks if not c.ok] == [
        ("row amounts", f"differ for contributors {tampered.contributor_id}")
    ]
    AttributionRow.objects.filter(pk=tampered.pk).update(amount_micro=tampered.amount_micro)

    # Per contributor: rows + the part not tied to a row == the ledger's payouts, to the micro-unit.
    ledger_paid = _ledger_paid()
    from attribution.selectors import row_earnings

    assert set(ledger_paid) == {user.pk for user in planted.people.values()}
    for user in planted.people.values():
        contribution = Contribution.objects.get(contributor=user)
        record_ids = list(Record.objects.filter(contribution=contribution).values_list("pk", flat=True))
        got = row_earnings(user=user, contribution_id=contribution.pk, record_ids=record_ids)
        assert got["paid"] == ledger_paid.get(user.pk, 0)
        assert sum(got["rows"].values()) + got["untied"] == got["paid"]  # one upload each: all their rows
        assert got["contribution"] == sum(got["rows"].values())
        assert got["rows"] == {
            pk: sum(r.amount_micro for r in rows if r.record_id == pk and r.contributor_id == user.pk)
            for pk in record_ids
        }

    # The contributor sees each row's figure on the rows page and in the API; a curator sees the rows, not the pay.
    alice = Contribution.objects.get(contributor=planted.people["alice"])
    earned = dict.fromkeys(alice.records.values_list("pk", flat=True), 0)
    for row in rows:
        if row.record.contribution_id == alice.pk:
            earned[row.record_id] += row.amount_micro
    client.force_login(alice.contributor)
    api = client.get(f"/api/v1/contributions/{alice.pk}/rows/").json()
    assert {r["id"]: r["earned"] for r in api["results"]} == {
        pk: f"{micro // 1_000_000}.{micro % 1_000_000:06d}" for pk, micro in earned.items()
    }
    page = client.get(f"/datanets/contributions/{alice.pk}/rows/").content.decode()
    assert "What your rows earned." in page
    assert page.count('class="row-earned"') == len(earned)
    assert page.count("earned nothing yet") == sum(1 for micro in earned.values() if micro == 0)
    for micro in earned.values():
        if micro:
            short = format_credits_short(micro)
            assert f'earned you <span class="amount" title="{format_credits(micro)} credits">{short}</span>' in page
    client.force_login(alice.datanet.owner)  # the curator
    assert {r["earned"] for r in client.get(f"/api/v1/contributions/{alice.pk}/rows/").json()["results"]} == {None}
    assert "What your rows earned." not in client.get(f"/datanets/contributions/{alice.pk}/rows/").content.decode()


def _grow_earnings(world, cast, n: int, start: int = 0) -> None:
    """n more rows of the teammate's upload, each paid by two answers, 700 + i of the 1,000 + i tied to the row."""
    for i in range(start, start + n):
        record = Record.objects.create(
            datanet=world.datanet, contribution=world.contribution, contributor=cast.teammate, line=100 + i,
            content={"instruction": f"q{i}", "output": "a"}, text=f"qb-row-{i}", content_hash=f"{i + 1:064x}",
            status=Record.Status.ACCEPTED,
        )  # fmt: skip
        for _ in range(2):
            inference = Inference.objects.create(
                caller=cast.outsider, model=world.model, model_version=world.model.versions.get(),
                source=Inference.Source.API, status=Inference.Status.COMPLETED,
                messages=[{"role": "user", "content": "?"}], output="x", price_per_1k_tokens=0,
            )  # fmt: skip
            attribution = Attribution.objects.create(inference=inference, status="done", settlement_status="settled")
            AttributionShare.objects.create(
                attribution=attribution, contributor=cast.teammate, model=world.model, share=1.0, settled_share=1.0,
                amount_micro=1_000 + i, created_at=timezone.now(),
            )  # fmt: skip
            AttributionRow.objects.create(
                attribution=attribution, record=record, contributor=cast.teammate, share=0.5, settled_share=0.5,
                amount_micro=700 + i,
            )  # fmt: skip


@pytest.mark.django_db
def test_the_rows_page_and_api_read_the_earnings_in_a_fixed_number_of_queries(client, cast, tmp_path, monkeypatch):
    world = build_world(cast, tmp_path, monkeypatch)
    client.force_login(cast.teammate)
    paths = [
        f"/datanets/contributions/{world.contribution.pk}/rows/",
        f"/api/v1/contributions/{world.contribution.pk}/rows/",
    ]

    def count(path: str) -> int:
        client.get(path)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path)
        assert response.status_code == 200
        return len(captured)

    _grow_earnings(world, cast, 2)
    before = [count(path) for path in paths]
    _grow_earnings(world, cast, 6, start=2)
    assert [count(path) for path in paths] == before
    rows = client.get(paths[1]).json()["results"]
    earned = {r["content"]["instruction"]: r["earned"] for r in rows if r["content"]["instruction"].startswith("q")}
    assert earned["q0"] == "0.001400" and earned["q1"] == "0.001402"
    page = client.get(paths[0]).content.decode()
    # 8 rows, 2 answers each: paid 2 * (1,000 + i), tied to the row 2 * (700 + i); 8 * 2 * 300 are not tied.
    assert sum(2 * (1_000 + i) for i in range(8)) - sum(2 * (700 + i) for i in range(8)) == 4_800
    assert "credits are not tied to a single row" in page
    assert 'title="0.004800 credits">0.0048</span> credits are not tied' in page
    # The attribution overview lists the rows that earned the most: row q7 earned 2 * 707, then q6 2 * 706, ...
    overview = client.get("/attribution/")
    assert [(r["record__text"], r["amount"], r["answers"]) for r in overview.context["top_rows"]] == [
        (f"qb-row-{i}", 2 * (700 + i), 2) for i in (7, 6, 5, 4, 3)
    ]
    assert 'title="0.001414 credits">0.00141</span>' in overview.content.decode()
