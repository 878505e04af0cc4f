"""One REST contract across the apps, as the OpenAPI schema states it: every 201 names a Location, every create
that honours an Idempotency-Key documents the header and its 409, and each operation lists the statuses it can
answer (the token's 401, generate's 402)."""

import pytest

pytestmark = pytest.mark.django_db

IDEMPOTENT_CREATES = [
    ("/api/v1/datanets/", "post"),
    ("/api/v1/finetunes/", "post"),
    ("/api/v1/ledger/withdrawals/", "post"),
]


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker):
    from django.test import Client

    with django_db_blocker.unblock():
        return Client().get("/api/schema/?format=json").json()


def test_every_201_names_its_location(schema):
    created = [
        (path, method)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if "201" in operation["responses"]
    ]
    assert sorted(created) == [
        ("/api/v1/auth/token/", "post"),
        ("/api/v1/contributions/{contribution_id}/finding/", "post"),
        ("/api/v1/datanets/", "post"),
        ("/api/v1/datanets/{slug}/contributions/", "post"),
        ("/api/v1/datanets/{slug}/versions/", "post"),
        ("/api/v1/finetunes/", "post"),
        ("/api/v1/ledger/withdrawals/", "post"),
    ]
    for path, method in created:
        headers = schema["paths"][path][method]["responses"]["201"]["headers"]
        assert headers["Location"]["schema"] == {"type": "string", "format": "uri"}, path


@pytest.mark.parametrize(("path", "method"), IDEMPOTENT_CREATES)
def test_idempotent_creates_document_the_header_and_the_conflict(schema, path, method):
    operation = schema["paths"][path][method]
    header = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert [(p["in"], p.get("required", False)) for p in header] == [("header", False)]
    assert "409" in operation["responses"]
    assert "200" not in operation["responses"]  # a replay answers 201, as the first request did


def test_statuses_an_operation_can_answer_are_documented(schema):
    token = schema["paths"]["/api/v1/auth/token/"]["post"]["responses"]
    assert {"201", "400", "401", "429"} <= set(token)
    generate = schema["paths"]["/api/v1/models/{slug}/generate/"]["post"]["responses"]
    assert {"200", "400", "401", "402", "404", "429", "503"} <= set(generate)


def test_the_statement_is_a_cursor_list_with_posting_ids(schema):
    operation = schema["paths"]["/api/v1/ledger/transactions/"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"cursor", "page_size", "kind", "from", "to"}
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"next", "previous", "results", "anchor"}
    line = schema["components"]["schemas"]["StatementLine"]["properties"]
    assert line["posting_id"]["type"] == "integer"


def test_amounts_sent_as_whole_numbers_are_documented(schema):
    price = schema["components"]["schemas"]["PublishRequest"]["properties"]["price_per_1k_tokens"]
    assert [option["type"] for option in price["oneOf"]] == ["string", "integer"]
    assert price["oneOf"][1]["minimum"] == 0
