"""The broker down when a user launches a job or uploads a file: the web process's Celery app is pointed at a Redis
URL on a port where nothing listens (a real connection refused, nothing mocked). The launch and the upload answer at
once with a plain message and the object failed (never "queued" forever with no message on any queue), /healthz
names the broker, and nothing is lost: the stored file is checked in full by "Try again" once the broker is back,
and a new launch is queued."""

import contextlib
import json
import os
import socket

from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from config.celery import app
from datanets import services as datanet_services
from datanets.models import Contribution, Datanet, Record
from modelfactory.models import FineTuneJob
from modelfactory.services import base_model_register
from tests.factories import UserFactory
from tests.faults.conftest import wait_for
from tests.tiny import build_tiny_model_dir


@contextlib.contextmanager
def broker_down():
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    saved = app.conf.broker_url, app.conf.broker_transport_options

    def reset_pools():  # the app caches its connection and producer pools for the URL it first used
        app._pool = None
        app.amqp._producer_pool = None

    dead = f"redis://127.0.0.1:{port}/7"
    saved_env = os.environ.get("CELERY_BROKER_URL")  # Celery reads this variable before its settings
    reset_pools()
    os.environ["CELERY_BROKER_URL"] = dead
    app.conf.broker_url, app.conf.broker_transport_options = dead, {}
    try:
        yield
    finally:
        reset_pools()
        app.conf.broker_url, app.conf.broker_transport_options = saved
        if saved_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = saved_env


def _rows(n: int, start: int = 0) -> bytes:
    return "\n".join(
        json.dumps({"instruction": f"What is the code of door {i}?", "output": f"Door {i} opens with {i * 7}."})
        for i in range(start, start + n)
    ).encode()


def test_broker_down_refuses_launches_and_uploads_plainly_and_loses_nothing(start_worker, client, tmp_path):
    owner = UserFactory(username="owner")
    datanet = datanet_services.datanet_create(
        owner=owner, name="Doors", kind="instruction", summary="Door codes.", policy=Datanet.Policy.OPEN
    )
    first = datanet_services.contribution_create(
        datanet=datanet, contributor=owner, upload=SimpleUploadedFile("a.jsonl", _rows(20)), enqueue=False
    )
    datanet_services.contribution_ingest(contribution_id=first.pk)
    version = datanet_services.version_publish(datanet=datanet, actor=owner)
    base_model_register(path=build_tiny_model_dir(tmp_path / "tiny"), name="Tiny", slug="tiny", make_default=True)
    api = APIClient()
    api.force_authenticate(owner)
    launch = {"base_model": "tiny", "datanet_versions": [version.pk], "preset": "quick"}

    client.force_login(UserFactory(username="operator", is_staff=True))  # only staff see the exception text
    with broker_down():
        health = client.get("/healthz")
        assert health.status_code == 503
        assert "broker" in health.json()["failing"]
        assert health.json()["checks"]["broker"]["detail"].startswith("broker unreachable:")

        response = api.post("/api/v1/finetunes/", launch, HTTP_IDEMPOTENCY_KEY="first")
        assert response.status_code == 201, response.content
        job = response.json()
        assert job["status"] == "failed"
        assert job["message"] == (
            "The job queue could not be reached, so training did not start. Nothing was lost: "
            "launch again in a minute, or ask an operator to check the broker (see /healthz)."
        )

        response = api.post(
            f"/api/v1/datanets/{datanet.slug}/contributions/",
            {"file": SimpleUploadedFile("b.jsonl", _rows(30, start=100))},
            format="multipart",
        )
        assert response.status_code == 201, response.content
        upload = response.json()
        assert upload["status"] == "failed"
        assert upload["message"] == (
            "The job queue could not be reached, so checking this file did not start. Your file was kept: "
            "press “Try again” in a minute, or ask an operator to check the broker (see /healthz)."
        )
        stored = Contribution.objects.get(pk=upload["id"])
        assert stored.file.storage.exists(stored.file.name)
        assert not Record.objects.filter(contribution=stored).exists()

    # The broker is back: "Try again" checks the kept file in full, and a new launch is queued.
    worker = start_worker("default")
    worker.wait_ready()
    client.force_login(owner)
    assert client.post(f"/datanets/contributions/{stored.pk}/retry/").status_code == 302
    done = wait_for(
        lambda: Contribution.objects.filter(pk=stored.pk, status=Contribution.Status.ACCEPTED).first(),
        timeout=60,
        what="the retried upload to be checked",
        every=0.25,
    )
    assert done.rows_accepted == 30
    assert Record.objects.filter(contribution=stored, status=Record.Status.ACCEPTED).count() == 30

    response = api.post("/api/v1/finetunes/", launch, HTTP_IDEMPOTENCY_KEY="second")
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "queued"
    assert response.json()["message"] == "Waiting for a free training worker."
    assert FineTuneJob.objects.filter(owner=owner).count() == 2
