from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, permissions
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts.serializers import TokenObtainRequestSerializer, TokenObtainResponseSerializer
from accounts.services import api_token_create, login_failure_record, login_locked_seconds, login_success_record


class TokenObtainView(APIView):
    """Exchange a user name and password for a new API key (shown once)."""

    permission_classes = [permissions.AllowAny]
    authentication_classes: list = []
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"

    def get_authenticate_header(self, request):
        return "Token"  # a failed log-in is a 401, as for any other bad credential

    @extend_schema(request=TokenObtainRequestSerializer, responses={201: TokenObtainResponseSerializer})
    def post(self, request):
        serializer = TokenObtainRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        username = serializer.validated_data["username"]
        ip = request.META.get("REMOTE_ADDR", "")
        wait = login_locked_seconds(username=username, ip=ip)
        if wait:
            raise exceptions.Throttled(wait=wait, detail="Too many failed log-in attempts.")
        user = authenticate(request, username=username, password=serializer.validated_data["password"])
        if user is None:
            login_failure_record(username=username, ip=ip)
            raise exceptions.AuthenticationFailed("That user name and password do not match.")
        login_success_record(username=username)
        token, key = api_token_create(user=user, name=serializer.validated_data["name"])
        return Response(TokenObtainResponseSerializer({"token": key, "name": token.name}).data, status=201)
