"""Real Celery round trips: a worker process, a broker, a result. Nothing eager."""

import json
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


BROKER_DOWN_SCRIPT = """
import json, time
import kombu
from celery.backends.redis import RedisBackend
from config.celery import app
from core.jobs import enqueue_or_fail

seen = {"broker_connect": [], "result_store_calls": 0, "failed_with": []}
ensure_connection = kombu.Connection._ensure_connection
def spy_connect(self, *args, **kwargs):
    seen["broker_connect"].append({"port": self.port, **kwargs})
    return ensure_connection(self, *args, **kwargs)
kombu.Connection._ensure_connection = spy_connect
on_task_call = RedisBackend.on_task_call
def spy_result_store(self, *args, **kwargs):
    seen["result_store_calls"] += 1
    return on_task_call(self, *args, **kwargs)
RedisBackend.on_task_call = spy_result_store

started = time.monotonic()
seen["sent"] = enqueue_or_fail(
    "core.tasks.health_ping_task", args=["x"], what="a ping", fail=lambda exc: seen["failed_with"].append(str(exc))
)
seen["seconds"] = round(time.monotonic() - started, 2)
seen["result_store_policy"] = app.backend.retry_policy
seen["result_store_connect_timeout"] = app.backend.connparams["socket_connect_timeout"]
print("RESULT " + json.dumps(seen))
"""


def test_broker_down_fails_fast_with_one_quick_reconnect(tmp_path):
    """A broker on a port where nothing listens (a real refused connection): enqueue_or_fail gives up after one
    immediate reconnection with a 1 s connect timeout (not kombu's default of retrying for 4 s, nor the Redis result
    store's 20 retries a second apart), never touches the result store, and calls the caller's fail callback."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_RESULT_BACKEND", "DATABASE_URL")}
    env.update(CELERY_BROKER_URL="redis://127.0.0.1:1/0", MF_VAR_DIR=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", BROKER_DOWN_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.split("RESULT ", 1)[1])
    print(f"enqueue with the broker down gave up after {seen['seconds']} s")  # measured, not asserted
    assert seen["sent"] is False
    assert seen["failed_with"] == ["Error 111 connecting to 127.0.0.1:1. Connection refused."]
    assert seen["broker_connect"] == [
        {
            "port": 1,
            "timeout": 1.0,
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        }
    ]
    assert seen["result_store_calls"] == 0
    assert seen["result_store_policy"] == {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    }
    assert seen["result_store_connect_timeout"] == 1.0


def test_workers_that_do_not_serve_answers_run_at_lower_priority(tmp_path):
    """MF_BACKGROUND_NICE: attribution, settlement, ingest and training yield the cores to the inference worker."""
    from config.celery import background_nice

    assert background_nice(["default"], 10) == 10
    assert background_nice(["gpu"], 7) == 7
    assert background_nice(["default", "inference"], 10) == 0
    env = {
        k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL")
    }
    env |= {"MF_VAR_DIR": str(tmp_path), "MF_BACKGROUND_NICE": "5"}
    base = os.getpriority(os.PRIO_PROCESS, 0)
    background, serving = _start_worker(env, queues="default"), _start_worker(env, queues="inference")
    try:
        for queue in ("default", "inference"):  # a round trip: both workers are set up
            subprocess.run(
                [sys.executable, "manage.py", "shell", "-c", "from core.tasks import health_ping_task as t; "
                 f"t.apply_async(args=['x'], queue='{queue}', routing_key='{queue}').get(timeout=60)"],
                cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        assert os.getpriority(os.PRIO_PROCESS, background.pid) == min(19, base + 5)
        assert os.getpriority(os.PRIO_PROCESS, serving.pid) == base
    finally:
        _stop(background)
        _stop(serving)


def test_the_embedded_broker_never_shows_a_consumer_half_a_message(tmp_path, monkeypatch):
    """kombu's own filesystem transport opens `<name>.msg` and then writes it: a worker that took the file in between
    read it empty and died (JSONDecodeError). Ours writes `.tmp` and renames it into place."""
    import kombu

    from core import broker

    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    seen_while_writing = []
    real_dumps = broker.dumps

    def dumps_and_look(payload):
        seen_while_writing.extend(os.listdir(tmp_path))  # the file being written exists now
        return real_dumps(payload)

    monkeypatch.setattr(broker, "dumps", dumps_and_look)
    with kombu.Connection("filesystem://", transport_options=options) as connection:
        assert isinstance(connection.transport, broker.Transport)
        channel = connection.channel()
        channel._put("inference", {"body": "hello"})
        assert [name.endswith(".inference.msg") for name in seen_while_writing] == [False]
        assert [name.endswith(".inference.msg") for name in os.listdir(tmp_path)] == [True]
        assert channel._get("inference") == {"body": "hello"}
