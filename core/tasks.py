import os
import socket

from celery import shared_task

from core.sweeper import run_sweeps


@shared_task(name="core.tasks.health_ping_task", time_limit=30)
def health_ping_task(token: str) -> dict:
    """Proves the web -> broker -> worker -> result round trip; echoes the token with who answered."""
    return {"token": token, "hostname": socket.gethostname(), "pid": os.getpid()}


@shared_task(name="core.tasks.sweep_task", queue="default", time_limit=600)
def sweep_task() -> dict:
    """Every recovery sweep once (settings.MF_SWEEPS), for a deployment that prefers celery beat to the workers'
    own timer: `CELERY_BEAT_SCHEDULE = {"sweep": {"task": "core.tasks.sweep_task", "schedule": 60}}`."""
    return {result.path: result.error or result.finished for result in run_sweeps()}
