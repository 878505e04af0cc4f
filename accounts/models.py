from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.crypto import salted_hmac

from common.confusables import username_skeleton


class User(AbstractUser):
    """Our own user model from day one, so profile fields can be added without a painful swap later."""

    # What the user name looks like (common.confusables): unique, so no one signs up as a look-alike of another
    # ("аlice" in Cyrillic next to "alice"). Null only for names that already looked alike before it existed.
    username_skeleton = models.TextField(null=True, blank=True, editable=False)
    # Raised by "sign out everywhere": every session signed with an older value stops working.
    session_epoch = models.PositiveIntegerField(default=0, editable=False)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        constraints = [models.UniqueConstraint(fields=["username_skeleton"], name="accounts_user_skeleton_unique")]

    def save(self, *args, **kwargs):
        self.username_skeleton = username_skeleton(self.username)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "username" in update_fields:
            kwargs["update_fields"] = {*update_fields, "username_skeleton"}
        super().save(*args, **kwargs)

    def _get_session_auth_hash(self, secret=None):
        """A session stays logged in while this matches the one it was signed with: a new password or a higher
        session_epoch ends every other session. Epoch 0 gives Django's own hash (sessions from before it stay)."""
        if not self.session_epoch:
            return super()._get_session_auth_hash(secret=secret)
        key_salt = "accounts.User.session_auth_hash"
        value = f"{self.password}:{self.session_epoch}"
        return salted_hmac(key_salt, value, secret=secret, algorithm="sha256").hexdigest()


class ApiToken(models.Model):
    """A named API key. Only a SHA-256 of the key is stored; the key itself is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
