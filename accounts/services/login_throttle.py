"""The failed-log-in throttle: hold the guesser back, not the account's owner.

Failures are counted per account and per client address, separately. The first MF_LOGIN_MAX_FAILURES failures of an
account (MF_LOGIN_ADDRESS_MAX_FAILURES of an address) cost nothing; after them each try must wait a delay that starts
at MF_LOGIN_DELAY_SECONDS and doubles with every further failure (at most MF_LOGIN_DELAY_MAX_SECONDS). Nothing is
locked for a fixed time, and a browser that logged in to the account before (a signed "known device" cookie) is not
held back by the account's count, only by its own address's: the owner still gets in while someone else guesses.

Each try is counted before its password is checked, with an atomic increment (core.counters), and a try past the
free ones must claim the scope (cache.add, atomic) first: tries sent at once cannot all slip under the limit."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.cache import cache

from core.counters import counter_add, counter_delete

KNOWN_DEVICE_COOKIE = "mf_known_device"
_KNOWN_DEVICE_SALT = "accounts.known-device"
_KNOWN_DEVICE_MAX_ACCOUNTS = 10
_CLAIM_SECONDS = 30  # a claim's lifetime: longer than any password check


@dataclass(frozen=True)
class LoginAttempt:
    allowed: bool
    wait_seconds: int = 0  # when refused: how long until the next try may be made
    counted: tuple[tuple[str, int, int], ...] = ()  # (scope key, failures counting this try, free failures)


def _account_key(username: str) -> str:
    return f"login:account:{username.strip().lower()[:150]}"


def _memory_seconds() -> int:
    """Failures are forgotten this long after the last one."""
    return 4 * settings.MF_LOGIN_DELAY_MAX_SECONDS


def _delay(failures: int, free: int) -> int:
    doublings = min(failures - free, 30)
    return min(settings.MF_LOGIN_DELAY_MAX_SECONDS, settings.MF_LOGIN_DELAY_SECONDS * 2**doublings)


def _refuse(counted: list, wait: int) -> LoginAttempt:
    for key, _, _ in counted:  # a refused try checked no password: it is not a failure
        counter_add(f"{key}:failures", -1, ttl=_memory_seconds())
    return LoginAttempt(allowed=False, wait_seconds=max(1, wait))


def login_attempt_begin(*, username: str, address: str, known_device: bool) -> LoginAttempt:
    """Counts a try before its password is checked, or refuses it with the seconds to wait.

    Per scope: the `{key}:gate` holds the time before which no try may be made (set when a failure uses up the free
    tries or a delay); a try past the free ones also needs that gate to exist and to have passed, and must claim
    `{key}:claim` (atomic add) so that only one try is checked per delay."""
    now = time.time()
    scopes = [(f"login:address:{address}", settings.MF_LOGIN_ADDRESS_MAX_FAILURES)]
    if not known_device:
        scopes.insert(0, (_account_key(username), settings.MF_LOGIN_MAX_FAILURES))
    gates = {key: cache.get(f"{key}:gate") for key, _ in scopes}
    wait = max(int(until - now + 0.999) if until else 0 for until in gates.values())
    if wait > 0:
        return LoginAttempt(allowed=False, wait_seconds=wait)
    counted: list[tuple[str, int, int]] = []
    for key, free in scopes:
        failures = counter_add(f"{key}:failures", ttl=_memory_seconds())
        counted.append((key, failures, free))
        if failures <= free:
            continue
        if gates[key] is None:  # the tries that used up the free ones are still being checked
            return _refuse(counted, 1)
        if not cache.add(f"{key}:claim", now, _CLAIM_SECONDS):  # another try past the free ones is being checked
            return _refuse(counted, 1)
    return LoginAttempt(allowed=True, counted=tuple(counted))


def login_attempt_failed(*, attempt: LoginAttempt) -> None:
    """The password was wrong: where the free tries are used up, the next try waits a doubling delay."""
    now = time.time()
    for key, failures, free in attempt.counted:
        if failures >= free:
            delay = _delay(failures, free)
            cache.set(f"{key}:gate", now + delay, _memory_seconds() + settings.MF_LOGIN_DELAY_MAX_SECONDS)
        counter_delete(f"{key}:claim")


def login_attempt_succeeded(*, attempt: LoginAttempt, username: str) -> None:
    """The right password. The account's failures are forgotten when they counted for this try (only its owner gets
    here; a known device's log-in leaves someone else's guessing throttled); the address keeps its earlier failures
    but this try is not one of them."""
    account = _account_key(username)
    for key, _, _ in attempt.counted:
        if key == account:
            counter_delete(f"{key}:failures", f"{key}:gate", f"{key}:claim")
        else:
            counter_add(f"{key}:failures", -1, ttl=_memory_seconds())
            counter_delete(f"{key}:claim")


def known_device_accounts(*, cookie: str | None) -> set[str]:
    """The accounts this browser logged in to before, from its signed cookie (none if missing, forged or old)."""
    if not cookie:
        return set()
    try:
        names = signing.loads(cookie, salt=_KNOWN_DEVICE_SALT, max_age=settings.MF_LOGIN_KNOWN_DEVICE_DAYS * 86400)
    except signing.BadSignature:
        return set()
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def login_is_known_device(*, cookie: str | None, username: str) -> bool:
    return _account_key(username) in known_device_accounts(cookie=cookie)


def known_device_cookie_value(*, cookie: str | None, username: str) -> str:
    """The cookie to set after a successful log-in: this account added to the ones the browser already knew."""
    names = [name for name in known_device_accounts(cookie=cookie) if name != _account_key(username)]
    names = [*sorted(names)[-(_KNOWN_DEVICE_MAX_ACCOUNTS - 1) :], _account_key(username)]
    return signing.dumps(names, salt=_KNOWN_DEVICE_SALT)


def wait_in_words(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
