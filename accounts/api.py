from django.contrib.auth import authenticate
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, permissions
from rest_framework.views import APIView

from accounts.serializers import TokenObtainRequestSerializer, TokenObtainResponseSerializer
from accounts.services import (
    KNOWN_DEVICE_COOKIE,
    api_token_create,
    login_attempt_begin,
    login_attempt_failed,
    login_attempt_succeeded,
    login_is_known_device,
)
from core.api import created, error_responses
from core.throttling import ScopedRateThrottle, client_address_of


class TokenObtainView(APIView):
    """Exchange a user name and password for a new API key (shown once)."""

    permission_classes = [permissions.AllowAny]
    authentication_classes: list = []
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"

    def get_authenticate_header(self, request):
        return "Token"  # a failed log-in is a 401, as for any other bad credential

    @extend_schema(
        request=TokenObtainRequestSerializer,
        responses={
            201: TokenObtainResponseSerializer,
            **error_responses(_401="That user name and password do not match."),
        },
    )
    def post(self, request):
        serializer = TokenObtainRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        username = serializer.validated_data["username"]
        attempt = login_attempt_begin(
            username=username,
            address=client_address_of(request),
            known_device=login_is_known_device(cookie=request.COOKIES.get(KNOWN_DEVICE_COOKIE), username=username),
        )
        if not attempt.allowed:
            raise exceptions.Throttled(wait=attempt.wait_seconds, detail="Too many failed log-in attempts.")
        user = authenticate(request, username=username, password=serializer.validated_data["password"])
        if user is None:
            login_attempt_failed(attempt=attempt)
            raise exceptions.AuthenticationFailed("That user name and password do not match.")
        login_attempt_succeeded(attempt=attempt, username=username)
        token, key = api_token_create(user=user, name=serializer.validated_data["name"])
        data = TokenObtainResponseSerializer({"token": key, "name": token.name}).data
        return created(request, data, location=reverse("accounts:tokens"))  # the page that lists and revokes it
