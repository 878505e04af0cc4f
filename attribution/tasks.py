"""Thin Celery tasks on the `default` queue (routed in config/celery.py)."""

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from attribution import services


@shared_task(
    bind=True,
    name="attribution.tasks.inference_attribute_task",
    queue="default",
    acks_late=True,  # idempotent: a stored attribution is not recomputed, the settlement key is per inference
    reject_on_worker_lost=True,
    autoretry_for=(services.AttributionRetry, DatabaseError),
    max_retries=settings.MF_ATTRIBUTION_MAX_RETRIES,
    retry_backoff=5,
    retry_backoff_max=settings.MF_ATTRIBUTION_RETRY_BACKOFF_MAX,
    retry_jitter=True,
)
def inference_attribute_task(self, inference_id: int) -> str | None:
    """Attributes one answer and settles its fee; the last retry settles by row share instead (never lost)."""
    attribution = services.attribution_run(
        inference_id=inference_id, final_attempt=self.request.retries >= (self.max_retries or 0)
    )
    return attribution.status if attribution is not None else None
