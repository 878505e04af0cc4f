"""A tiny base model with one trained adapter, published; generation runs in a thread of the test process
(MF_INFERENCE_INLINE) through the same service functions the inference worker's task calls."""

from __future__ import annotations

import pytest
from django.utils import timezone

from ledger.services import credit_grant
from modelfactory.models import FineTuneJob, ModelVersion, TrainedModel
from modelfactory.services import base_model_register
from tests.serving.conftest import save_random_adapter
from tests.tiny import build_tiny_model_dir

PRICE = 2_000  # micro-credits per 1,000 tokens (0.002 credits)
CREDIT = 5_000_000


@pytest.fixture(autouse=True)
def _clear_streams():
    from django.core.cache import caches

    caches["streams"].clear()
    yield
    caches["streams"].clear()


@pytest.fixture(autouse=True)
def _serving_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_INFERENCE_INLINE = True
    settings.MF_INFERENCE_START_TIMEOUT_SECONDS = 20
    settings.MF_INFERENCE_TIMEOUT_SECONDS = 60
    settings.MF_STREAM_ACK_SECONDS = 10


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    base = build_tiny_model_dir(root / "base")
    adapter = save_random_adapter(base, root / "adapter", rank=4, targets=["q_proj", "v_proj"], seed=7)
    return base, adapter


def make_model(*, owner, tiny_dirs, slug="zorb-expert", price=PRICE, publish=True) -> TrainedModel:
    base_dir, adapter_dir = tiny_dirs
    base = base_model_register(path=base_dir, name="Tiny base", slug="tiny-base")
    job = FineTuneJob.objects.create(
        owner=owner, name=slug, base_model=base, preset="quick", idempotency_key=slug,
        status=FineTuneJob.Status.SUCCEEDED,
    )  # fmt: skip
    model = TrainedModel.objects.create(
        owner=owner, slug=slug, name=slug.replace("-", " ").title(), base_model=base, price_per_1k_tokens=price,
        status=TrainedModel.Status.PUBLISHED if publish else TrainedModel.Status.DRAFT,
        visibility=TrainedModel.Visibility.PUBLIC if publish else TrainedModel.Visibility.PRIVATE,
        published_at=timezone.now() if publish else None,
    )  # fmt: skip
    ModelVersion.objects.create(
        model=model, number=1, job=job, adapter_path=str(adapter_dir), zip_path="", artifact_hash="0" * 64,
        model_card="A test model.", metrics={},
    )  # fmt: skip
    return model


@pytest.fixture
def served(cast, tiny_dirs):
    """A published public model of the owner's; the outsider has credit to call it."""
    model = make_model(owner=cast.owner, tiny_dirs=tiny_dirs)
    credit_grant(user_id=cast.outsider.pk, amount_micro=CREDIT, granted_by=cast.staff, key="grant-outsider")
    return model


def balance(user) -> int:
    from ledger.selectors import wallet_summary

    return wallet_summary(user=user)["available"]
