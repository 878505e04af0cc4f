from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from accounts.services import (
    KNOWN_DEVICE_COOKIE,
    login_attempt_begin,
    login_attempt_failed,
    login_attempt_succeeded,
    login_is_known_device,
    username_check_not_lookalike,
    wait_in_words,
)
from core.throttling import client_address_of


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That user name and password do not match. Check both and try again.",
        "throttled": "Too many failed attempts. Wait %(wait)s before trying again.",
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        if not username or not self.cleaned_data.get("password"):
            return super().clean()
        cookie = self.request.COOKIES.get(KNOWN_DEVICE_COOKIE) if self.request is not None else None
        attempt = login_attempt_begin(
            username=username,
            address=client_address_of(self.request) if self.request is not None else "",
            known_device=login_is_known_device(cookie=cookie, username=username),
        )
        if not attempt.allowed:
            raise forms.ValidationError(
                self.error_messages["throttled"], code="throttled", params={"wait": wait_in_words(attempt.wait_seconds)}
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            login_attempt_failed(attempt=attempt)
            raise
        login_attempt_succeeded(attempt=attempt, username=username)
        return cleaned


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="Used for account messages only.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ["username", "email"]

    def clean_username(self):
        username = super().clean_username()
        username_check_not_lookalike(username=username)
        return username


class ProfileForm(forms.ModelForm):
    class Meta:
        model = get_user_model()
        fields = ["first_name", "last_name", "email"]


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="My script", help_text="A name to recognise this key later.")
