"""Counters shared by every web process (log-in failures, API rate limits), incremented atomically.

A read-modify-write of a cached value loses updates when requests run at once: 11 concurrent guesses all read
"4 failures" and all passed a limit of 5. Redis (INCR) and the in-process cache (under its lock) increment
atomically; the file cache cannot, so its increments are serialised by a lock file next to the cache (one host)."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from pathlib import Path

from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache

_thread_lock = threading.Lock()


def _cache():
    return caches["default"]


@contextlib.contextmanager
def _file_lock(cache):
    folder = Path(getattr(cache, "_dir", "/tmp"))  # noqa: S108 (only a lock file; the file cache always has _dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _thread_lock, open(folder / ".counters.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def counter_add(key: str, delta: int = 1, *, ttl: int) -> int:
    """Adds delta to the counter (a missing or expired one starts at 0) and returns the new value. The counter is
    forgotten `ttl` seconds after its last change."""
    cache = _cache()
    if isinstance(cache, RedisCache | LocMemCache):
        for _ in range(3):
            cache.add(key, 0, ttl)
            try:
                value = cache.incr(key, delta)
            except ValueError:  # expired between add() and incr(): start again
                continue
            cache.touch(key, ttl)
            return value
        raise RuntimeError(f"counter {key} kept expiring")
    with _file_lock(cache):
        value = int(cache.get(key, 0)) + delta
        cache.set(key, value, ttl)
        return value


def value_set_once(key: str, value: float, *, ttl: int) -> float:
    """Stores `value` under `key` unless a value is there already, and returns the stored one: of many callers at
    once, exactly one sets it (the file cache's add() is not atomic, so it runs under the counters' lock)."""
    cache = _cache()
    if isinstance(cache, RedisCache | LocMemCache):
        cache.add(key, value, ttl)
        stored = cache.get(key)
        return value if stored is None else stored
    with _file_lock(cache):
        stored = cache.get(key)
        if stored is None:
            cache.set(key, value, ttl)
            return value
        return stored


def counter_get(key: str) -> int:
    return int(_cache().get(key, 0))


def counter_delete(*keys: str) -> None:
    _cache().delete_many(list(keys))
