from django.db import models


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
