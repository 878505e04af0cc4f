"""Production settings, checked in a fresh interpreter with production environment values (the test process
itself runs with DEBUG settings): `check --deploy` is clean and every response carries the security headers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRET = "k3v9-Qw7t-production-secret-for-tests-Zp2m-8xLr-5yHn"

HEADERS_SCRIPT = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
# An unknown API path: answered by the app (JSON 404) without touching the database or the static manifest.
response = Client(HTTP_X_FORWARDED_PROTO="https").get("/api/v1/nothing/", HTTP_HOST="modelfactory.example.com")
plain = Client().get("/api/v1/nothing/", HTTP_HOST="modelfactory.example.com")
print(json.dumps({"status": response.status_code, "headers": dict(response.headers),
                  "plain_status": plain.status_code, "plain_location": plain.headers.get("Location"),
                  "secure_cookies": [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE]}))
"""


@pytest.fixture
def production_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MF_", "DATABASE_URL", "CACHE_URL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=SECRET,
        DJANGO_ALLOWED_HOSTS="modelfactory.example.com",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://modelfactory.example.com",
        MF_VAR_DIR=str(tmp_path / "var"),
    )
    return env


def run(args, env):
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_values(production_env):
    result = run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert "WARNING" not in result.stderr


def test_check_deploy_warns_with_development_values(production_env):
    """The check above can fail: with DEBUG on it reports the debug and HTTPS warnings."""
    production_env.update(DJANGO_DEBUG="true")
    result = run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env)
    assert result.returncode == 1
    assert "security.W018" in result.stderr  # DEBUG on
    assert "security.W004" in result.stderr  # no HSTS


def test_production_responses_carry_the_security_headers(production_env):
    result = run([sys.executable, "-c", HEADERS_SCRIPT], production_env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["plain_status"] == 301  # plain HTTP is redirected to HTTPS
    assert seen["plain_location"] == "https://modelfactory.example.com/api/v1/nothing/"
    assert seen["status"] == 404
    headers = seen["headers"]
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )
    assert seen["secure_cookies"] == [True, True]


def test_report_only_mode_sends_the_policy_without_enforcing_it(production_env):
    production_env.update(MF_CSP_REPORT_ONLY="true")
    result = run([sys.executable, "-c", HEADERS_SCRIPT], production_env)
    headers = json.loads(result.stdout.strip().splitlines()[-1])["headers"]
    assert "Content-Security-Policy" not in headers
    assert headers["Content-Security-Policy-Report-Only"].startswith("default-src 'self'; script-src 'self';")


def test_collectstatic_succeeds_with_the_production_storage(production_env, tmp_path):
    """The manifest storage rewrites references inside CSS/JS and refuses a file that names a missing one (a
    vendored source map comment did); production serves only what this collected."""
    result = run([sys.executable, "manage.py", "collectstatic", "--no-input"], production_env)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "var" / "staticfiles" / "staticfiles.json").read_text())
    assert {"js/app.js", "js/charts.js", "css/swagger.css", "vendor/chart-4.6.1.umd.min.js"} <= set(manifest["paths"])
