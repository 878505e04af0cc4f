"""Run a callable again after a transient failure, waiting a little longer (and a random part of it) each time."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def full_jitter(
    base_delay: float, *, max_delay: float = float("inf"), uniform: Callable[[float, float], float] | None = None
) -> Callable[[int], float]:
    """Exponential backoff with full jitter: after the n-th failed attempt (n = 1, 2, ...) wait a random time
    between 0 and min(max_delay, base_delay * 2**n). `uniform` defaults to random.uniform (looked up per call)."""

    def delay(failed: int) -> float:
        draw = uniform or random.uniform
        return draw(0, min(max_delay, base_delay * 2**failed))

    return delay


def retry(
    fn: Callable[[], T],
    *,
    retryable: Callable[[Exception], bool],
    attempts: int,
    delay: Callable[[int], float],
    sleep: Callable[[float], object] | None = None,
) -> T:
    """Calls `fn` up to `attempts` times and returns its first result. When a call raises an exception that
    `retryable` accepts and attempts are left, sleeps `delay(n)` seconds (n: the number of calls made so far) and
    calls again; any other exception, or the last attempt's, is raised as it is (with its traceback), at once.
    `retryable` is not asked about the last attempt's exception. BaseExceptions (KeyboardInterrupt, ...) are never
    caught. `sleep` defaults to time.sleep (looked up per call, so a test may patch it)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for number in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if number == attempts or not retryable(exc):
                raise
        (sleep or time.sleep)(delay(number))
    raise AssertionError("unreachable: the last attempt returns or raises")
