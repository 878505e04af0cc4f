"""API plumbing shared by every app: the one error shape, pagination, and JSON answers for unknown routes."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.template.defaultfilters import filesizeformat
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def error_response(code: str, message: str, status_code: int, details=None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status_code)


def _first_code(codes) -> str:
    if isinstance(codes, str):
        return codes
    if isinstance(codes, dict):
        for value in codes.values():
            return _first_code(value)
    if isinstance(codes, list) and codes:
        return _first_code(codes[0])
    return "error"


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def known_exception(exc):
    """The API exception for an error Django raises while reading a request: a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads JSON through request.body) is a 413 that says so, not a 500."""
    if isinstance(exc, RequestDataTooBig):
        limit = filesizeformat(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        return RequestTooLarge(f"The request body is larger than {limit}; nothing was read from it.")
    return exc


def api_exception_handler(exc, context):
    """DRF exception handler: every error becomes {"error": {"code", "message", "details"}}."""
    exc = known_exception(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: ApiErrorMiddleware turns it into a JSON 500
    if isinstance(exc, exceptions.ValidationError):
        details = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        code = "invalid"
        message = "Some values are not valid: " + ", ".join(sorted(details)) if details else "The request is not valid."
    else:
        detail = getattr(exc, "detail", None)
        message = str(detail) if detail is not None else str(exc)
        code = _first_code(exc.get_codes()) if isinstance(exc, exceptions.APIException) else "error"
        details = {}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            details = {"retry_after_seconds": int(exc.wait)}
        if isinstance(exc, exceptions.MethodNotAllowed):
            view = context.get("view")
            details = {"allowed": sorted(view.allowed_methods) if view is not None else []}
    response.data = error_body(code, message, details)
    return response


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    """The one error shape, for schema annotations of statuses a view adds (core/schema.py adds the common ones)."""

    error = ErrorBodySerializer()


def error_responses(**descriptions: str) -> dict[int, OpenApiResponse]:
    """`responses` entries for extend_schema: error_responses(_409="Already exists.") -> {409: ...}."""
    return {int(k.lstrip("_")): OpenApiResponse(ErrorSerializer, description=v) for k, v in descriptions.items()}


@csrf_exempt  # it changes nothing; without this a POST to an unknown API path got Django's HTML CSRF page
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    return error_response("not_found", f"No API endpoint at {request.path}.", status.HTTP_404_NOT_FOUND)
