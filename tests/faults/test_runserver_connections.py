"""`make run` on PostgreSQL keeps its database connections bounded. runserver answers each request in a new thread;
with persistent connections (CONN_MAX_AGE) every finished thread left its connection open, and about 100 requests
used up the server's connections. The development server started as scripts/run.sh starts it (`manage.py runserver`,
the same settings) gets a burst of concurrent requests; afterwards PostgreSQL counts no more connections to the
database than the pool's size (MF_DB_POOL_MAX_SIZE), and every request was answered."""

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from tests.faults.conftest import ROOT, needs_postgresql, wait_for

REQUESTS = 150
CONCURRENT = 30
POOL_SIZE = 4


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (a local URL)
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


APP_NAME = "mf-runserver-burst"  # libpq's PGAPPNAME: only the server under test's connections are counted


def _connections_to(database: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s", [database, APP_NAME]
        )
        return cursor.fetchone()[0]


def test_run_script_starts_runserver_with_these_settings():
    """The test below starts what scripts/run.sh starts: guard against the script moving to another server."""
    script = (ROOT / "scripts" / "run.sh").read_text()
    assert 'addr="${MF_RUN_ADDR:-127.0.0.1:8000}"\n"$VENV/bin/python" manage.py runserver "$addr" &' in script


@needs_postgresql("counts the server's connections in pg_stat_activity; SQLite has no connections to count")
def test_runserver_burst_keeps_connections_bounded(shared_db, fault_settings, tmp_path):
    database = settings.DATABASES["default"]["NAME"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": shared_db.url,
        "MEDIA_ROOT": str(fault_settings.MEDIA_ROOT),
        "MF_DB_POOL_MAX_SIZE": str(POOL_SIZE),
        "DJANGO_DEBUG": "true",
        "OMP_NUM_THREADS": "1",
        "PGAPPNAME": APP_NAME,  # other tests' workers may still hold connections to this database
    }
    log_path = tmp_path / "runserver.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/datanets/"

    def up():
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            return _status(url) == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="runserver to answer", every=0.25)
        before = _connections_to(database)
        with ThreadPoolExecutor(CONCURRENT) as pool:
            statuses = list(pool.map(_status, [url] * REQUESTS))
        after = _connections_to(database)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert statuses == [200] * REQUESTS, log_path.read_text()[-3000:]
    # Before the fix: one open connection per request thread, up to REQUESTS. After: at most the pool.
    assert before <= POOL_SIZE
    assert after <= POOL_SIZE, f"{after} connections open after {REQUESTS} requests"


def test_a_bad_pool_setting_stops_start_up_naming_it():
    env = {**os.environ, "MF_DB_POOL": "sometimes"}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "Environment variable MF_DB_POOL='sometimes' is not valid: expected auto, on or off." in done.stderr
