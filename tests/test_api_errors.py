"""Errors found by the schema fuzz test (tests/test_schema_fuzz.py), pinned as plain tests."""

from rest_framework.test import APIClient

from accounts.services import api_token_create


def test_a_post_to_an_unknown_api_path_is_a_json_404_not_an_html_csrf_page(cast):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(cast.owner)  # a session cookie without a CSRF token: Django's CSRF check would answer HTML
    response = client.post("/api/v1/contributions/0.5/approve/", {"reason": ""}, format="json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": "No API endpoint at /api/v1/contributions/0.5/approve/.",
            "details": {},
        }
    }


def test_a_job_id_that_is_not_a_number_is_a_404(cast):
    _, key = api_token_create(user=cast.owner, name="t")
    client = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    for path in ("/api/v1/finetunes/null,null/cancel/", "/api/v1/finetunes/abc/", "/api/v1/contributions/x/"):
        response = client.post(path, {"mode": "cancel"}) if path.endswith("cancel/") else client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_every_operation_documents_its_errors_in_the_error_shape(client):
    schema = client.get("/api/schema/?format=json").json()
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert "429" in responses, (method, path)
            assert "503" in responses, (method, path)
            if "{" in path:
                assert responses["404"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, (method, path)
    assert set(schema["paths"]["/api/v1/datanets/{slug}/contributions/"]["post"]["responses"]) == {
        "201", "400", "401", "403", "404", "409", "413", "415", "429", "503",
    }  # fmt: skip


def test_a_nul_character_in_a_query_or_path_is_a_clear_400_not_a_database_error(cast, client):
    _, key = api_token_create(user=cast.owner, name="t")
    api = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    response = api.get("/api/v1/datanets/", {"q": "a\x00b"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "invalid", "message": "The address contains a NUL character, which is never valid here.",
                  "details": {}}
    }  # fmt: skip
    assert api.get("/api/v1/datanets/a%00b/").status_code == 400
    page = client.get("/datanets/", {"q": "\x00"})
    assert page.status_code == 400
    assert page.content == b"The address contains a NUL character, which is never valid here."


TOO_DEEP = "The JSON is nested too deeply: at most 100 levels of arrays and objects inside one another."


def _nested(depth: int) -> str:
    """An object holding arrays: `depth` levels of nesting in all (the object is the first)."""
    return (
        '{"name": "Deep notes", "kind": "text", "summary": "s", "visibility": "public", "extra": '
        + "[" * (depth - 1)
        + "]" * (depth - 1)
        + "}"
    )


def test_json_nested_100000_deep_is_a_clear_400_and_creates_nothing(cast):
    from datanets.models import Datanet

    _, key = api_token_create(user=cast.owner, name="t")
    api = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    body = "[" * 100_000 + "]" * 100_000
    response = api.post("/api/v1/datanets/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "nested_too_deeply", "message": TOO_DEEP, "details": {}}}
    response = api.post("/api/v1/datanets/", _nested(101), content_type="application/json")
    assert response.json()["error"]["code"] == "nested_too_deeply"
    assert not Datanet.objects.exists()
    # At the limit the body is read as usual (the unknown field is ignored).
    response = api.post("/api/v1/datanets/", _nested(100), content_type="application/json")
    assert response.status_code == 201, response.content
    assert list(Datanet.objects.values_list("name", flat=True)) == ["Deep notes"]


def test_json_nested_too_deeply_in_the_openai_api_and_the_playground(cast, client):
    _, key = api_token_create(user=cast.outsider, name="openai")
    api = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = '{"model": "m", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = api.post("/v1/chat/completions", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": f"We could not parse the JSON body of your request. {TOO_DEEP}",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
    }
    client.force_login(cast.outsider)
    response = client.post("/models/anything/playground/start/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "nested_too_deeply", "message": TOO_DEEP}}


def test_a_json_body_over_the_memory_limit_is_a_413_and_creates_nothing(cast, settings):
    from datanets.models import Datanet

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    _, key = api_token_create(user=cast.owner, name="t")
    body = (
        '{"name": "Big", "kind": "text", "summary": "s", "visibility": "public", "description": "' + "x" * 1000 + '"}'
    )
    message = "The request body is larger than 1000\xa0bytes; nothing was read from it."
    response = APIClient(HTTP_AUTHORIZATION=f"Token {key}").post(
        "/api/v1/datanets/", body, content_type="application/json"
    )
    assert response.status_code == 413
    assert response.json() == {"error": {"code": "request_too_large", "message": message, "details": {}}}
    assert not Datanet.objects.exists()
    response = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/v1/chat/completions",
        '{"model": "m", "messages": [], "x": "' + "x" * 1000 + '"}',
        content_type="application/json",
    )
    assert response.status_code == 413
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}
    }
