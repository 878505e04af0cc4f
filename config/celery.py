"""The Celery application. Queues: `default` (ingest, attribution, settlement), `gpu` (training, one task at a
time per worker process), `inference` (the warm serving worker). Job state lives in our own tables."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import celeryd_after_setup
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# filesystem:// (the embedded broker) writes each message whole (core/broker.py), in every process that sends.
TRANSPORT_ALIASES["filesystem"] = "core.broker:Transport"

QUEUES = ("default", "gpu", "inference")

app = Celery("modelfactory")
app.config_from_object("django.conf:settings", namespace="CELERY")
_exchange = Exchange("modelfactory", type="direct")
app.conf.update(
    task_queues=[Queue(name, _exchange, routing_key=name) for name in QUEUES],
    task_default_queue="default",
    task_default_exchange="modelfactory",
    task_default_routing_key="default",
    task_routes={
        "modelfactory.tasks.finetune_*": {"queue": "gpu", "routing_key": "gpu"},
        "modelfactory.tasks.export_*": {"queue": "gpu", "routing_key": "gpu"},
        "modelfactory.tasks.evaluation_*": {
            "queue": "gpu",
            "routing_key": "gpu",
        },  # as the job's own evaluation  # loads and merges a whole model
        "attribution.tasks.*": {"queue": "default", "routing_key": "default"},  # before "*.inference_*": CPU work
        "*.inference_*": {"queue": "inference", "routing_key": "inference"},
    },
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    task_time_limit=6 * 3600,
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=200,
    broker_connection_retry_on_startup=True,
    result_expires=24 * 3600,
    worker_hijack_root_logger=False,
)
app.autodiscover_tasks()


def background_nice(queues: list[str], nice: int) -> int:
    """How much a worker consuming `queues` lowers its CPU priority: `nice` for one that does not serve answers (the
    default queue's ingest, attribution and settlement, the gpu queue's training and exports), 0 for an inference
    worker. On shared cores, answers then get the CPU first and the rest runs in what is left."""
    return 0 if "inference" in queues else nice


@celeryd_after_setup.connect
def _lower_background_priority(sender=None, instance=None, **kwargs) -> None:
    """Before the pool starts, so that prefork children inherit it (MF_BACKGROUND_NICE)."""
    from django.conf import settings

    queues = [queue.name for queue in instance.app.amqp.queues.consume_from.values()]
    step = background_nice(queues, settings.MF_BACKGROUND_NICE)
    if step:
        os.nice(step)
