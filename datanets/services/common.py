"""What every datanet use case shares: the refusal errors, the curator check, and marking a datanet's rows changed."""

from __future__ import annotations

from django.utils import timezone

from datanets.models import Datanet
from datanets.selectors import datanet_can_curate


class DatanetError(Exception):
    """A refused request, with a plain-language message. `code` is stable for the API."""

    status = 400
    STATUS_BY_CODE = {
        "bond_unpaid": 402,
        "file_too_large": 413,
        "duplicate_file": 409,
        "slug_taken": 409,
        "idempotency_conflict": 409,
    }

    def __init__(self, message: str, *, code: str = "invalid"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = self.STATUS_BY_CODE.get(code, type(self).status)


class NotAllowed(DatanetError):
    status = 403

    def __init__(self, message: str):
        super().__init__(message, code="permission_denied")


def _rows_changed(datanet_id: int) -> None:
    """Marks the datanet's rows as changed (its `updated_at`), which is what keys the cached stats of its page
    (selectors.datanet_stats). Every service that makes rows live, or stops them being live, calls it."""
    Datanet.objects.filter(pk=datanet_id).update(updated_at=timezone.now())


def _require_curator(user, datanet: Datanet) -> None:
    if not datanet_can_curate(user=user, datanet=datanet):
        raise NotAllowed("Only the datanet's owner and curators can review contributions.")
