import os
from types import SimpleNamespace

import pytest
import torch
from django.core.cache import cache
from django.db.backends.signals import connection_created
from rest_framework.test import APIClient

from accounts.services import login_throttle
from tests.factories import PASSWORD, UserFactory

# Small torch ops on 2 shared cores are far slower with 2 threads when the other core is busy.
torch.set_num_threads(1)
# The Celery workers the tests start (they inherit this environment) do not measure the base models when they start.
os.environ.setdefault("MF_CALIBRATE_ON_START", "false")


def _allow_ledger_truncate(sender, connection, **kwargs):
    # The ledger's tables refuse TRUNCATE (ledger/migrations/0007) except in a test database whose session asks;
    # Django empties the database with TRUNCATE between transactional tests.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET ledger.allow_truncate = on")


connection_created.connect(_allow_ledger_truncate, dispatch_uid="tests-allow-ledger-truncate")


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _ledger_anchors_in_tmp(settings, tmp_path_factory):
    # Checkpoints append signed anchors (ledger/services/anchors.py): each test its own file and key, never var/.
    folder = tmp_path_factory.mktemp("anchors")
    settings.MF_LEDGER_ANCHORS_PATH = folder / "anchors.jsonl"
    settings.MF_LEDGER_ANCHOR_KEY = folder / "anchor-key.pem"


@pytest.fixture
def cast(db):
    """The fixed cast for permission tests: owner, teammate, outsider, staff."""
    return SimpleNamespace(
        owner=UserFactory(username="owner"),
        teammate=UserFactory(username="teammate"),
        outsider=UserFactory(username="outsider"),
        staff=UserFactory(username="staff", is_staff=True, is_superuser=True),
        password=PASSWORD,
    )


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def login_clock(monkeypatch):
    """The failed-log-in throttle's clock, frozen; `login_clock.now += 30` moves it (no test waits for real)."""
    clock = SimpleNamespace(now=1_800_000_000.0)
    monkeypatch.setattr(login_throttle, "time", SimpleNamespace(time=lambda: clock.now))
    return clock
