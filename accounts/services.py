"""Account writes: sign-up, API tokens, and the failed-login throttle."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken
from ledger.services import grant_signup_credit

TOKEN_PREFIX = "mf_"  # noqa: S105 (a key prefix, not a secret)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@transaction.atomic
def user_signup(*, username: str, email: str, password: str):
    user = get_user_model().objects.create_user(username=username, email=email, password=password)
    # In the same transaction as the user: there is never a user without the welcome credit, nor a grant
    # for a sign-up that rolled back. (The grant is keyed by user id, so it can never be paid twice.)
    grant_signup_credit(user=user)
    return user


def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Returns the token row and the key, which is not stored and cannot be shown again."""
    name = name.strip() or "API key"
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100], prefix=key[:10], key_hash=hash_key(key))
    return token, key


def api_token_revoke(*, user, token_id: int) -> ApiToken:
    """Revokes one of the user's own tokens. Raises ApiToken.DoesNotExist for anyone else's."""
    token = ApiToken.objects.get(pk=token_id, user=user)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def api_token_authenticate(*, key: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_key(key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Avoid a write on every request: last_used_at is precise to the minute.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


# --- Failed-login throttle ---------------------------------------------------------------------------------------
# Counted per user name and per client address, so neither guessing one account from many addresses nor many
# accounts from one address gets more than MF_LOGIN_MAX_FAILURES tries per lockout window.


def _login_keys(username: str, ip: str) -> list[str]:
    return [f"login-fail:user:{username.lower()[:150]}", f"login-fail:ip:{ip}"]


def login_locked_seconds(*, username: str, ip: str) -> int:
    """Seconds until another attempt is allowed, 0 when not locked."""
    now = timezone.now().timestamp()
    waits = []
    for key in _login_keys(username, ip):
        entry = cache.get(key)
        if entry and entry["count"] >= settings.MF_LOGIN_MAX_FAILURES:
            waits.append(int(entry["first"] + settings.MF_LOGIN_LOCKOUT_SECONDS - now) + 1)
    return max([w for w in waits if w > 0], default=0)


def login_failure_record(*, username: str, ip: str) -> None:
    now = timezone.now().timestamp()
    for key in _login_keys(username, ip):
        entry = cache.get(key)
        if not entry or now - entry["first"] > settings.MF_LOGIN_LOCKOUT_SECONDS:
            entry = {"first": now, "count": 0}
        entry["count"] += 1
        cache.set(key, entry, settings.MF_LOGIN_LOCKOUT_SECONDS)


def login_success_record(*, username: str) -> None:
    cache.delete(_login_keys(username, "")[0])
