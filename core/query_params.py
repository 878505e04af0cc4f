"""The query parameters each REST operation documents, read from the OpenAPI schema itself, so that what the API
accepts and what it documents cannot drift apart. A parameter the operation does not document is refused (a typo
such as `?stauts=accepted` would otherwise return everything, unfiltered), as is an empty value for a parameter that
must be a date, a number or one of a list of values."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# DRF's own format override (?format=json), accepted on every operation.
ALWAYS_ACCEPTED = frozenset({"format"})


@dataclass(frozen=True)
class Operation:
    path: re.Pattern
    method: str
    parameters: dict[str, dict]  # name -> its schema


@functools.cache
def documented_operations() -> tuple[Operation, ...]:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = []
    for path, methods in schema.get("paths", {}).items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        for method, operation in methods.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            parameters = {
                p["name"]: p.get("schema", {}) for p in operation.get("parameters", []) if p.get("in") == "query"
            }
            operations.append(Operation(pattern, method.upper(), parameters))
    return tuple(operations)


def operation_for(path: str, method: str) -> Operation | None:
    method = "GET" if method == "HEAD" else method
    for operation in documented_operations():
        if operation.method == method and operation.path.match(path):
            return operation
    return None


def _must_have_a_value(schema: dict) -> bool:
    return (
        bool(schema.get("enum"))
        or schema.get("format") in ("date", "date-time")
        or schema.get("type")
        in (
            "integer",
            "number",
            "boolean",
        )
    )


def query_errors(path: str, method: str, names: list[str], values: dict[str, list[str]]) -> dict[str, list[str]]:
    """{parameter: [message]} for the query of a request to `path`; {} when it is fine or the path is unknown (the
    router answers those)."""
    operation = operation_for(path, method)
    if operation is None:
        return {}
    errors: dict[str, list[str]] = {}
    for name in names:
        if name in ALWAYS_ACCEPTED:
            continue
        schema = operation.parameters.get(name)
        if schema is None:
            known = ", ".join(sorted(operation.parameters)) or "none"
            errors[name] = [f"Unknown query parameter '{name}'. This operation accepts: {known}."]
        elif _must_have_a_value(schema) and any(value.strip() == "" for value in values.get(name, [])):
            errors[name] = ["This parameter is empty; leave it out or give a value."]
    return errors
