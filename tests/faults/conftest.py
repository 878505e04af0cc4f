"""Fault tests: real Celery worker processes killed with SIGKILL, a broker that is down, a database that goes away.

The test process and the processes it starts share one database: on PostgreSQL the test database itself (these
tests are transactional, so every write is committed and visible to the workers); on SQLite a file copied from a
template migrated once per session (the suite's in-memory test database cannot be shared between processes).
Workers use the suite's broker (CELERY_BROKER_URL: Redis in CI, the embedded filesystem broker under MF_VAR_DIR
locally), whose queues are purged before a worker starts, and the test's MEDIA_ROOT. Nothing is mocked: a killed
worker is a process group that received SIGKILL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def needs_postgresql(why: str):
    return pytest.mark.skipif(
        not settings.IS_POSTGRES, reason=f"needs PostgreSQL (DATABASE_URL=postgres://…, as CI sets it): {why}"
    )


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str, every: float = 0.05):
    """Polls until predicate() is truthy and returns its value; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class SharedDb:
    url: str  # DATABASE_URL for the processes the test starts


@contextlib.contextmanager
def database_unreachable(tmp_path: Path):
    """Points this thread's default connection at a database that cannot be reached (SQLite: a file in a folder that
    does not exist; PostgreSQL: a port where nothing listens), then puts the real one back."""
    old = connections["default"]
    if connection.vendor == "sqlite":
        broken = {**old.settings_dict, "NAME": str(tmp_path / "missing" / "db.sqlite3")}
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            broken = {**old.settings_dict, "HOST": "127.0.0.1", "PORT": probe.getsockname()[1]}
    connections["default"] = old.__class__(broken, "default")
    try:
        yield
    finally:
        connections["default"].close()
        connections["default"] = old


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults-db") / "template.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=300,
        capture_output=True,
    )  # fmt: skip
    return path


@pytest.fixture
def shared_db(request, transactional_db, tmp_path, django_db_blocker) -> SharedDb:
    if settings.IS_POSTGRES:
        s = connection.settings_dict
        auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
        yield SharedDb(url=f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}")
        return
    path = tmp_path / "db.sqlite3"
    shutil.copy(request.getfixturevalue("_sqlite_template"), path)
    with django_db_blocker.unblock():
        old = connections["default"]
        new = old.__class__({**old.settings_dict, "NAME": str(path)}, "default")
        connections["default"] = new
        try:
            yield SharedDb(url=f"sqlite:///{path}")
        finally:
            new.close()
            connections["default"] = old


@pytest.fixture
def fault_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MF_TOKEN_COUNT_MODEL_DIR = tmp_path / "no-tokenizer"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_WORKER_STALE_SECONDS = 3  # the test process is the one that decides a worker is gone
    return settings


class Worker:
    """A `celery worker` process (solo pool: the task runs in the process that beats) in its own process group."""

    def __init__(self, *, queues: str, env: dict, log: Path):
        self.tag = uuid.uuid4().hex[:8]
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 (closed in stop/kill)
        self.proc = subprocess.Popen(
            [CELERY, "-A", "config", "worker", "--pool=solo", "-Q", queues, "-n", f"faults-{self.tag}@%h",
             "--without-gossip", "--without-mingle", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def hostname(self) -> str | None:
        from core.models import WorkerHeartbeat

        return (
            WorkerHeartbeat.objects.filter(hostname__startswith=f"faults-{self.tag}@")
            .values_list("hostname", flat=True)
            .first()
        )

    def wait_ready(self, timeout: float = 60) -> str:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the worker exited with {self.proc.returncode}:\n{self.output}")
            return self.hostname()

        return wait_for(ready, timeout=timeout, what=f"worker faults-{self.tag} to report its heartbeat")

    def kill(self) -> None:
        """SIGKILL to the whole process group: no shutdown handler, no cleanup, like a machine that lost power."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log_file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log_file.close()


@pytest.fixture
def start_worker(shared_db, fault_settings, tmp_path):
    """start_worker(queues, **env) -> a running Worker on the shared database (stopped at the end of the test)."""
    from config.celery import app

    app.control.purge()  # messages other tests left in the suite's broker are not ours to run
    workers: list[Worker] = []

    def _start(queues: str, **extra_env: str) -> Worker:
        env = {
            **os.environ,
            "DATABASE_URL": shared_db.url,
            "MEDIA_ROOT": str(fault_settings.MEDIA_ROOT),
            "MF_TOKEN_COUNT_MODEL_DIR": str(fault_settings.MF_TOKEN_COUNT_MODEL_DIR),
            "MF_WORKER_HEARTBEAT_SECONDS": "1",
            "MF_TRAINING_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        worker = Worker(queues=queues, env=env, log=tmp_path / f"worker-{len(workers) + 1}.log")
        workers.append(worker)
        return worker

    yield _start
    for worker in workers:
        worker.stop()


class TcpProxy:
    """A TCP proxy in a thread: `stop()` drops every open connection and refuses new ones (a database server that
    went away), `start()` listens again on the same port (the server is back)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
