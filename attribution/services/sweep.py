"""Never lost: completed answers whose attribution or settlement a lost message or a dead worker left unfinished are
enqueued again (listed in settings.MF_SWEEPS as "attribution.services.attribution_sweep_pending")."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from attribution.models import Attribution
from attribution.services import answer
from modelfactory.models import Inference


def attribution_sweep_pending(*, older_than_minutes: int | None = None, limit: int = 500) -> list[int]:
    """Re-enqueues completed inferences older than N minutes whose attribution is missing, unfinished or not yet
    settled (a lost message, a dead worker). Returns the inference ids enqueued."""
    minutes = settings.MF_ATTRIBUTION_SWEEP_MINUTES if older_than_minutes is None else older_than_minutes
    cutoff = timezone.now() - timedelta(minutes=minutes)
    unfinished = (
        Q(attribution__isnull=True)
        | ~Q(attribution__status__in=Attribution.FINISHED)
        | Q(attribution__settlement_status=Attribution.Settlement.PENDING)
    )
    ids = list(
        Inference.objects.filter(status=Inference.Status.COMPLETED, completed_at__lt=cutoff)
        .filter(unfinished)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    for inference_id in ids:
        Attribution.objects.get_or_create(inference_id=inference_id)
        # answer._enqueue looked up at commit: the one way an answer's task is enqueued (tests replace it there)
        transaction.on_commit(lambda inference_id=inference_id: answer._enqueue(inference_id))
    return ids
