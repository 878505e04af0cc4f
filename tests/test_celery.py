"""Real Celery round trips: a worker process, a broker, a result. Nothing eager."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from core.tasks import health_ping_task

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


def _start_worker(env, queues="default,gpu,inference"):
    return subprocess.Popen(
        [
            CELERY,
            "-A",
            "modelfactory",  # the form of earlier READMEs: it must keep finding the app (config is the documented one)
            "worker",
            "--pool=solo",
            "-Q",
            queues,
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(worker):
    worker.terminate()
    try:
        return worker.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.communicate()[0]


@pytest.mark.redis
@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("redis"), reason="CELERY_BROKER_URL is not a redis:// URL (CI sets it)"
)
def test_round_trip_through_redis_on_every_queue():
    worker = _start_worker(dict(os.environ))
    try:
        for queue in ("default", "gpu", "inference"):
            token = uuid.uuid4().hex
            result = health_ping_task.apply_async(args=[token], queue=queue, routing_key=queue)
            answer = result.get(timeout=60)
            assert answer["token"] == token
            assert answer["pid"] == worker.pid
    finally:
        output = _stop(worker)
    assert "Unrecoverable error" not in output, output


def test_round_trip_through_the_embedded_filesystem_broker(tmp_path):
    """The default `make run` set-up: no broker server at all."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL")
    }
    env["MF_VAR_DIR"] = str(tmp_path)
    worker = _start_worker(env)
    token = uuid.uuid4().hex
    try:
        producer = subprocess.run(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                "from core.tasks import health_ping_task as t; "
                f"print(t.apply_async(args=['{token}'], queue='gpu', routing_key='gpu').get(timeout=60)['token'])",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        _stop(worker)
    assert producer.returncode == 0, producer.stderr
    assert producer.stdout.strip().splitlines()[-1] == token
    assert (tmp_path / "celery" / "broker").is_dir()
