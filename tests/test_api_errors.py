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
