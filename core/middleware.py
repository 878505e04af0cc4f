import logging

from django.conf import settings

from core.api import error_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")


class ApiErrorMiddleware:
    """On API paths an unexpected exception is a JSON 500, never Django's HTML debug page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
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
