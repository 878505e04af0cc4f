import logging

from django.conf import settings
from django.http import HttpResponseBadRequest

from core.api import error_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")


class ApiErrorMiddleware:
    """On API paths an unexpected exception is a JSON 500, never Django's HTML debug page. Refuses NUL characters."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # PostgreSQL text cannot hold NUL: a NUL in the path or a query parameter would reach a lookup or a search
        # and fail there as a 500. Refused here for every page and endpoint (found by tests/test_schema_fuzz.py).
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, vs in request.GET.lists() for v in vs):
            message = "The address contains a NUL character, which is never valid here."
            if request.path.startswith(API_PREFIXES):
                return error_response("invalid", message, 400)
            return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIXES):
            return None
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("server_error", "Something went wrong on our side; it has been logged.", 500)


class ContentSecurityPolicyMiddleware:
    """Sends settings.MF_CONTENT_SECURITY_POLICY on every response that has none yet (Django 5.2 has no built-in CSP).

    Scripts and styles come only from our own origin: pages keep their JavaScript in static files, pass data with
    `json_script`, and htmx's injected indicator style is turned off in base.html (its CSS is in app.css)."""

    def __init__(self, get_response):
        self.get_response = get_response
        policy = settings.MF_CONTENT_SECURITY_POLICY
        self.header = "; ".join(f"{name} {' '.join(sources)}" for name, sources in policy.items())
        self.header_name = (
            "Content-Security-Policy-Report-Only" if settings.MF_CSP_REPORT_ONLY else "Content-Security-Policy"
        )

    def __call__(self, request):
        response = self.get_response(request)
        if self.header and self.header_name not in response:
            response[self.header_name] = self.header
        return response
