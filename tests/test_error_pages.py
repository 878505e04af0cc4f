"""People see the site's own 403/404/500 pages, and an installation without DJANGO_DEBUG runs with DEBUG off."""

import json
import os
import subprocess
import sys
from pathlib import Path

from django.test import RequestFactory
from django.views.defaults import server_error

from datanets.models import Datanet
from datanets.services import datanet_create

ROOT = Path(__file__).resolve().parents[1]

EMBEDDED_SCRIPT = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
client = Client()
missing = client.get("/no-such-page/", HTTP_HOST="127.0.0.1")
css = client.get("/static/css/app.css", HTTP_HOST="localhost")
print(json.dumps({"debug": settings.DEBUG, "hosts": settings.ALLOWED_HOSTS, "key": settings.SECRET_KEY,
                  "ssl_redirect": settings.SECURE_SSL_REDIRECT, "missing": missing.status_code,
                  "friendly": "We could not find that page" in missing.content.decode(),
                  "css": css.status_code}))
"""


def _embedded(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MF_", "DATABASE_URL", "CACHE_URL"))}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", MF_VAR_DIR=str(tmp_path / "var"), **extra)
    result = subprocess.run(
        [sys.executable, "-c", EMBEDDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_django_debug_the_site_runs_as_people_use_it(tmp_path):
    first = _embedded(tmp_path)
    key_file = tmp_path / "var" / "secret_key"
    assert first["debug"] is False
    assert first["hosts"] == ["127.0.0.1", "localhost", "[::1]"]
    assert first["key"] == key_file.read_text().strip()
    assert len(first["key"]) >= 50
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert first["ssl_redirect"] is False  # plain http://127.0.0.1:8000 for `make run`
    assert (first["missing"], first["friendly"]) == (404, True)
    assert first["css"] == 200  # WhiteNoise serves static files without collectstatic
    assert _embedded(tmp_path)["key"] == first["key"]  # generated once, then kept


def test_django_debug_true_is_for_developers(tmp_path):
    seen = _embedded(tmp_path, DJANGO_DEBUG="true")
    assert seen["debug"] is True
    assert seen["missing"] == 404
    assert seen["friendly"] is False  # Django's technical 404 page


def test_unknown_address_gets_the_friendly_404_in_the_site_layout(client, db):
    response = client.get("/no-such-page/")
    body = response.content.decode()
    assert response.status_code == 404
    assert [t.name for t in response.templates][:2] == ["404.html", "base.html"]
    assert "We could not find that page" in body
    assert 'class="site-header"' in body
    assert "URLconf" not in body and "Resolver404" not in body


def test_private_datanet_is_a_friendly_404_for_outsiders(client, cast):
    datanet = datanet_create(
        owner=cast.owner, name="Zorb facts", kind="instruction", summary="Made-up facts.",
        visibility=Datanet.Visibility.PRIVATE,
    )  # fmt: skip
    client.force_login(cast.outsider)
    response = client.get(f"/datanets/{datanet.slug}/")
    assert response.status_code == 404
    assert '<p id="error-reason">No such datanet.</p>' in response.content.decode()


def test_server_error_page_is_friendly_and_needs_no_request_context(db):
    response = server_error(RequestFactory().get("/"))
    body = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in body
    assert 'class="site-header"' in body


def test_a_form_sent_with_an_expired_session_gets_a_plain_reload_page(cast):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.owner)
    client.get("/datanets/new/")  # the CSRF cookie is set
    response = client.post("/datanets/new/", {"name": "x", "csrfmiddlewaretoken": "stale" * 8})
    page = response.content.decode()
    assert response.status_code == 403
    assert "Please reload the page and try again" in page and "Nothing was changed." in page
    assert "CSRF verification failed" not in page and "Forbidden" not in page
    assert response["X-Error-Message"].endswith("Reload the page and try again.")
    assert "check that your browser accepts cookies" not in page

    fresh = Client(enforce_csrf_checks=True)  # no cookie at all
    fresh.force_login(cast.owner)
    page = fresh.post("/datanets/new/", {"name": "x"}).content.decode()
    assert "check that your browser accepts cookies from this site" in page
    assert not Datanet.objects.exists()
