import pytest
from django.db import OperationalError
from django.utils import timezone
from kombu import Connection

from config.celery import app
from core.models import WorkerHeartbeat

pytestmark = pytest.mark.django_db


def _beat(hostname, queues, seconds_ago=0):
    now = timezone.now() - timezone.timedelta(seconds=seconds_ago)
    WorkerHeartbeat.objects.create(hostname=hostname, queues=queues, pid=1, started_at=now, last_seen=now)


def test_all_parts_up(client):
    _beat("gpu@host", ["gpu"])
    _beat("main@host", ["default", "inference"])
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failing"] == []
    assert body["checks"]["worker"]["queues"] == ["default", "gpu", "inference"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


def test_no_worker_is_named(client):
    _beat("old@host", ["default", "gpu", "inference"], seconds_ago=3600)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["worker"]
    assert body["checks"]["worker"]["detail"].startswith("no Celery worker has reported in the last 45 s")


def test_missing_queue_is_named(client):
    _beat("main@host", ["default", "inference"])
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["worker"]["detail"] == "no live worker listens on the queue(s): gpu"


def test_broker_down_is_named(client, monkeypatch):
    _beat("all@host", ["default", "gpu", "inference"])
    monkeypatch.setattr(app, "connection_for_write", lambda: Connection("redis://127.0.0.1:1/0"))
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"]["detail"].startswith("broker unreachable:")


def test_database_down_is_named(client, monkeypatch):
    from core import selectors

    class DeadConnection:
        vendor = "postgresql"

        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(selectors, "connection", DeadConnection())
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["database", "worker"]
    assert body["checks"]["database"]["detail"] == "database unreachable: OperationalError: connection refused"


def test_a_training_worker_reports_its_hardware_on_its_heartbeat(monkeypatch):
    from core import heartbeat
    from modelfactory.training.devices import capabilities_report

    now = timezone.now()
    heartbeat.heartbeat_beat(
        hostname="gpu@host", queues=["gpu"], started_at=now, hardware=heartbeat.hardware_report(["gpu"])
    )
    assert WorkerHeartbeat.objects.get(hostname="gpu@host").hardware == capabilities_report()
    assert heartbeat.hardware_report(["default", "inference"]) == {}  # no probe for those queues
    monkeypatch.setitem(heartbeat._hardware_probes, "broken", "no_such_module.probe")
    assert heartbeat.hardware_report(["broken"]) == {}  # a failing probe never stops the worker
