"""One way to hand a job to Celery: `enqueue_or_fail`, and one way for a worker to take it: `claim_queued`.
`enqueue_or_fail` is called from `transaction.on_commit`, so a job row is never
enqueued before it exists; a broker that is down is logged and the caller's `fail` callback leaves the row in a
state a person can read (failed with a plain message, or pending for the sweeper), never "waiting" for a worker
that will never see it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


def enqueue_or_fail(
    task: str,
    *,
    args: list,
    kwargs: dict | None = None,
    what: str,
    fail: Callable[[Exception], object] | None = None,
) -> bool:
    """Sends the Celery task at dotted path `task` (looked up by name: task modules import the services that call
    this) with no publish retries; a broker that is down fails within about a second (the connection options in
    config/settings.py, MF_BROKER_FAIL_FAST). Returns True if it was sent; otherwise logs "could not enqueue
    <what>", calls `fail(exc)` if given (None: the row stays as it is and a sweep enqueues it later) and returns
    False. Job state lives in our own rows, so the task's Celery result is not kept: sending needs the broker only,
    not the result store as well (with Redis results, Celery subscribes to every task's result before sending)."""
    try:
        import_string(task).apply_async(args=args, kwargs=kwargs or {}, retry=False, ignore_result=True)
    except Exception as exc:
        logger.warning("could not enqueue %s: %s", what, exc)
        if fail is not None:
            fail(exc)
        return False
    return True


def claim_queued(model, pk: int, *, message: str) -> bool:
    """Marks a queued job row running (started and heartbeat now, one attempt more, `message`) by a conditional
    update, so a second delivery of the same task claims nothing. The model has `Status.QUEUED`/`RUNNING`,
    `started_at`, `heartbeat_at`, `attempts` and `message`. Returns whether this call claimed it."""
    now = timezone.now()
    return bool(
        model.objects.filter(pk=pk, status=model.Status.QUEUED).update(
            status=model.Status.RUNNING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1, message=message
        )
    )
