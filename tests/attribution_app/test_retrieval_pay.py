"""Paid sources (rule settle-3): an answer given with retrieval pays the contributors of the rows it cited a part of
the contributors' pay, by citation weight, in the answer's one ledger transaction; the rest is settled as settle-2.
Nothing cited: exactly settle-2's amounts. Replays and concurrent settlements pay once; ledger_verify stays clean."""

import threading

import pytest
from django.db import connection

from attribution.models import Attribution, AttributionRow
from attribution.services import attribution_settlement_check, settlement
from attribution.tasks import inference_attribute_task
from datanets.models import Record
from ledger.calc.split import SplitPolicy, split_fee, to_fraction
from ledger.models import Transaction
from ledger.verification import ledger_verify
from modelfactory.models import Inference
from tests.attribution_app.conftest import LONG_QUESTION

pytestmark = pytest.mark.django_db


def _cite(inference, planted, cited: list[tuple[str, float]]) -> dict:
    """Stores on the inference the retrieval it would have had: a row of each named person, with these scores."""
    citations = []
    for index, (person, score) in enumerate(cited, start=1):
        record = Record.objects.filter(contributor=planted.people[person]).order_by("pk").first()
        citations.append({"index": index, "record_id": record.pk, "contributor_id": record.contributor_id,
                          "datanet_id": record.datanet_id, "score": score})  # fmt: skip
    retrieval = {"citations": citations, "prompt_messages": inference.messages}
    Inference.objects.filter(pk=inference.pk).update(retrieval=retrieval)
    return retrieval


def test_cited_rows_contributors_share_the_retrieval_part_by_citation_weight(planted, make_inference, cast, enqueued):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    _cite(inference, planted, [("bob", 3.0), ("carol", 1.0)])
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    bob, carol = planted.people["bob"].pk, planted.people["carol"].pk
    assert attribution.settlement_rule == "settle-3" and attribution.settlement_status == "settled"
    assert attribution.citation_weights == {str(bob): "0.750000000000", str(carol): "0.250000000000"}
    tx = attribution.settlement_tx
    assert tx.metadata["retrieval"] == {"part": "3/10", "weights": attribution.citation_weights}
    record = tx.metadata["settlement"]
    assert record["policy"] == settlement.SETTLE_3_POLICY.as_dict()
    assert record["unattributed"] == f"{0.7 * attribution.unattributed:.12f}"
    # The recorded shares: 70% of each attributed share, plus 30% times the citation weight.
    attributed = {int(k): v for k, v in attribution.contributor_shares.items()}
    expected = {uid: 0.7 * attributed.get(uid, 0.0) + 0.3 * w for uid, w in ((bob, 0.75), (carol, 0.25))}
    assert {int(k): round(float(v), 9) for k, v in record["shares"].items() if int(k) in (bob, carol)} == {
        uid: round(v, 9) for uid, v in expected.items()
    }
    # The ledger paid exactly the split of the recorded shares; bob and carol got at least their sources' part.
    split = split_fee(1_000_000, SplitPolicy(**record["policy"]),
                      {int(u): to_fraction(s) for u, s in record["shares"].items()},
                      to_fraction(record["unattributed"]))  # fmt: skip
    assert record["split"]["contributors"] == {str(u): a for u, a in split.contributors.items()}
    assert split.contributors[bob] >= 157_500 - 1 and split.contributors[carol] >= 52_500 - 1
    # What each row earned: all of bob's and carol's pay is tied to rows, their cited rows holding the sources' part.
    rows = AttributionRow.objects.filter(attribution=attribution)
    for person, uid, part in (("bob", bob, 157_500), ("carol", carol, 52_500)):
        mine = {r.record_id: r.amount_micro for r in rows if r.contributor_id == uid}
        assert sum(mine.values()) == split.contributors[uid]
        cited = Record.objects.filter(contributor=planted.people[person]).order_by("pk").first().pk
        assert mine[cited] >= part - 1
    assert attribution_settlement_check(attribution=attribution) == []
    ledger_verify()


def test_nothing_cited_pays_exactly_as_settle_2(planted, make_inference, cast, enqueued):
    with_retrieval = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    _cite(with_retrieval, planted, [])
    inference_attribute_task.apply(args=[with_retrieval.pk])
    plain = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[plain.pk])
    cited, uncited = (Attribution.objects.get(inference=i) for i in (with_retrieval, plain))
    assert (cited.settlement_rule, uncited.settlement_rule) == ("settle-3", "settle-2")
    assert cited.citation_weights == {} and cited.settlement_tx.metadata["retrieval"] == {"part": "0", "weights": {}}
    assert cited.settlement_shares == uncited.settlement_shares
    a, b = (x.settlement_tx.metadata["settlement"]["split"] for x in (cited, uncited))
    assert a == b  # no retrieval pay: the same amounts to everyone
    assert attribution_settlement_check(attribution=cited) == []


def test_a_replay_pays_once_and_the_page_and_receipt_show_both_parts(planted, make_inference, cast, enqueued, client):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    _cite(inference, planted, [("bob", 1.0)])
    inference_attribute_task.apply(args=[inference.pk])
    before = Transaction.objects.count()
    inference_attribute_task.apply(args=[inference.pk])
    settlement.attribution_settle(attribution_id=Attribution.objects.get(inference=inference).pk)
    assert Transaction.objects.count() == before
    attribution = Attribution.objects.get(inference=inference)
    client.force_login(cast.teammate)
    page = client.get(f"/attribution/inferences/{inference.pk}/").content.decode()
    assert (
        'id="retrieval-part"' in page
        and "30% of the contributors' pay went to the people whose rows" in page
        and "(bob)" in page
    )
    assert (
        "bob was paid 0.21 credits: none of the answer was traced to their rows. Their rows were cited as sources "
        "of the answer: they had 100% of the sources&#x27; part (0.21 credits of it)." in page
    )
    receipt = client.get(f"/wallet/receipts/{attribution.settlement_tx_id}/")
    if receipt.status_code == 404:  # the receipt belongs to the people it pays; the owner is always one
        client.force_login(cast.owner)
        receipt = client.get(f"/wallet/receipts/{attribution.settlement_tx_id}/")
    body = receipt.content.decode()
    assert (
        'id="receipt-retrieval"' in body
        and "For rows cited as the answer's sources (1 person, 30% of this part): "
        '<span class="amount" title="0.210000 credits">0.21</span> credits'
        in body
    )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent settlement needs PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_settlements_of_a_cited_answer_pay_once(planted, make_inference, cast, enqueued, monkeypatch):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    _cite(inference, planted, [("bob", 2.0), ("alice", 1.0)])
    with monkeypatch.context() as m:
        m.setattr("attribution.services.answer.attribution_settle", lambda *, attribution_id: None)
        inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.settlement_status == "pending"
    barrier, errors = threading.Barrier(4), []

    def settle():
        try:
            barrier.wait()
            settlement.attribution_settle(attribution_id=attribution.pk)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=settle) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Transaction.objects.filter(idempotency_key=f"settle:inference:{inference.pk}").count() == 1
    attribution.refresh_from_db()
    assert attribution.settlement_status == "settled" and attribution_settlement_check(attribution=attribution) == []
    ledger_verify()
