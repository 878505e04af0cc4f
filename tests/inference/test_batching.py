"""Requests for different adapters of one base model, arriving together, share the worker process's single warm
model, adapter cache and batcher: they are admitted as one batch (one prefill, shared decode steps)."""

import pytest

from ledger.services import credit_grant
from modelfactory import services, serving_runtime
from modelfactory.models import Inference
from modelfactory.services import inference_requests
from tests.inference.conftest import make_model
from tests.serving.conftest import save_random_adapter
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_adapters_in_one_batch(cast, settings, monkeypatch, tmp_path):
    base = build_tiny_model_dir(tmp_path / "base")  # a base of its own: a fresh warm model and batcher
    first = save_random_adapter(base, tmp_path / "a1", rank=4, targets=["q_proj", "v_proj"], seed=1)
    second = save_random_adapter(base, tmp_path / "a2", rank=8, targets=["q_proj", "v_proj"], seed=2)
    make_model(owner=cast.owner, tiny_dirs=(base, first), slug="first-model")
    make_model(owner=cast.owner, tiny_dirs=(base, second), slug="second-model")
    credit_grant(user_id=cast.outsider.pk, amount_micro=5_000_000, granted_by=cast.staff, key="grant")
    monkeypatch.setattr(serving_runtime, "_batchers", {})
    settings.MF_BATCH_WINDOW_MS = 1000
    settings.MF_INFERENCE_TIMEOUT_SECONDS = 15  # both requests arrive well within the window

    dispatch, queued = inference_requests._dispatch, []
    monkeypatch.setattr(inference_requests, "_dispatch", queued.append)
    started = [
        services.inference_start(
            user=cast.outsider, slug=slug, source="api", prompt="Hello", max_new_tokens=4, temperature=0.0
        )
        for slug in ("first-model", "second-model")
    ]
    for inference_id in queued:  # both arrive at the worker together
        dispatch(inference_id)
    done = [services.inference_wait(inference=inference) for inference in started]
    assert [d.status for d in done] == [Inference.Status.COMPLETED] * 2
    (batcher,) = serving_runtime._batchers.values()
    try:
        assert batcher.batches == 1  # one group admitted together: one prefill for both adapters
        assert batcher.engine.prefills == 1
        assert sorted(batcher.engine.adapters.keys()) == sorted([str(first.resolve()), str(second.resolve())])
    finally:
        batcher.close()
