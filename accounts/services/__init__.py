"""Account writes: sign-up, API tokens, sign out everywhere, and the failed-log-in throttle."""

from accounts.services.login_throttle import (
    KNOWN_DEVICE_COOKIE,
    LoginAttempt,
    known_device_accounts,
    known_device_cookie_value,
    login_attempt_begin,
    login_attempt_failed,
    login_attempt_succeeded,
    login_is_known_device,
    wait_in_words,
)
from accounts.services.sessions import user_sign_out_everywhere
from accounts.services.signup import user_signup
from accounts.services.tokens import (
    TOKEN_PREFIX,
    api_token_authenticate,
    api_token_create,
    api_token_revoke,
    hash_key,
)
from accounts.services.usernames import LOOKALIKE_MESSAGE, username_check_not_lookalike

__all__ = [
    "KNOWN_DEVICE_COOKIE",
    "LOOKALIKE_MESSAGE",
    "TOKEN_PREFIX",
    "LoginAttempt",
    "api_token_authenticate",
    "api_token_create",
    "api_token_revoke",
    "hash_key",
    "known_device_accounts",
    "known_device_cookie_value",
    "login_attempt_begin",
    "login_attempt_failed",
    "login_attempt_succeeded",
    "login_is_known_device",
    "user_sign_out_everywhere",
    "user_signup",
    "username_check_not_lookalike",
    "wait_in_words",
]
