"""The failed-log-in throttle holds back whoever guesses, not the account's owner (issue 17): separate counts per
account and per client address, a delay that doubles instead of a 15-minute lock-out, a browser that logged in to
the account before unaffected by the account's count. (Tries sent at once: tests/test_rate_limits.py.)"""

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from accounts.services import KNOWN_DEVICE_COOKIE
from common.net import client_address
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

ATTACKER = "203.0.113.66"
OWNER_HOME = "198.51.100.7"
LOGIN = reverse("accounts:login")
LIMITS = {"MF_LOGIN_MAX_FAILURES": 3, "MF_LOGIN_ADDRESS_MAX_FAILURES": 10, "MF_LOGIN_DELAY_SECONDS": 30}


def _try(client: Client, username: str, password: str, address: str) -> str:
    """Returns "in", "wrong" or the throttle message."""
    response = client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)
    if response.status_code == 302:
        client.post(reverse("accounts:logout"))
        return "in"
    page = response.content.decode()
    if "That user name and password do not match." in page:
        return "wrong"
    start = page.index("Too many failed attempts.")
    return page[start : page.index("</", start)].strip()


@override_settings(**LIMITS)
def test_each_failure_past_the_free_ones_doubles_the_wait(cast, login_clock):
    attacker = Client()
    assert [_try(attacker, "owner", "guess", ATTACKER) for _ in range(3)] == ["wrong"] * 3
    assert (
        _try(attacker, "owner", PASSWORD, ATTACKER) == "Too many failed attempts. Wait 30 seconds before trying again."
    )
    login_clock.now += 29
    assert _try(attacker, "owner", "guess", ATTACKER) == "Too many failed attempts. Wait 1 second before trying again."
    login_clock.now += 1
    assert _try(attacker, "owner", "guess", ATTACKER) == "wrong"
    assert (
        _try(attacker, "owner", "guess", ATTACKER) == "Too many failed attempts. Wait 60 seconds before trying again."
    )
    login_clock.now += 60
    assert _try(attacker, "owner", "guess", ATTACKER) == "wrong"
    assert _try(attacker, "owner", "guess", ATTACKER) == "Too many failed attempts. Wait 2 minutes before trying again."
    login_clock.now += 119
    assert _try(attacker, "owner", PASSWORD, ATTACKER) == "Too many failed attempts. Wait 1 second before trying again."
    login_clock.now += 1
    assert _try(attacker, "owner", PASSWORD, ATTACKER) == "in"  # after the wait, the right password works


@override_settings(**LIMITS, MF_LOGIN_DELAY_MAX_SECONDS=90)
def test_the_wait_stops_growing_at_its_maximum(cast, login_clock):
    attacker = Client()
    for wait in (0, 30, 60, 90, 90):
        login_clock.now += wait
        assert _try(attacker, "owner", "guess", ATTACKER) == "wrong"
    assert (
        _try(attacker, "owner", "guess", ATTACKER) == "Too many failed attempts. Wait 90 seconds before trying again."
    )


@override_settings(**LIMITS)
def test_the_owner_on_a_known_browser_logs_in_while_the_guesser_waits(cast, login_clock):
    owner = Client()
    assert _try(owner, "owner", PASSWORD, OWNER_HOME) == "in"
    assert KNOWN_DEVICE_COOKIE in owner.cookies
    attacker = Client()
    for _ in range(3):
        _try(attacker, "owner", "guess", ATTACKER)
    assert _try(attacker, "owner", "guess", ATTACKER).startswith("Too many failed attempts. Wait 30 seconds")
    # The owner's browser is not held back by the account's count ...
    assert _try(owner, "owner", PASSWORD, OWNER_HOME) == "in"
    # ... while a browser that never logged in as owner is, and the guesser still waits.
    assert _try(Client(), "owner", PASSWORD, OWNER_HOME).startswith("Too many failed attempts. Wait 30 seconds")
    assert _try(attacker, "owner", "guess", ATTACKER).startswith("Too many failed attempts. Wait 30 seconds")


@override_settings(**LIMITS)
def test_a_forged_known_device_cookie_does_not_help(cast, login_clock):
    attacker = Client()
    for _ in range(3):
        _try(attacker, "owner", "guess", ATTACKER)
    attacker.cookies[KNOWN_DEVICE_COOKIE] = '["login:account:owner"]'
    assert _try(attacker, "owner", "guess", ATTACKER).startswith("Too many failed attempts. Wait 30 seconds")


@override_settings(**LIMITS)
def test_failures_on_one_account_do_not_lock_out_another_user_at_the_same_address(cast, login_clock):
    office = Client()
    for _ in range(3):
        _try(office, "owner", "guess", ATTACKER)
    assert _try(office, "owner", "guess", ATTACKER).startswith("Too many failed attempts.")
    assert _try(Client(), "teammate", PASSWORD, ATTACKER) == "in"


@override_settings(**{**LIMITS, "MF_LOGIN_ADDRESS_MAX_FAILURES": 4})
def test_an_address_guessing_many_accounts_waits_but_other_addresses_do_not(cast, login_clock):
    attacker = Client()
    for name in ("owner", "teammate", "outsider", "staff"):
        assert _try(attacker, name, "guess", ATTACKER) == "wrong"
    assert _try(attacker, "nobody", "guess", ATTACKER).startswith("Too many failed attempts. Wait 30 seconds")
    assert _try(Client(), "staff", PASSWORD, OWNER_HOME) == "in"


@override_settings(**{**LIMITS, "MF_LOGIN_ADDRESS_MAX_FAILURES": 2, "MF_TRUSTED_PROXY_COUNT": 1})
def test_behind_a_trusted_proxy_the_forwarded_client_address_is_counted(cast, login_clock):
    proxy = "10.0.0.1"

    def via_proxy(forwarded_for: str, username: str) -> str:
        response = Client().post(
            LOGIN, {"username": username, "password": "guess"}, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=forwarded_for
        )
        return "throttled" if "Too many failed attempts" in response.content.decode() else "wrong"

    # The attacker changes the part it writes itself; the proxy's entry (the rightmost) still names it.
    assert via_proxy(f"1.1.1.1, {ATTACKER}", "owner") == "wrong"
    assert via_proxy(f"2.2.2.2, {ATTACKER}", "teammate") == "wrong"
    assert via_proxy(f"3.3.3.3, {ATTACKER}", "outsider") == "throttled"
    # Another client behind the same proxy is someone else.
    assert via_proxy(OWNER_HOME, "staff") == "wrong"


def test_client_address_trusts_x_forwarded_for_only_behind_proxies():
    assert client_address(remote_addr="10.0.0.1", forwarded_for="6.6.6.6", trusted_proxies=0) == "10.0.0.1"
    assert client_address(remote_addr="10.0.0.1", forwarded_for="6.6.6.6, 7.7.7.7", trusted_proxies=1) == "7.7.7.7"
    assert client_address(remote_addr="10.0.0.1", forwarded_for="6.6.6.6, 7.7.7.7", trusted_proxies=2) == "6.6.6.6"
    assert client_address(remote_addr="10.0.0.1", forwarded_for="7.7.7.7", trusted_proxies=2) == "7.7.7.7"
    assert client_address(remote_addr="10.0.0.1", forwarded_for=None, trusted_proxies=1) == "10.0.0.1"
    assert client_address(remote_addr="10.0.0.1", forwarded_for=" , ", trusted_proxies=1) == "10.0.0.1"
