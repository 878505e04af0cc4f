"""Sign out everywhere: every API key revoked and every other session ended, at once."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiToken


def user_sign_out_everywhere(*, user) -> int:
    """Revokes all the user's API keys and ends all its sessions (the caller keeps its own with
    update_session_auth_hash). Also run on a password change. Returns how many keys were revoked."""
    with transaction.atomic(durable=True):
        revoked = ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
        get_user_model().objects.filter(pk=user.pk).update(session_epoch=F("session_epoch") + 1)
    user.refresh_from_db(fields=["session_epoch"])
    return revoked
