"""DRF rate limits counted atomically (core.counters): DRF's own throttles keep a list of request times that each
request reads and writes back, so requests arriving together all see the old list and all pass. These count
requests in a window that opens at a caller's first request and lasts the rate's period, with one atomic increment
each; at most `num_requests` pass per window. An anonymous caller is counted by its address: REMOTE_ADDR, or the
one the trusted proxies saw (REST_FRAMEWORK["NUM_PROXIES"] = MF_TRUSTED_PROXY_COUNT)."""

from __future__ import annotations

import math
import time

from django.conf import settings
from rest_framework import throttling

from common.net import client_address
from core.counters import counter_add, value_set_once


class AtomicRateThrottle(throttling.SimpleRateThrottle):
    def allow_request(self, request, view):
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        # The window opens at the caller's first request (the add() that wins) and lasts the rate's period.
        now = time.time()
        start_key = f"{self.key}:start"
        start = value_set_once(start_key, now, ttl=self.duration)
        count = counter_add(f"{self.key}:{start:.6f}", ttl=self.duration + 1)
        self._wait = math.ceil(start + self.duration - now)
        return count <= self.num_requests

    def wait(self):
        return max(1, self._wait)


class AnonRateThrottle(throttling.AnonRateThrottle, AtomicRateThrottle):
    pass


class UserRateThrottle(throttling.UserRateThrottle, AtomicRateThrottle):
    pass


class ScopedRateThrottle(throttling.ScopedRateThrottle, AtomicRateThrottle):
    pass


def client_address_of(request) -> str:
    """The client's address: the connection's, or behind MF_TRUSTED_PROXY_COUNT proxies the one they report."""
    return client_address(
        remote_addr=request.META.get("REMOTE_ADDR", ""),
        forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"),
        trusted_proxies=settings.MF_TRUSTED_PROXY_COUNT,
    )
