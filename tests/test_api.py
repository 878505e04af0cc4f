import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


@override_settings(DEBUG=True)
def test_unknown_api_route_is_json_even_in_debug(api_client):
    response = api_client.get("/api/v1/does-not-exist/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {"code": "not_found", "message": "No API endpoint at /api/v1/does-not-exist/.", "details": {}}
    }


def test_wrong_method_is_json(api_client):
    response = api_client.delete("/api/v1/auth/token/")
    assert response.status_code == 405
    assert response.json() == {
        "error": {
            "code": "method_not_allowed",
            "message": 'Method "DELETE" not allowed.',
            "details": {"allowed": ["OPTIONS", "POST"]},
        }
    }


def test_anonymous_gets_401_in_the_error_shape(api_client):
    response = api_client.get("/api/v1/base-models/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


def test_validation_errors_list_each_field(api_client):
    response = api_client.post("/api/v1/auth/token/", {"username": ""}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid",
            "message": "Some values are not valid: password, username",
            "details": {"username": ["This field may not be blank."], "password": ["This field is required."]},
        }
    }


def test_nested_validation_errors_have_the_same_flat_shape(api_client, cast):
    """details is always {"name": ["message", ...]}: nested fields are named by their path, lists of errors flat."""
    api_client.force_authenticate(cast.owner)
    response = api_client.post(
        "/api/v1/finetunes/", {"base_model": "x", "datanet_versions": [1, "two", 0]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "datanet_versions.1": ["A valid integer is required."],
        "datanet_versions.2": ["Ensure this value is greater than or equal to 1."],
    }
    response = api_client.post("/api/v1/ledger/withdrawals/", ["not", "an", "object"], format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "non_field_errors": ["Invalid data. Expected a dictionary, but got list."]
    }


def test_malformed_json_is_a_400_in_the_error_shape(api_client):
    response = api_client.generic("POST", "/api/v1/auth/token/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


@override_settings(DEBUG=True)
def test_unexpected_exception_is_a_json_500(api_client, cast, monkeypatch):
    from modelfactory import selectors

    def boom():
        raise RuntimeError("kaboom")

    monkeypatch.setattr(selectors, "base_model_list", boom)
    api_client.raise_request_exception = False
    api_client.force_authenticate(cast.owner)
    response = api_client.get("/api/v1/base-models/")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "server_error",
            "message": "Something went wrong on our side; it has been logged.",
            "details": {},
        }
    }


def test_session_auth_works_for_the_api(client, cast):
    client.force_login(cast.outsider)
    response = client.get("/api/v1/base-models/")
    assert response.status_code == 200
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_docs_page_is_served_without_a_cdn(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "cdn." not in page and "unpkg" not in page


def test_schema_lists_the_api(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/auth/token/" in paths
    assert "/api/v1/base-models/" in paths


def test_schema_generates_without_warnings():
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
