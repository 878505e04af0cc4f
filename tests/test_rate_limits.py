"""Counters shared by concurrent requests lose no update (issue 17: 11 guesses passed a limit of 5). Each test runs
in every cache the app can be given: the file cache (default), the in-process one, and Redis when CACHE_URL names it
(as CI sets it)."""

import os
import threading
import time

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache import caches
from django.test import RequestFactory, override_settings

from accounts.services import login_attempt_begin, login_attempt_failed
from core.counters import counter_add, counter_get
from core.throttling import AnonRateThrottle

CACHE_KINDS = ["file", "locmem", "redis"]
THREADS = 24


@pytest.fixture(params=CACHE_KINDS)
def cache_kind(request, tmp_path):
    url = os.environ.get("CACHE_URL", "")
    if request.param == "redis":
        if not url.startswith("redis"):
            pytest.skip("needs Redis (CACHE_URL=redis://…, as CI sets it)")
        backend = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    elif request.param == "locmem":
        backend = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rate-limits"}
    else:
        backend = {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path)}
    with override_settings(CACHES={"default": backend}):
        caches["default"].clear()
        yield request.param
        caches["default"].clear()


def _at_once(n: int, work) -> None:
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_counter_increments_from_many_threads_are_all_kept(cache_kind):
    _at_once(THREADS, lambda i: [counter_add("hits", ttl=60) for _ in range(5)])
    assert counter_get("hits") == THREADS * 5


class FivePerMinute(AnonRateThrottle):
    rate = "5/min"


def test_api_rate_limit_lets_exactly_its_rate_through_when_requests_arrive_at_once(cache_kind):
    passed = []
    request = RequestFactory().get("/api/v1/base-models/", REMOTE_ADDR="192.0.2.9")
    request.user = AnonymousUser()

    def call(i):
        if FivePerMinute().allow_request(request, view=None):
            passed.append(i)

    _at_once(THREADS, call)
    assert len(passed) == 5
    refused = FivePerMinute()
    assert refused.allow_request(request, view=None) is False
    assert 1 <= refused.wait() <= 60


@override_settings(MF_LOGIN_MAX_FAILURES=5, MF_LOGIN_ADDRESS_MAX_FAILURES=100, MF_LOGIN_DELAY_SECONDS=30)
def test_log_in_guesses_sent_at_once_do_not_pass_the_limit(cache_kind):
    """11 guesses at once against a limit of 5 (the attack run's numbers): 5 have their password checked."""
    checked = []

    def guess(n):
        attempt = login_attempt_begin(username="owner", address=f"192.0.2.{n}", known_device=False)
        if attempt.allowed:
            checked.append(n)
            time.sleep(0.05)  # the password check, during which the others arrive
            login_attempt_failed(attempt=attempt)

    _at_once(11, guess)
    assert len(checked) == 5
