"""Worker liveness: a daemon thread in each Celery worker's main process upserts a WorkerHeartbeat row, and every
MF_WORKER_SWEEP_SECONDS runs the recovery sweeps listed in settings.MF_SWEEPS (core/sweeper.py: an upload whose
worker died is failed, a training job whose worker died is queued again or failed, an answer that never finished has
its fee reservation released, an answer whose settlement never finished is re-enqueued), so that work abandoned by a
killed worker is recovered even when nobody calls anything again. Sweeps are idempotent: several workers may run
them at once."""

from __future__ import annotations

import logging
import os
import threading
import time

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from django.utils.module_loading import import_string

from core.models import WorkerHeartbeat
from core.sweeper import run_sweeps

logger = logging.getLogger(__name__)
_stop = threading.Event()
_hardware_probes: dict[str, str] = {}


def register_hardware_probe(queue: str, path: str) -> None:
    """Called from an AppConfig.ready(): workers that consume `queue` call the function at `path` (no arguments,
    returns a JSON-able dict) once when they start, and keep the result on their heartbeat row (`hardware`)."""
    _hardware_probes[queue] = path


def hardware_report(queues: list[str]) -> dict:
    """What the registered probes say about this machine, for the first of `queues` that has one ({} if none)."""
    for queue in queues:
        if queue in _hardware_probes:
            try:
                return import_string(_hardware_probes[queue])()
            except Exception as exc:  # a broken driver must not stop the worker; the web then assumes its own
                logger.warning("hardware probe for %s failed (%s: %s)", queue, exc.__class__.__name__, exc)
    return {}


def heartbeat_beat(*, hostname: str, queues: list[str], started_at, hardware: dict | None = None) -> None:
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": queues,
            "pid": os.getpid(),
            "started_at": started_at,
            "last_seen": timezone.now(),
            "hardware": hardware or {},
        },
    )


def _loop(hostname: str, queues: list[str]) -> None:
    started_at = timezone.now()
    hardware = hardware_report(queues)
    last_sweep = time.monotonic()  # the first sweep waits one interval: a dead worker's beat must go stale first
    while not _stop.is_set():
        try:
            close_old_connections()
            heartbeat_beat(hostname=hostname, queues=queues, started_at=started_at, hardware=hardware)
            if time.monotonic() - last_sweep >= settings.MF_WORKER_SWEEP_SECONDS:
                last_sweep = time.monotonic()
                run_sweeps()
        except Exception as exc:  # the database may be restarting; keep beating
            logger.warning("worker heartbeat failed (%s: %s); retrying", exc.__class__.__name__, exc)
        finally:
            connection.close()
        _stop.wait(settings.MF_WORKER_HEARTBEAT_SECONDS)


@worker_ready.connect
def _start_heartbeat(sender=None, **kwargs) -> None:
    consumer = sender
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer is not None else []
    hostname = consumer.hostname if consumer is not None else "unknown"
    _stop.clear()
    threading.Thread(target=_loop, args=(hostname, queues), name="mf-heartbeat", daemon=True).start()
    logger.info("worker %s ready on queues %s", hostname, ", ".join(queues))


@worker_shutdown.connect
def _stop_heartbeat(sender=None, **kwargs) -> None:
    _stop.set()
    hostname = getattr(sender, "hostname", None)
    if hostname:
        try:
            WorkerHeartbeat.objects.filter(hostname=hostname).delete()
        except Exception as exc:
            logger.warning("could not remove heartbeat of %s (%s)", hostname, exc)
