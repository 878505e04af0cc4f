"""OpenAPI post-processing: every operation documents the error answers it can give, in the one error shape.

drf-spectacular documents only the success answer of each operation; clients (and the schema fuzz test,
tests/test_schema_fuzz.py) need the errors too. Added to every operation, including ones added later, unless the
view documents that status itself: 400 where it takes a body or query parameters, 415 where it takes a body, 401
and 403 where it needs authentication, 404 where it has path parameters or pages, and 429 (throttled) and 503
(the database is unreachable; core.middleware.database_unavailable) everywhere; 409 where the operation honours
an Idempotency-Key header, and a `Location` header on every 201."""

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": 'Every API error: {"error": {"code", "message", "details"}}.',
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Machine-readable, e.g. invalid, not_found, throttled."},
                "message": {"type": "string", "description": "What went wrong, in plain words."},
                "details": {"type": "object", "additionalProperties": True, "description": "Per-field errors etc."},
            },
            "required": ["code", "message", "details"],
        }
    },
    "required": ["error"],
}
DESCRIPTIONS = {
    "400": "The request is not valid; details name each field.",
    "401": "No valid credentials (send `Authorization: Token <key>`).",
    "403": "Authenticated, but not allowed to do this.",
    "404": "No such object, or not visible to you.",
    "409": "The Idempotency-Key was used before with a different request; nothing was created.",
    "415": "The body's Content-Type is not one this operation reads (send JSON, or multipart for uploads).",
    "429": "Too many requests; details.retry_after_seconds says when to retry.",
    "503": "The database cannot be reached right now (code database_unavailable); retry after Retry-After seconds.",
}
LOCATION_HEADER = {
    "description": "Where the new object can be read again.",
    "schema": {"type": "string", "format": "uri"},
}
HTTP_METHODS = {"get", "put", "patch", "post", "delete", "head", "options", "trace"}


def _error_statuses(operation: dict, method: str) -> list[str]:
    parameters = operation.get("parameters", [])
    statuses = []
    if "requestBody" in operation or method in {"post", "put", "patch"} or any(p["in"] == "query" for p in parameters):
        statuses.append("400")
    if "requestBody" in operation:
        statuses.append("415")
    if any(requirement for requirement in operation.get("security", [])):  # {} alone means "anonymous is fine"
        statuses += ["401", "403"]
    if any(p["in"] == "path" or (p["in"] == "query" and p["name"] == "page") for p in parameters):
        statuses.append("404")
    if any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in parameters):
        statuses.append("409")
    statuses += ["429", "503"]
    return statuses


def add_error_responses(result, generator, request, public):
    # Views that document an extra status (core.api.error_responses) already brought the same shape as "Error".
    result.setdefault("components", {}).setdefault("schemas", {}).setdefault(ERROR_COMPONENT, ERROR_SCHEMA)
    ref = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
    for methods in result.get("paths", {}).values():
        for method, operation in methods.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if "201" in responses:
                responses["201"].setdefault("headers", {})["Location"] = LOCATION_HEADER
            for status in _error_statuses(operation, method):
                responses.setdefault(
                    status, {"description": DESCRIPTIONS[status], "content": {"application/json": {"schema": ref}}}
                )
    return result
