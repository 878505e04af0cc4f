from datetime import timedelta

from django.db import models
from django.utils import timezone


class WorkerHeartbeat(models.Model):
    """One row per live Celery worker, refreshed every few seconds by a thread in the worker's main process.

    /healthz and the job watchdogs read it; a row older than MF_WORKER_STALE_SECONDS means that worker is gone."""

    hostname = models.CharField(max_length=255, unique=True)
    queues = models.JSONField(default=list)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    # What the worker's machine can do, read once when it starts (core.heartbeat.register_hardware_probe): the web
    # process decides with it what the training hardware offers (GPUs, bf16, 4-bit) instead of looking at its own.
    hardware = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} ({', '.join(self.queues)})"


class Job(models.Model):
    """The columns every long-running job row shares (as Saleor's core.models.Job): its own `status` with its own
    choices stays on the concrete model; progress events, if any, go to an append-only table of their own.

    A worker sets `started_at` when it claims the job, refreshes `heartbeat_at` while it works, and sets
    `finished_at` and a plain-words `message` when it ends; the sweeps (core/sweeper.py) find the ones whose
    heartbeat went silent."""

    message = models.TextField(blank=True, help_text="What happened, in plain words (why it failed, if it did).")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def silent_for(self, seconds: float, *, now=None) -> bool:
        """True when the worker has not reported (heartbeat, or start) for more than `seconds`: a page may say so;
        only the sweeper acts on it."""
        last = self.heartbeat_at or self.started_at
        return last is not None and last < (now or timezone.now()) - timedelta(seconds=seconds)
