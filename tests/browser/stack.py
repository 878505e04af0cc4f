"""A whole ModelFactory as `make run` starts it, for end-to-end browser tests: its own fresh database (a SQLite
file, or a new PostgreSQL database on the server DATABASE_URL names), migrated; the web server
(`manage.py runserver`); and real Celery worker processes on the broker the environment names (kombu's filesystem
transport in the stack's own folder by default, the Redis of CELERY_BROKER_URL in CI). Nothing runs in the test's
process, nothing is eager: the browser talks to a real server whose work is done by real workers.

Workers are started one queue at a time with `start_worker`, so a test can first see a job waiting in its queue."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
# How each queue's worker runs in scripts/run.sh (`make run`), with fewer processes for 2 cores.
WORKER_ARGS = {
    "default": ["-Q", "default", "-c", "1"],
    "gpu": ["-Q", "gpu", "-c", "1", "--prefetch-multiplier=1"],
    "inference": ["-Q", "inference", "-P", "threads", "-c", "4"],
}


class StackError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, folder: Path):
        self.folder = folder
        self.var = folder / "var"
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self._log_files = []
        self.pg_database: str | None = None
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MF_", "DJANGO_", "MEDIA_ROOT", "PYTEST"))}
        env.update(
            {
                "MF_VAR_DIR": str(self.var),
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                # Worker heartbeats every second: the pages see a started worker at once.
                "MF_WORKER_HEARTBEAT_SECONDS": "1",
                "MF_LOG_LEVEL": "WARNING",
            }
        )
        url = os.environ.get("DATABASE_URL", "")
        if url.startswith(("postgres://", "postgresql://", "pgsql://")):
            parts = urlsplit(url)
            self.pg_database = f"{parts.path.lstrip('/') or 'postgres'}_e2e"
            self._pg_admin_url = urlunsplit(parts._replace(path="/postgres"))
            env["DATABASE_URL"] = urlunsplit(parts._replace(path="/" + self.pg_database))
        else:
            env.pop("DATABASE_URL", None)  # the default: a SQLite file under MF_VAR_DIR
        if not env.get("CELERY_BROKER_URL", "").startswith(("redis://", "rediss://")):
            # The embedded broker, in the stack's own folder (never the developer's var/).
            env.pop("CELERY_BROKER_URL", None)
            env.pop("CELERY_RESULT_BACKEND", None)
        if not env.get("CACHE_URL", "").startswith(("redis://", "rediss://")):
            env.pop("CACHE_URL", None)  # file cache under MF_VAR_DIR, shared by the web server and the workers
        return env

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.pg_database:
            self._pg(
                f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)', f'CREATE DATABASE "{self.pg_database}"'
            )
        self.manage("migrate", "--noinput", "-v", "0")
        if self.env.get("CELERY_BROKER_URL", "").startswith(("redis://", "rediss://")):
            # Messages other runs left on the shared broker must not reach this stack's fresh ids.
            self.run(CELERY, "-A", "config", "purge", "-f", "-Q", ",".join(WORKER_ARGS))
        self._spawn("web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"])
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.processes["web"].poll() is not None or time.monotonic() > deadline:
                raise StackError("the web server did not start:\n" + self.log("web"))
            time.sleep(0.3)

    def start_worker(self, queue: str) -> None:
        name = f"{queue}-{uuid.uuid4().hex[:6]}@e2e"
        args = [CELERY, "-A", "config", "worker", *WORKER_ARGS[queue], "-n", name]
        if queue == "gpu":  # as scripts/run.sh starts the training worker
            args = [str(ROOT / "scripts" / "with-jemalloc.sh"), *args]
        self._spawn(queue, [*args, "--without-gossip", "--without-mingle", "--loglevel=WARNING"])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for f in self._log_files:
            f.close()
        if self.pg_database:
            self._pg(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')

    # --- helpers --------------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed in stop)
        self._log_files.append(log)
        self.processes[name] = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.stem} ---\n{self.log(p.stem)}" for p in sorted(self.logs.glob("*.log")))

    def run(self, *args: str, timeout: int = 300) -> str:
        done = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise StackError(f"{' '.join(args[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return done.stdout

    def manage(self, *args: str, timeout: int = 300) -> str:
        return self.run(sys.executable, "manage.py", *args, timeout=timeout)

    def python(self, code: str, timeout: int = 120) -> str:
        """Runs Django code against the stack's database (to read exact figures for assertions)."""
        return self.run(sys.executable, "-c", "import django; django.setup()\n" + code, timeout=timeout)

    def _pg(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self._pg_admin_url, autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)
