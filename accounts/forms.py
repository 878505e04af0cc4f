from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from accounts.services import login_failure_record, login_locked_seconds, login_success_record


def client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


class ThrottledAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That user name and password do not match. Check both and try again.",
        "throttled": "Too many failed attempts. Wait %(minutes)s minute(s) before trying again.",
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request)
        wait = login_locked_seconds(username=username, ip=ip)
        if wait:
            raise forms.ValidationError(
                self.error_messages["throttled"], code="throttled", params={"minutes": max(1, round(wait / 60))}
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            login_failure_record(username=username, ip=ip)
            raise
        login_success_record(username=username)
        return cleaned


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="Used for account messages only.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ["username", "email"]


class ProfileForm(forms.ModelForm):
    class Meta:
        model = get_user_model()
        fields = ["first_name", "last_name", "email"]


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="My script", help_text="A name to recognise this key later.")
