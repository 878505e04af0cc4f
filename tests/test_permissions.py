"""Permission matrix: every page and API endpoint x {anonymous, outsider, teammate, owner, staff} -> HTTP status.

The world (tests/world.py) belongs to `owner`. What the roles mean, per object type:
- datanet "Zorb facts" (private): owner and curators (teammate is one) see and curate it; outsiders get 404, never
  403, so a private datanet's existence does not leak. Staff see and curate everything. "Open garden" is public:
  everyone sees it, logged-in users may contribute, only its owner/curators/staff may curate.
- contribution (teammate's upload to the private datanet): its contributor and the datanet's curators.
- fine-tune job, trained model (private), wallet, ledger proofs: the owner only, and staff (except the fine-tune
  API, which lists and shows only the caller's own jobs; staff use the job pages or the admin).
  Being a curator of the owner's datanet gives no rights on them: teammate is an outsider there.
- wallet pages and ledger API always show the caller's own wallet: every logged-in role gets 200 for its own.

Anonymous visitors are sent to the log-in page (302) by pages and get 401 from the API. A row is one line:
(method, path template, expected statuses for anonymous, outsider, teammate, owner, staff). Rows that change
something run for each role in a savepoint, so each role sees the world as built."""

import json

import pytest
from django.db import transaction
from django.test import Client

from accounts.models import ApiToken, User
from accounts.services import api_token_create
from datanets.models import Datanet, Record
from modelfactory.models import Inference
from tests.world import module_world

ROLES = ("anonymous", "outsider", "teammate", "owner", "staff")
LOGIN = 302  # pages: redirect to the log-in page


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    for built in module_world(django_db_blocker, tmp_path_factory):
        with django_db_blocker.unblock():  # the outsider asked the owner's model once (see the inference row)
            built.inference = Inference.objects.create(
                caller=User.objects.get(username="outsider"), model=built.model, source=Inference.Source.OPENAI,
                model_version=built.model.latest_version, messages=[{"role": "user", "content": "Hi"}],
                price_per_1k_tokens=0, status=Inference.Status.COMPLETED, output="Hello",
            )  # fmt: skip
        yield built


#       method  path                                                   anon   outsider teammate owner staff
PAGES = [
    ("GET", "/", 200, 200, 200, 200, 200),
    ("GET", "/healthz", None, None, None, None, None),
    ("GET", "/datanets/", 200, 200, 200, 200, 200),
    ("GET", "/datanets/new/", LOGIN, 200, 200, 200, 200),
    ("GET", "/datanets/{datanet}/", 404, 404, 200, 200, 200),
    ("GET", "/datanets/{datanet}/settings/", LOGIN, 404, 200, 200, 200),
    ("POST", "/datanets/{datanet}/settings/", LOGIN, 404, None, None, None),
    ("GET", "/datanets/{datanet}/upload/", LOGIN, 404, 200, 200, 200),
    ("GET", "/datanets/{datanet}/contributions/", None, 404, 200, 200, 200),
    ("GET", "/datanets/{datanet}/review/", LOGIN, 404, 200, 200, 200),
    ("GET", "/datanets/{datanet}/versions/", 404, 404, 200, 200, 200),
    ("POST", "/datanets/{datanet}/versions/", 404, 404, None, None, None),
    ("GET", "/datanets/{datanet}/versions/{version_number}/", 404, 404, 200, 200, 200),
    ("GET", "/datanets/{datanet}/contributors/", 404, 404, 200, 200, 200),
    ("GET", "/datanets/{datanet}/export.csv", None, 404, 200, 200, 200),
    ("GET", "/datanets/{public}/", 200, 200, 200, 200, 200),
    ("GET", "/datanets/{public}/upload/", LOGIN, 200, 200, 200, 200),
    ("GET", "/datanets/{public}/settings/", LOGIN, 404, 404, 200, 200),
    ("GET", "/datanets/{public}/review/", LOGIN, 403, 403, 200, 200),
    ("GET", "/datanets/contributions/{contribution}/", LOGIN, 404, 200, 200, 200),
    ("GET", "/datanets/contributions/{contribution}/rows/", LOGIN, 404, 200, 200, 200),
    ("POST", "/datanets/contributions/{contribution}/retry/", LOGIN, 404, None, None, None),
    ("POST", "/datanets/contributions/{contribution}/approve/", LOGIN, 404, None, None, None),
    ("POST", "/datanets/contributions/{contribution}/reject/", LOGIN, 404, None, None, None),
    ("POST", "/datanets/rows/{record}/drop/", LOGIN, 404, None, None, None),
    ("GET", "/train/", LOGIN, 200, 200, 200, 200),
    ("GET", "/train/new/?step=1", LOGIN, 200, 200, 200, 200),
    ("GET", "/train/jobs/{job}/", LOGIN, 404, 404, 200, 200),
    ("GET", "/train/jobs/{job}/chart/", LOGIN, 404, 404, 200, 200),
    ("POST", "/train/jobs/{job}/control/", LOGIN, 404, 404, None, None),
    ("POST", "/train/jobs/{job}/evaluations/", LOGIN, 404, 404, 302, 404),  # no test set chosen: back, nothing made
    ("GET", "/models/", 200, 200, 200, 200, 200),
    ("GET", "/models/{model}/", 404, 404, 404, 200, 200),
    ("GET", "/models/{model}/download/", LOGIN, 404, 404, None, None),
    ("POST", "/models/{model}/train-again/", LOGIN, 404, 404, 302, 302),  # no versions chosen: back, nothing made
    ("GET", "/wallet/", LOGIN, 200, 200, 200, 200),
    ("GET", "/wallet/statement.csv", LOGIN, 200, 200, 200, 200),
    ("POST", "/wallet/withdrawals/", LOGIN, None, None, None, None),
    ("GET", "/accounts/profile/", LOGIN, 200, 200, 200, 200),
    ("GET", "/accounts/tokens/", LOGIN, 200, 200, 200, 200),
    ("POST", "/accounts/tokens/{token}/revoke/", LOGIN, 302, 302, 302, 302),
    ("GET", "/accounts/password/", LOGIN, 200, 200, 200, 200),
    ("POST", "/accounts/sign-out-everywhere/", LOGIN, 302, 302, 302, 302),
    ("GET", "/api/docs/", 200, 200, 200, 200, 200),
    ("GET", "/api/schema/", 200, 200, 200, 200, 200),
    ("GET", "/admin/", LOGIN, LOGIN, LOGIN, LOGIN, 200),
    # staff here is a superuser; staff without the permission to grant get 403 (tests/ledger/test_grants.py)
    ("GET", "/admin/ledger/account/grant/", LOGIN, LOGIN, LOGIN, LOGIN, 200),
    ("GET", "/admin/ledger/creditgrant/", LOGIN, LOGIN, LOGIN, LOGIN, 200),
]
API = [
    ("GET", "/api/v1/base-models/", 401, 200, 200, 200, 200),
    ("GET", "/api/v1/datanets/", None, 200, 200, 200, 200),
    ("GET", "/api/v1/datanets/{datanet}/", None, 404, 200, 200, 200),
    ("PATCH", "/api/v1/datanets/{datanet}/", 401, 404, None, None, None),
    ("GET", "/api/v1/datanets/{datanet}/records/", None, 404, 200, 200, 200),
    ("GET", "/api/v1/datanets/{datanet}/versions/", None, 404, 200, 200, 200),
    ("POST", "/api/v1/datanets/{datanet}/versions/", 401, 404, None, None, None),
    ("POST", "/api/v1/datanets/{datanet}/contributions/", 401, 404, None, None, None),
    ("PATCH", "/api/v1/datanets/{public}/", 401, None, None, None, None),
    ("GET", "/api/v1/contributions/{contribution}/", 401, 404, 200, 200, 200),
    ("GET", "/api/v1/contributions/{contribution}/rows/", 401, 404, 200, 200, 200),
    ("POST", "/api/v1/contributions/{contribution}/approve/", 401, 404, None, None, None),
    ("POST", "/api/v1/contributions/{contribution}/reject/", 401, 404, None, None, None),
    ("GET", "/api/v1/finetunes/", 401, 200, 200, 200, 200),
    ("GET", "/api/v1/finetunes/{job}/", 401, 404, 404, 200, 404),
    ("POST", "/api/v1/finetunes/{job}/cancel/", 401, 404, 404, None, 404),
    ("GET", "/api/v1/finetunes/{job}/evaluations/", 401, 404, 404, 200, 404),
    ("POST", "/api/v1/finetunes/{job}/evaluations/", 401, 404, 404, 400, 404),  # no test set chosen: nothing made
    ("GET", "/api/v1/models/", 401, 200, 200, 200, 200),
    ("GET", "/api/v1/models/{model}/", 401, 404, 404, 200, 200),
    ("GET", "/api/v1/ledger/balance/", 401, 200, 200, 200, 200),
    ("GET", "/api/v1/ledger/transactions/", 401, 200, 200, 200, 200),
    ("GET", "/api/v1/ledger/proofs/{proof}/", 401, 404, 404, 200, 200),
    ("GET", "/api/v1/ledger/withdrawals/", 401, 200, 200, 200, 200),
    # a past answer: only the caller who asked for it (the outsider) sees it
    ("GET", "/api/v1/inferences/{inference}/", 401, 200, 404, 404, 404),
]
BODIES = {
    "/datanets/{datanet}/settings/": {"name": "Renamed"},
    "/datanets/contributions/{contribution}/reject/": {"reason": "off topic"},
    "/train/jobs/{job}/control/": {"mode": "cancel"},
    "/wallet/withdrawals/": {"amount": "1"},
    "/api/v1/datanets/{datanet}/": {"summary": "Changed."},
    "/api/v1/datanets/{public}/": {"summary": "Changed."},
    "/api/v1/datanets/{datanet}/versions/": {"notes": "again"},
    "/api/v1/contributions/{contribution}/reject/": {"reason": "off topic"},
    "/api/v1/finetunes/{job}/cancel/": {"mode": "cancel"},
}


# Writes whose status does not tell (a page redirects either way): what they change, and which roles change it.
EFFECTS = {
    # Each role revokes only its own keys: the owner's key stays unless the owner signs out everywhere.
    "POST /accounts/sign-out-everywhere/": (
        lambda w: ApiToken.objects.filter(user__username="owner", name="matrix", revoked_at__isnull=True).count(),
        {"owner"},
    ),
    "POST /accounts/tokens/{token}/revoke/": (
        lambda w: ApiToken.objects.filter(user__username="owner", name="matrix", revoked_at__isnull=True).count(),
        {"owner"},
    ),
    "POST /datanets/rows/{record}/drop/": (
        lambda w: w.datanet.records.filter(status=Record.Status.ACCEPTED).count(),
        {"teammate", "owner", "staff"},
    ),
    "PATCH /api/v1/datanets/{datanet}/": (
        lambda w: Datanet.objects.get(pk=w.datanet.pk).summary,
        {"teammate", "owner", "staff"},
    ),
    "PATCH /api/v1/datanets/{public}/": (
        lambda w: Datanet.objects.get(pk=w.public_datanet.pk).summary,
        {"owner", "staff"},
    ),
}


def ids(rows):
    return [f"{method} {path}" for method, path, *_ in rows]


def fill(path: str, world, cast) -> str:
    token, _ = api_token_create(user=cast.owner, name="matrix")
    return path.format(
        datanet=world.datanet.slug, public=world.public_datanet.slug, version_number=world.version.number,
        contribution=world.contribution.pk, record=world.datanet.records.first().pk, job=world.job.pk,
        model=world.model.slug, proof=world.proof_tx.pk, token=token.pk, inference=world.inference.pk,
    )  # fmt: skip


def status_for(method, path, role, world, cast, *, api: bool) -> tuple[int, bool]:
    client = Client()
    if role != "anonymous":
        client.force_login(getattr(cast, role))
    body = BODIES.get(path, {})
    url = fill(path, world, cast)
    state = EFFECTS.get(f"{method} {path}", (lambda w: None, set()))[0]
    savepoint = transaction.atomic()
    savepoint._from_testcase = True  # the services' durable atomics nest in it, as in TestCase
    with savepoint:  # what one role changes, the next role does not see
        before = state(world)
        if api:
            response = client.generic(method, url, json.dumps(body), content_type="application/json")
        else:
            response = getattr(client, method.lower())(url, body)
        changed = state(world) != before
        transaction.set_rollback(True)
    return response.status_code, changed


def check(row, world, cast, *, api: bool):
    method, path, *expected = row
    results = {role: status_for(method, path, role, world, cast, api=api) for role in ROLES}
    seen = {role: status for role, (status, _) in results.items()}
    wanted = {role: status for role, status in zip(ROLES, expected, strict=True) if status is not None}
    assert {role: seen[role] for role in wanted} == wanted, f"seen {seen}"
    if f"{method} {path}" in EFFECTS:
        assert {role for role, (_, changed) in results.items() if changed} == EFFECTS[f"{method} {path}"][1]


@pytest.mark.parametrize("row", PAGES, ids=ids(PAGES))
def test_page(row, world, cast, db):
    check(row, world, cast, api=False)


@pytest.mark.parametrize("row", API, ids=ids(API))
def test_api(row, world, cast, db):
    check(row, world, cast, api=True)
