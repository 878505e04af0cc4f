"""Sign-up: the user and the welcome credit, together."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from accounts.services.usernames import username_check_not_lookalike
from ledger.services import grant_signup_credit


@transaction.atomic
def user_signup(*, username: str, email: str, password: str):
    """Raises ValidationError (code "lookalike") for a name that looks like an existing user's; nothing is written."""
    username_check_not_lookalike(username=username)
    try:
        with transaction.atomic():
            user = get_user_model().objects.create_user(username=username, email=email, password=password)
    except IntegrityError:
        # A look-alike (or the same name) signed up between the check and the insert: the unique skeleton caught it.
        username_check_not_lookalike(username=username)
        raise
    # In the same transaction as the user: there is never a user without the welcome credit, nor a grant
    # for a sign-up that rolled back. (The grant is keyed by user id, so it can never be paid twice.)
    grant_signup_credit(user=user)
    return user
