"""An answer that never finishes (its worker and web process both died) has its fee reservation released by the
workers' recovery sweep on its own schedule, with nobody calling anything again: no new inference, no page read."""

from datetime import timedelta
from threading import Thread

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from core import heartbeat
from core.sweeper import run_sweeps
from ledger.models import Hold
from modelfactory import services
from modelfactory.models import Inference
from tests.faults.conftest import wait_for
from tests.inference.conftest import CREDIT, balance

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_sweep_is_registered_in_one_place():
    assert set(django_settings.MF_SWEEPS.values()) == {
        "datanets.services.contribution_fail_stale",
        "modelfactory.services.finetune_reap_stale",
        "modelfactory.services.inference_reap_stale",
        "attribution.services.attribution_sweep_pending",
        "attribution.services.bonds_settle_decided",
        "ledger.services.earnings_release_due",
        "modelfactory.services.export_reap_stale",
        "modelfactory.services.evaluation_reap_stale",
    }


def _abandoned_answer(cast, monkeypatch):
    """An inference whose hold was taken and whose answer never came (nothing dispatched it), older than any answer
    could still take."""
    monkeypatch.setattr("modelfactory.services.inference_requests._dispatch", lambda inference_id: None)
    inference = services.inference_start(user=cast.outsider, slug="zorb-expert", source="api", prompt="Hi",
                                         max_new_tokens=4)  # fmt: skip
    assert Hold.objects.get().status == Hold.Status.HELD and balance(cast.outsider) < CREDIT
    limit = django_settings.MF_INFERENCE_TIMEOUT_SECONDS + django_settings.MF_STREAM_ACK_SECONDS + 60
    Inference.objects.filter(pk=inference.pk).update(created_at=timezone.now() - timedelta(seconds=limit + 1))
    return inference


def test_run_sweeps_releases_an_abandoned_answers_hold(cast, served, monkeypatch):
    inference = _abandoned_answer(cast, monkeypatch)
    results = {result.path: result for result in run_sweeps()}
    assert results["modelfactory.services.inference_reap_stale"].finished == [inference.pk]
    assert all(not result.error for result in results.values())
    assert Inference.objects.get().status == Inference.Status.FAILED
    assert Hold.objects.get().status == Hold.Status.RELEASED and balance(cast.outsider) == CREDIT


def test_a_workers_timer_releases_the_hold_with_nobody_calling_anything(cast, served, settings, monkeypatch):
    settings.MF_WORKER_SWEEP_SECONDS = 1
    settings.MF_WORKER_HEARTBEAT_SECONDS = 1
    inference = _abandoned_answer(cast, monkeypatch)
    # The loop a Celery worker starts on worker_ready (core.heartbeat), here in a thread of the test process.
    heartbeat._stop.clear()
    beat = Thread(target=heartbeat._loop, args=("sweeper-test@host", ["default"]), daemon=True)
    beat.start()
    try:
        wait_for(
            lambda: Hold.objects.filter(status=Hold.Status.RELEASED).exists(),
            timeout=60,
            what="the worker's sweep to release the abandoned answer's hold",
            every=0.2,
        )
    finally:
        heartbeat._stop.set()
        beat.join(timeout=30)
    inference.refresh_from_db()
    assert inference.status == Inference.Status.FAILED
    assert inference.error == "No answer came in time; the reservation was released."
    assert balance(cast.outsider) == CREDIT
