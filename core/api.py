"""API plumbing shared by every app: the one error shape, pagination, and JSON answers for unknown routes."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.template.defaultfilters import filesizeformat
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils import html
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


def flat_field_errors(data, prefix: str = "") -> dict[str, list[str]]:
    """Validation errors in one shape whatever the nesting: {"field": ["message", ...]}, with nested fields named by
    their path ("messages.0.role", "datanet_versions.1")."""
    if isinstance(data, dict):
        flat: dict[str, list[str]] = {}
        for key, value in data.items():
            flat.update(flat_field_errors(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(data, list) and any(isinstance(item, dict | list) for item in data):
        flat = {}
        for index, value in enumerate(data):
            flat.update(flat_field_errors(value, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    messages = [str(item) for item in data] if isinstance(data, list) else [str(data)]
    return {prefix or "non_field_errors": messages} if messages else {}


def api_exception_handler(exc, context):
    """DRF exception handler: every error becomes {"error": {"code", "message", "details"}}."""
    exc = known_exception(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: ApiErrorMiddleware turns it into a JSON 500
    if isinstance(exc, exceptions.ValidationError):
        details = flat_field_errors(response.data)
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


class StrictPageSizeMixin:
    """`page_size` must be a whole number from 1 to `max_page_size`: anything else (`null`, `-1`, `ten`, `1000`) is
    a 400 naming the parameter, where DRF silently used its default."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"Enter a whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)


class Pagination(StrictPageSizeMixin, PageNumberPagination):
    pass


class StrictBooleanField(serializers.BooleanField):
    """true or false. In a JSON body only JSON's own true/false: DRF's BooleanField also took "1", "t", "yes" or 0,
    so a wrong type was silently read as a choice. In a form (multipart) request every value is text, so the texts
    a form sends ("true", "false", "on", ...) are taken there."""

    default_error_messages = {"invalid": "Must be true or false (JSON booleans), not {input!r}."}

    def get_value(self, dictionary):
        self._from_form = html.is_html_input(dictionary)
        return super().get_value(dictionary)

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        if getattr(self, "_from_form", False):
            return super().to_internal_value(data)
        self.fail("invalid", input=data)


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


IDEMPOTENCY_KEY_MAX = 64

IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description=f"Up to {IDEMPOTENCY_KEY_MAX} characters of your choice. Sending the same key with the same request "
    "again answers what the first request answered (same status, same object) and creates nothing more; the same "
    "key with a different request is a 409.",
)


class IdempotencyConflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "idempotency_conflict"

    def __init__(self, key: str):
        super().__init__(
            f"The Idempotency-Key “{key}” was already used with a different request; send a new key, or the same "
            "request to get the first answer back."
        )


def idempotency_key(request, given: str | None = None) -> str | None:
    """The caller's key (`given`, e.g. from the body, wins over the Idempotency-Key header), or None; a key that is
    too long or not printable is a 400 naming the header."""
    key = given or request.headers.get("Idempotency-Key") or None
    if key is not None and (len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable()):
        raise exceptions.ValidationError({"Idempotency-Key": [f"Use 1 to {IDEMPOTENCY_KEY_MAX} printable characters."]})
    return key


IDEMPOTENCY_CONFLICT_RESPONSE = {
    409: OpenApiResponse(
        ErrorSerializer,
        description="The Idempotency-Key was used before with a different request; nothing was created.",
    )
}


def created(request, data, *, location: str) -> Response:
    """201 with the new object and a `Location` header naming where to read it again."""
    return Response(data, status=status.HTTP_201_CREATED, headers={"Location": request.build_absolute_uri(location)})


@csrf_exempt  # it changes nothing; without this a POST to an unknown API path got Django's HTML CSRF page
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    return error_response("not_found", f"No API endpoint at {request.path}.", status.HTTP_404_NOT_FOUND)
