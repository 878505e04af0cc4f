import pytest
from django.db import OperationalError
from django.utils import timezone
from kombu import Connection

from config.celery import app
from core.models import WorkerHeartbeat
from tests.factories import UserFactory
from tests.faults.conftest import database_unreachable

pytestmark = pytest.mark.django_db

# A broker address with a user name, a password and a host in it, on a port where nothing listens: its exception text
# must reach staff only.
SECRET_BROKER = "redis://opsuser:hunter2@127.0.0.1:1/0"


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(username="operator", is_staff=True))
    return client


def _beat(hostname, queues, seconds_ago=0):
    now = timezone.now() - timezone.timedelta(seconds=seconds_ago)
    WorkerHeartbeat.objects.create(hostname=hostname, queues=queues, pid=1, started_at=now, last_seen=now)


def test_all_parts_up(staff_client):
    _beat("gpu@host", ["gpu"])
    _beat("main@host", ["default", "inference"])
    response = staff_client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failing"] == []
    assert body["checks"]["worker"]["queues"] == ["default", "gpu", "inference"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


def test_no_worker_is_named(staff_client):
    _beat("old@host", ["default", "gpu", "inference"], seconds_ago=3600)
    response = staff_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["worker"]
    assert body["checks"]["worker"]["detail"].startswith("no Celery worker has reported in the last 45 s")


def test_missing_queue_is_named(staff_client):
    _beat("main@host", ["default", "inference"])
    response = staff_client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["worker"]["detail"] == "no live worker listens on the queue(s): gpu"


def test_broker_down_is_named(staff_client, monkeypatch):
    _beat("all@host", ["default", "gpu", "inference"])
    monkeypatch.setattr(app, "connection_for_write", lambda: Connection("redis://127.0.0.1:1/0"))
    response = staff_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"]["detail"].startswith("broker unreachable:")


def test_database_down_is_named(staff_client, monkeypatch):
    from core import selectors

    class DeadConnection:
        vendor = "postgresql"

        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(selectors, "connection", DeadConnection())
    response = staff_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["database", "worker"]
    assert body["checks"]["database"]["detail"] == "database unreachable: OperationalError: connection refused"


def _broker_down_with_secrets(monkeypatch):
    _beat("all@host", ["default", "gpu", "inference"])
    monkeypatch.setattr(app, "connection_for_write", lambda: Connection(SECRET_BROKER))


@pytest.mark.parametrize("who", ["anonymous", "member"])
def test_anyone_but_staff_sees_only_which_parts_fail(client, monkeypatch, who):
    if who == "member":
        client.force_login(UserFactory(username="member"))
    _broker_down_with_secrets(monkeypatch)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "fail",
        "failing": ["broker"],
        "checks": {
            "database": {"ok": True, "detail": "the database answers"},
            "broker": {"ok": False, "detail": "the job queue cannot be reached"},
            "worker": {"ok": True, "detail": "workers are running"},
        },
    }
    text = response.content.decode()
    for secret in ["opsuser", "hunter2", "127.0.0.1", "all@host", "Error", "redis"]:
        assert secret not in text


def test_anyone_sees_failing_workers_without_their_names(client):
    _beat("main@secret-host", ["default", "inference"])
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["worker"]
    assert response.json()["checks"]["worker"] == {"ok": False, "detail": "some kinds of work have no worker running"}
    assert "secret-host" not in response.content.decode()


def test_anyone_gets_200_when_all_is_up(client):
    _beat("all@host", ["default", "gpu", "inference"])
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert "all@host" not in response.content.decode()


def test_staff_see_the_exception_text(staff_client, monkeypatch):
    _broker_down_with_secrets(monkeypatch)
    response = staff_client.get("/healthz")
    assert response.status_code == 503
    detail = response.json()["checks"]["broker"]["detail"]
    assert detail.startswith("broker unreachable:")
    assert "127.0.0.1" in detail  # kombu names the host it could not reach
    assert response.json()["checks"]["worker"]["workers"] == [
        {"hostname": "all@host", "queues": ["default", "gpu", "inference"]}
    ]


def test_a_signed_in_visitor_still_gets_an_answer_while_the_database_is_down(staff_client, tmp_path):
    """Telling staff from others reads the session's user from the database: while it is down, /healthz answers as
    for anyone (503 naming the database), not with an error page."""
    with database_unreachable(tmp_path):
        response = staff_client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["database", "worker"]
    assert response.json()["checks"]["database"] == {"ok": False, "detail": "the database cannot be reached"}


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
