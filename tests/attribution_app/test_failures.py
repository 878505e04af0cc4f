"""Failures: retries then the fallback (under rule settle-2 to the owner; under the older settle-1 by row share), the sweep, nothing to settle, refused settlements, routing."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import TestCase
from django.utils import timezone

from attribution import engine, services
from attribution.models import Attribution, AttributionShare
from attribution.tasks import inference_attribute_task
from ledger.models import Account, Hold, Transaction
from modelfactory.models import Inference
from tests.attribution_app.conftest import CREDIT, LONG_QUESTION

pytestmark = pytest.mark.django_db


def balance(user) -> int:
    return Account.objects.filter(owner=user).values_list("balance", flat=True).first() or 0


def test_engine_failures_are_retried_then_settled_by_row_share_under_the_older_rule(
    planted, make_inference, cast, monkeypatch, settings
):
    monkeypatch.setattr(services.answer, "SETTLEMENT_RULE", "settle-1")  # an answer attributed before settle-2
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("index file unreadable")

    monkeypatch.setattr(engine, "attribute", boom)
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    result = inference_attribute_task.apply(args=[inference.pk])
    assert result.successful() and result.get() == "fallback"
    retries = inference_attribute_task.max_retries
    assert retries == settings.MF_ATTRIBUTION_MAX_RETRIES == 3
    assert len(calls) == retries + 1
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.status == "fallback" and attribution.attempts == retries + 1
    assert attribution.error == "RuntimeError: index file unreadable"
    assert attribution.contributor_shares == {} and attribution.settlement_status == "settled"
    assert attribution.unattributed == 1.0 and attribution.settlement_rule == "settle-1"
    assert attribution.settlement_tx.metadata["settlement"]["policy"]["version"] == "default-2025-1"

    # Row share of the training data: alice gave 17 rows, bob and carol 16 each (49 in all).
    alice, bob, carol = (planted.people[n] for n in ("alice", "bob", "carol"))
    tx = attribution.settlement_tx
    reason = tx.metadata["settlement"]["fallback_reason"]
    assert reason == (
        "Attribution failed after 4 attempts (RuntimeError: index file unreadable); the contributors' part is "
        "split by row share of the training data."
    )
    assert tx.metadata["attribution"]["status"] == "fallback"
    # 700,000 by 17/16/16: 242,857.14 / 228,571.43 / 228,571.43 -> largest remainder gives the leftover micro-unit
    # to bob (ties go to the lower user id).
    assert tx.metadata["settlement"]["split"]["contributors"] == {
        str(alice.pk): 242_857,
        str(bob.pk): 228_572,
        str(carol.pk): 228_571,
    }
    assert (balance(alice), balance(bob), balance(carol), balance(cast.owner)) == (242_857, 228_572, 228_571, 200_000)
    shares = {s.contributor_id: (s.share, round(s.settled_share, 6)) for s in AttributionShare.objects.all()}
    assert shares == {
        alice.pk: (0.0, round(17 / 49, 6)),
        bob.pk: (0.0, round(16 / 49, 6)),
        carol.pk: (0.0, round(16 / 49, 6)),
    }
    assert services.attribution_settlement_check(attribution=attribution) == []

    # The same failure under the current rule: no row can be shown to have shaped the answer, so no row is paid;
    # the contributors' part goes to the model owner. The older settlement still checks out under its own rule.
    monkeypatch.setattr(services.answer, "SETTLEMENT_RULE", "settle-2")
    second = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    assert inference_attribute_task.apply(args=[second.pk]).get() == "fallback"
    newer = Attribution.objects.get(inference=second)
    assert (newer.settlement_rule, newer.settlement_shares, newer.settlement_status) == ("settle-2", {}, "settled")
    record = newer.settlement_tx.metadata["settlement"]
    assert record["fallback_reason"] == (
        "Attribution failed after 4 attempts (RuntimeError: index file unreadable); the contributors' part goes to "
        "the model owner, as no row can be shown to have shaped the answer."
    )
    assert record["split"] == {"owner": 900_000, "contributors": {}, "platform": 100_000, "unattributed": 700_000}
    assert (balance(alice), balance(bob), balance(carol), balance(cast.owner)) == (242_857, 228_572, 228_571, 1_100_000)
    assert not AttributionShare.objects.filter(attribution=newer).exists()
    assert services.attribution_settlement_check(attribution=newer) == []
    assert services.attribution_settlement_check(attribution=attribution) == []

    # Checked under a rule it was not settled under, each is found out.
    attribution.settlement_rule = "settle-2"
    assert services.attribution_settlement_check(attribution=attribution) == [
        "The stored shares are not what rule settle-2 gives.",
        "The ledger's unattributed part is not rule settle-2's.",
        "The ledger's split policy is not rule settle-2's.",
    ]
    newer.settlement_rule = "settle-1"
    assert services.attribution_settlement_check(attribution=newer) == [
        "The stored shares are not what rule settle-1 gives.",
        "The ledger's unattributed part is not rule settle-1's.",
    ]
    newer.settlement_rule = "settle-9"
    assert services.attribution_settlement_check(attribution=newer) == ["Unknown settlement rule 'settle-9'."]


def test_a_transient_failure_is_retried_and_then_attributed(planted, make_inference, cast, monkeypatch):
    real = engine.attribute
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk busy")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "attribute", flaky)
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    assert inference_attribute_task.apply(args=[inference.pk]).get() == "done"
    attribution = Attribution.objects.get(inference=inference)
    assert (attribution.status, attribution.attempts, attribution.error) == ("done", 2, "")
    assert attribution.settlement_tx.metadata["settlement"]["fallback_reason"] is None


def test_the_sweep_reenqueues_only_old_unfinished_answers(planted, make_inference, cast, enqueued, capsys):
    old_pending = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    old_done = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[old_done.pk])
    recent = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    lost = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    Attribution.objects.filter(inference=lost).delete()  # as if the completing transaction's enqueue was lost
    long_ago = timezone.now() - timedelta(minutes=30)
    Inference.objects.exclude(pk=recent.pk).update(completed_at=long_ago)
    enqueued.clear()

    with TestCase.captureOnCommitCallbacks(execute=True):
        assert services.attribution_sweep_pending(older_than_minutes=15) == [old_pending.pk, lost.pk]
    assert enqueued == [old_pending.pk, lost.pk]
    assert Attribution.objects.get(inference=lost).status == "pending"

    enqueued.clear()
    with TestCase.captureOnCommitCallbacks(execute=True):
        call_command("attribution_sweep", "--older-than", "15")
    assert (
        capsys.readouterr().out.strip() == f"Re-enqueued 2 answer(s) for attribution. Ids: {[old_pending.pk, lost.pk]}"
    )
    for inference_id in enqueued:
        inference_attribute_task.apply(args=[inference_id])
    assert services.attribution_sweep_pending(older_than_minutes=15) == []


def test_no_hold_means_nothing_to_settle(planted, make_inference, cast):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate, hold=False)
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert (attribution.status, attribution.settlement_status, attribution.settlement_tx) == ("done", "skipped", None)
    assert attribution.settlement_note == "No fee was reserved for this answer, so there is nothing to settle."
    assert not Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT).exists()
    assert AttributionShare.objects.filter(attribution=attribution, amount_micro__gt=0).count() == 0


def test_a_zero_fee_releases_the_hold(planted, make_inference, cast):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate, fee=0)
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.settlement_status == "skipped"
    assert attribution.settlement_note == "The fee was zero; the reserved credit went back to the caller."
    assert Hold.objects.get(key=inference.hold_key).status == "released"
    assert balance(cast.teammate) == 2 * CREDIT


def test_a_refused_settlement_is_recorded_and_not_retried(planted, make_inference, cast):
    from ledger.services import hold_release

    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    hold_release(hold_key=inference.hold_key)  # someone closed the hold first
    inference_attribute_task.apply(args=[inference.pk])
    attribution = Attribution.objects.get(inference=inference)
    assert (attribution.status, attribution.settlement_status) == ("done", "failed")
    assert attribution.settlement_note == (
        f"The ledger refused the settlement: The hold '{inference.hold_key}' is already released."
    )
    assert not Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT).exists()
    assert balance(cast.owner) == 0


def test_an_unfinished_inference_is_not_attributed(planted, make_inference, cast):
    inference = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    Inference.objects.filter(pk=inference.pk).update(status=Inference.Status.FAILED)
    assert inference_attribute_task.apply(args=[inference.pk]).get() is None
    assert Attribution.objects.get(inference=inference).status == "pending"


def test_the_task_goes_to_the_default_queue():
    from config.celery import app

    route = app.amqp.router.route({}, "attribution.tasks.inference_attribute_task")
    assert route["queue"].name == "default"
