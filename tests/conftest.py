from types import SimpleNamespace

import pytest
import torch
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.services import login_throttle
from tests.factories import PASSWORD, UserFactory

# Small torch ops on 2 shared cores are far slower with 2 threads when the other core is busy.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield
    cache.clear()


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
