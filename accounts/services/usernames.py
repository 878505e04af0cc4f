"""User names that look like another one are refused (common.confusables)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from common.confusables import username_skeleton

LOOKALIKE_MESSAGE = (
    "That user name looks too much like an existing one (capitals, digits that look like letters and letters from "
    "other alphabets count as the same). Choose another."
)


def username_check_not_lookalike(*, username: str) -> None:
    """Raises ValidationError (code "lookalike") when an existing user's name looks the same as `username`."""
    if get_user_model().objects.filter(username_skeleton=username_skeleton(username)).exists():
        raise ValidationError(LOOKALIKE_MESSAGE, code="lookalike")
