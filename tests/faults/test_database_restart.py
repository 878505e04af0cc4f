"""The database restarted under load: the app runs in gunicorn (one process, 4 threads, persistent connections with
CONN_MAX_AGE=60 and CONN_HEALTH_CHECKS) and reaches PostgreSQL through a TCP proxy that this test controls. The
shared PostgreSQL server cannot be restarted here (other test runs use it), so a restart is simulated at the network:
`TcpProxy.stop()` drops every open connection (as a restarting server does) and refuses new ones; `start()` accepts
again on the same port. Concurrent requests during the outage fail cleanly: 503 in the API's error shape, a plain
page, /healthz naming the database, never a traceback; once it is back they succeed again without the app being
restarted (the same gunicorn process)."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from accounts.services import api_token_create
from datanets import services as datanet_services
from datanets.models import Datanet
from tests.factories import UserFactory
from tests.faults.conftest import ROOT, TcpProxy, database_unreachable, needs_postgresql, wait_for

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CONCURRENT = 8


def _get(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (a local URL)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (a local URL)
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


@pytest.fixture
def app_through_proxy(shared_db, fault_settings, tmp_path):
    s = connection.settings_dict
    proxy = TcpProxy((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432)))
    proxy.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{s['USER']}@127.0.0.1:{proxy.port}/{s['NAME']}",
        "MEDIA_ROOT": str(fault_settings.MEDIA_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [GUNICORN, "config.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread",
         "--threads", "4", "--timeout", "120"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up():
        assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
        try:
            return _get(f"{base}/healthz")[0] in (200, 503)
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="gunicorn to answer", every=0.25)
        yield base, proxy, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        proxy.stop()


@needs_postgresql("a database server behind a TCP proxy that can be cut off; SQLite is a file, covered below")
def test_requests_fail_cleanly_while_the_database_is_down_and_recover_without_a_restart(app_through_proxy):
    base, proxy, server = app_through_proxy
    owner = UserFactory(username="owner")
    datanet_services.datanet_create(
        owner=owner, name="Open garden", kind="instruction", summary="Rows.", visibility=Datanet.Visibility.PUBLIC
    )
    _, key = api_token_create(user=owner, name="load")
    token = {"Authorization": f"Token {key}"}
    requests = [(f"{base}/api/v1/datanets/", token), (f"{base}/datanets/", {})] * (CONCURRENT // 2)

    def burst():
        with ThreadPoolExecutor(CONCURRENT) as pool:
            return list(pool.map(lambda args: _get(*args), requests))

    for status, _, body in burst():  # warm: every thread now holds a persistent connection through the proxy
        assert status == 200, body[:500]

    proxy.stop()  # the database restarts: connections dropped, new ones refused
    try:
        answers = burst()
        health_status, _, health_body = _get(f"{base}/healthz")
    finally:
        proxy.start()

    for (url, _), (status, content_type, body) in zip(requests, answers, strict=True):
        assert status == 503, (url, body[:500])
        assert "Traceback" not in body
        if "/api/" in url:
            assert content_type == "application/json"
            assert json.loads(body) == {
                "error": {
                    "code": "database_unavailable",
                    "message": "The database cannot be reached right now; please try again in a minute.",
                    "details": {},
                }
            }
        else:
            assert content_type.startswith("text/html")
            assert "<h1>Temporarily unavailable</h1>" in body
            assert "The database cannot be reached right now; please try again in a minute." in body
    assert health_status == 503
    health = json.loads(health_body)
    assert "database" in health["failing"]
    # Anonymous, as a load balancer asks: which part fails, never the exception text (the database's address).
    assert health["checks"]["database"] == {"ok": False, "detail": "the database cannot be reached"}

    # Back: the same process answers every request again (broken connections are replaced, not reused).
    for status, _, body in burst():
        assert status == 200, body[:500]
    status, _, body = _get(f"{base}/healthz")
    assert json.loads(body)["checks"]["database"]["ok"] is True
    assert server.poll() is None


def test_an_unreachable_database_is_a_clean_503_in_process_on_any_backend(db, client, tmp_path):
    """The same answers without gunicorn or PostgreSQL: this thread's connection is pointed at a database that cannot
    be reached (SQLite: a file in a folder that does not exist; PostgreSQL: a port where nothing listens), then back."""
    with database_unreachable(tmp_path):
        api = client.get("/api/v1/datanets/", HTTP_AUTHORIZATION="Token abc")
        page = client.get("/datanets/")
        health = client.get("/healthz")
    assert (api.status_code, api["Retry-After"]) == (503, "30")
    assert api.json()["error"]["code"] == "database_unavailable"
    assert page.status_code == 503 and b"<h1>Temporarily unavailable</h1>" in page.content
    assert b"Traceback" not in page.content
    assert health.status_code == 503 and "database" in health.json()["failing"]
    assert client.get("/datanets/").status_code == 200
