"""Failures: retries then the row-share fallback, the sweep, nothing to settle, refused settlements, routing."""

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


def test_engine_failures_are_retried_then_settled_by_row_share(planted, make_inference, cast, monkeypatch, settings):
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
