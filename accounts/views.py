from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST

from accounts.forms import ApiTokenForm, ProfileForm, SignupForm, ThrottledAuthenticationForm
from accounts.models import ApiToken
from accounts.services import (
    KNOWN_DEVICE_COOKIE,
    api_token_create,
    api_token_revoke,
    known_device_cookie_value,
    user_sign_out_everywhere,
    user_signup,
)

# Set in the session that signed up: its dashboard says "Your dashboard", not "Welcome back" under the welcome.
NEW_ACCOUNT_SESSION_KEY = "mf_new_account"


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        # This browser is now known for the account: others' failed guesses no longer hold it back.
        value = known_device_cookie_value(
            cookie=self.request.COOKIES.get(KNOWN_DEVICE_COOKIE), username=form.get_user().username
        )
        response.set_cookie(
            KNOWN_DEVICE_COOKIE,
            value,
            max_age=settings.MF_LOGIN_KNOWN_DEVICE_DAYS * 86400,
            httponly=True,
            secure=settings.SESSION_COOKIE_SECURE,
            samesite="Lax",
        )
        return response


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:profile")

    def form_valid(self, form):
        response = super().form_valid(form)
        # Whoever knew the old password may hold an API key or a session: both end with it.
        revoked = user_sign_out_everywhere(user=self.request.user)
        update_session_auth_hash(self.request, self.request.user)
        messages.success(self.request, _signed_out_message("Your password was changed.", revoked))
        return response


def _signed_out_message(first: str, revoked: int) -> str:
    keys = f"{revoked} API key{'s' if revoked != 1 else ''} revoked" if revoked else "no API keys to revoke"
    return f"{first} You were signed out everywhere else ({keys}); this browser stays signed in."


@login_required
@require_POST
def sign_out_everywhere(request):
    revoked = user_sign_out_everywhere(user=request.user)
    update_session_auth_hash(request, request.user)  # this browser stays signed in
    messages.success(request, _signed_out_message("Done.", revoked))
    return redirect("accounts:profile")


def signup(request):
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_signup(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
            )
        except ValidationError as error:  # a look-alike name signed up since the form checked
            form.add_error("username", error)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[NEW_ACCOUNT_SESSION_KEY] = True  # this session greets once: no "welcome back" in it
            messages.success(request, f"Welcome, {user.username}! Your account is ready.")
            return redirect("home")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def profile(request):
    form = ProfileForm(request.POST or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Your profile was saved.")
        return redirect("accounts:profile")
    return render(request, "accounts/profile.html", {"form": form})


@login_required
def tokens(request):
    form = ApiTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        token, key = api_token_create(user=request.user, name=form.cleaned_data["name"])
        messages.success(request, f"API key “{token.name}” created. Copy it now: it will not be shown again.")
        # Post/redirect/get: reloading the page must not create a second key. The key rides in the session once.
        request.session["new_api_key"] = key
        return redirect("accounts:tokens")
    context = {
        "form": form,
        "new_key": request.session.pop("new_api_key", None),
        "tokens": ApiToken.objects.filter(user=request.user),
    }
    return render(request, "accounts/tokens.html", context)


@login_required
@require_POST
def token_revoke(request, token_id: int):
    try:
        token = api_token_revoke(user=request.user, token_id=token_id)
    except ApiToken.DoesNotExist:
        messages.error(request, "That API key does not exist or is not yours.")
    else:
        messages.success(request, f"API key “{token.name}” revoked: it no longer works.")
    return redirect("accounts:tokens")
