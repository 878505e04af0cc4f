"""Schema fuzzing: schemathesis generates requests for every operation in /api/schema/ (operations added later are
picked up without touching this file) and sends them to the Django app in-process (WSGI), authenticated with the API
key of a user who has data (tests/world.py). Each generated request is sent twice: as generated, and with its path
parameters pointed at real objects of that user, so bodies and queries are fuzzed against existing rows too.

Checks: no 5xx, a documented status code, a documented content type, a body that matches the documented schema
(error answers included: core/schema.py documents them), and no request that breaks the schema accepted (schemathesis
generates invalid requests too: wrong types, values out of range, unknown enum values, missing fields). Examples per operation: MF_FUZZ_EXAMPLES (default 20)."""

import os

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS
from schemathesis.core.parameters import ParameterLocation

from config.wsgi import application
from tests.world import module_world

EXAMPLES = int(os.environ.get("MF_FUZZ_EXAMPLES", "20"))
CHECK_NAMES = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_schema_conformance", "negative_data_rejection"]  # fmt: skip

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    yield from module_world(django_db_blocker, tmp_path_factory)


def real_path_parameters(path: str, world) -> dict:
    """Path parameters naming the fuzzing user's own objects, by the collection the path is under."""
    by_collection = {
        "/api/v1/datanets/{slug}": {"slug": world.datanet.slug},
        "/api/v1/contributions/{id}": {"id": world.contribution.pk},
        "/api/v1/finetunes/{id}": {"id": world.job.pk},
        "/api/v1/models/{slug}": {"slug": world.model.slug},
        "/api/v1/base-models/{slug}": {"slug": world.job.base_model.slug},
        "/api/v1/ledger/proofs/{tx_id}": {"tx_id": world.proof_tx.pk},
    }
    for prefix, values in by_collection.items():
        if path.startswith(prefix):
            return values
    return {}


def is_form(case) -> bool:
    return (case.media_type or "").startswith(("multipart/form-data", "application/x-www-form-urlencoded"))


def invalid_beyond_the_path(case) -> bool:
    meta = case.meta
    return meta is not None and any(
        info.mode.is_negative for location, info in meta.components.items() if location != ParameterLocation.PATH
    )


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """Requests go through the real WSGI handler, whose request signals close a connection found inside a
    transaction (on PostgreSQL: the test's own). Django's test client disconnects them the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_operation(case, world, db, media, monkeypatch):
    from modelfactory import services as mf_services

    monkeypatch.setattr("datanets.services.contributions._enqueue_ingest", lambda contribution_id: None)
    monkeypatch.setattr(mf_services.finetune_jobs, "_enqueue", lambda job_id, resume=False: None)
    monkeypatch.setattr(mf_services.evaluations, "_enqueue", lambda evaluation_id: None)
    checks = CHECKS.get_by_names(CHECK_NAMES)
    if is_form(case):
        # a form encodes every value as text, so "wrong type" or "[''] instead of a list of names" cannot be
        # sent as generated: invalid bodies are checked in JSON, which keeps their types
        checks = [check for check in checks if check.__name__ != "negative_data_rejection"]
    headers = {"Authorization": f"Token {world.api_key}"}
    case.call_and_validate(headers=headers, checks=checks)
    real = real_path_parameters(case.operation.path, world)
    if real:
        if not invalid_beyond_the_path(case):
            # the only invalid part was the path, which now names a real object: the request is valid
            checks = [check for check in checks if check.__name__ != "negative_data_rejection"]
        case.path_parameters = {**(case.path_parameters or {}), **real}
        case.call_and_validate(headers=headers, checks=checks)
