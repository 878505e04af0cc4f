"""End to end on a tiny model: an answer about a planted fact -> attribution -> settlement of its hold."""

import pytest
from django.urls import reverse

from attribution.models import Attribution, AttributionShare
from attribution.tasks import inference_attribute_task
from ledger.models import Account, Hold, Posting, Transaction
from tests.attribution_app.conftest import CREDIT, LONG_ANSWER, LONG_QUESTION

pytestmark = pytest.mark.django_db


def balance(user) -> int:
    return Account.objects.filter(owner=user).values_list("balance", flat=True).first() or 0


def platform_total() -> int:
    return sum(Account.objects.filter(role=Account.Role.PLATFORM).values_list("balance", flat=True))


def test_each_planted_fact_is_credited_to_its_contributor_and_the_fee_is_settled_exactly(
    planted, make_inference, cast, enqueued, client
):
    # Asked as the datanet asks it ("code of X?"), about every planted fact; for a tenth of the rows that exact row
    # was held out of training and only its twin ("what is the code of X?") was trained on.
    from attribution.models import ModelIndex
    from attribution.runtime import read_owners
    from datanets.models import Record

    trained = set(read_owners(ModelIndex.objects.get().owners_path))
    row_of = {record.content["instruction"]: record.pk for record in Record.objects.all()}
    results = []
    for person, user in planted.people.items():
        for question, _ in planted.rows[person]:
            if not question.startswith("code of "):
                continue
            inference = make_inference(planted, question, caller=cast.teammate)
            assert enqueued[-1] == inference.pk  # the completion hook enqueued it on commit
            assert Attribution.objects.get(inference=inference).status == "pending"
            inference_attribute_task.apply(args=[inference.pk])
            attribution = Attribution.objects.get(inference=inference)
            shares = {int(k): v for k, v in attribution.contributor_shares.items()}
            top = max(shares, key=shares.get, default=None)
            results.append((user.pk, top, shares.get(user.pk, 0.0), attribution, row_of[question] in trained))
    seen = [r for r in results if r[4]]
    top1 = sum(owner == top for owner, top, *_ in seen) / len(seen)
    print(
        f"planted facts asked: {len(results)}; exact row trained on: {len(seen)}, contributor top-1 {top1:.3f}, "
        f"owner share min {min(r[2] for r in seen):.3f}; exact row held out: {len(results) - len(seen)}, "
        f"top-1 {sum(o == t for o, t, *_ in results if not _[-1])}, unattributed "
        f"{sum(t is None for o, t, *_ in results if not _[-1])}"
    )
    assert len(results) == 18 and len(seen) >= 14
    assert top1 == 1.0
    assert min(share for _, _, share, _, _ in seen) >= 0.9
    # Where the model only saw the twin phrasing, the engine either names the right contributor or no one.
    assert all(top in (owner, None) for owner, top, *_ in results)

    # One of them, checked to the micro-unit.
    owner_id, _, _, attribution, _ = seen[0]
    inference = attribution.inference
    assert attribution.status == "done" and attribution.settlement_status == "settled"
    assert attribution.method_version == "poa-3" and attribution.settlement_rule == "settle-2"
    assert attribution.spans == []  # a 4-character code is shorter than a verbatim span
    assert attribution.top_rows[0]["contributor_id"] == owner_id
    tx = attribution.settlement_tx
    assert tx.idempotency_key == f"settle:inference:{inference.pk}"
    postings = dict(
        Posting.objects.filter(transaction=tx).values_list("account__owner_id", "amount").exclude(account__owner=None)
    )
    split = tx.metadata["settlement"]["split"]
    # Rule settle-2: the contributors are paid their attributed shares; the unattributed rest goes to the owner.
    assert split["platform"] == 100_000 and split["owner"] == 200_000 + split["unattributed"]
    assert split["unattributed"] == round(700_000 * attribution.unattributed)
    assert sum(split["contributors"].values()) + split["unattributed"] == 700_000
    assert sum(Posting.objects.filter(transaction=tx).values_list("amount", flat=True)) == 0
    assert postings[cast.owner.pk] == split["owner"]
    assert postings[cast.teammate.pk] == CREDIT  # the unused half of the 2-credit hold comes back
    assert tx.metadata["settlement"]["fallback_reason"] is None
    assert tx.metadata["model"] == planted.model_version.model.slug
    assert tx.metadata["inference_id"] == inference.pk
    assert tx.metadata["datanets"] == {str(u.pk): "Codes" for u in planted.people.values()}
    assert Hold.objects.get(key=inference.hold_key).status == "settled"
    shares = {s.contributor_id: s for s in AttributionShare.objects.filter(attribution=attribution)}
    assert {uid: s.amount_micro for uid, s in shares.items()} == {int(k): v for k, v in split["contributors"].items()}
    assert shares[owner_id].amount_micro == max(s.amount_micro for s in shares.values())

    n = len([r for r in results if r[3].settlement_status == "settled"])
    assert n == 18
    unattributed = sum(r[3].settlement_tx.metadata["settlement"]["split"]["unattributed"] for r in results)
    assert balance(cast.owner) == 200_000 * n + unattributed
    assert platform_total() == 100_000 * n
    assert sum(balance(u) for u in planted.people.values()) == 700_000 * n - unattributed
    assert balance(cast.teammate) == n * CREDIT

    # The caller sees the amounts through the API and on the page.
    client.force_login(cast.teammate)
    body = client.get(f"/api/v1/inferences/{inference.pk}/attribution/").json()
    assert body["inference_id"] == inference.pk and body["status"] == "done" and body["method_version"] == "poa-3"
    owner_name = next(u.username for u in planted.people.values() if u.pk == owner_id)
    assert body["contributors"][0]["username"] == owner_name
    paid = {c["username"]: c["amount"] for c in body["contributors"]}
    assert paid[owner_name] == f"{split['contributors'][str(owner_id)] / CREDIT:.6f}"
    assert (
        body["rows"][0]["contributor"] == owner_name
        and body["rows"][0]["record_id"] == attribution.top_rows[0]["record_id"]
    )
    page = client.get(reverse("attribution:inference", args=[inference.pk])).content.decode()
    assert owner_name in page and f"{split['contributors'][str(owner_id)] / CREDIT:.6f}" in page
    assert f"{split['owner'] / CREDIT:.6f}" in page and "0.100000" in page
    assert "that part of the contributors' pay goes to the model owner, not to rows no answer draws on." in page


def test_an_answer_copying_a_row_gets_spans_highlighted(planted, make_inference, cast, client, enqueued):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    alice = planted.people["alice"]
    assert attribution.status == "done"
    assert attribution.span_coverage == 1.0
    span = attribution.spans[0]
    assert (span["start"], span["end"]) == (0, len(inference.output_token_ids))
    assert (span["char_start"], span["char_end"]) == (0, len(LONG_ANSWER))
    from datanets.models import Record

    assert Record.objects.get(pk=span["record_id"]).contributor == alice
    assert max(attribution.contributor_shares, key=attribution.contributor_shares.get) == str(alice.pk)
    assert attribution.contributor_shares[str(alice.pk)] >= 0.99
    client.force_login(cast.teammate)
    body = client.get(f"/api/v1/inferences/{inference.pk}/attribution/").json()
    assert body["spans"][0] == {
        "start": 0,
        "end": len(inference.output_token_ids),
        "record_id": span["record_id"],
        "char_start": 0,
        "char_end": len(LONG_ANSWER),
    }
    page = client.get(reverse("attribution:inference", args=[inference.pk])).content.decode()
    assert f'<mark title="Found in row {span["record_id"]}">{LONG_ANSWER}</mark>' in page


def test_running_the_task_twice_computes_and_settles_once(planted, make_inference, cast, enqueued):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[inference.pk])
    first = Attribution.objects.get(inference=inference)
    inference_attribute_task.apply(args=[inference.pk])
    again = Attribution.objects.get(inference=inference)
    assert (again.attempts, again.finished_at, again.settlement_tx_id) == (1, first.finished_at, first.settlement_tx_id)
    assert Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT).count() == 1
    assert AttributionShare.objects.filter(attribution=again).count() == len(again.settlement_shares)
    assert balance(cast.owner) == 200_000
