"""Thin Celery tasks for the ledger."""

from celery import shared_task

from ledger.services import checkpoint_create


@shared_task(name="ledger.tasks.checkpoint_create_task", acks_late=True, time_limit=600)
def checkpoint_create_task() -> int | None:
    """Idempotent: a second run finds nothing new (or checkpoints what arrived since)."""
    checkpoint = checkpoint_create()
    return checkpoint.pk if checkpoint else None
