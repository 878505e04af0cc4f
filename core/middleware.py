import html
import logging
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.core.handlers.wsgi import LimitedStream
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import resolve_url
from django.template.defaultfilters import filesizeformat
from django.utils.cache import patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect

from core.api import error_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")
REST_PREFIX = "/api/v1/"  # operations documented in /api/schema/ (their query parameters are checked against it)
# Room for a form's other fields and the multipart framing around an upload of MF_UPLOAD_MAX_BYTES.
FORM_ALLOWANCE_BYTES = 1024 * 1024


class RequestSizeLimitMiddleware:
    """Refuses a request whose declared body (Content-Length) is larger than any upload may be, before anything
    reads it: 413, the body never read. An upload whose body stays within this but whose file passes the limit is
    stopped while it streams in (datanets/uploads.py); Django's own limit (DATA_UPLOAD_MAX_MEMORY_SIZE) covers
    everything else that is read into memory. Without this an over-limit upload was read to its end (1.2 GB)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > settings.MF_UPLOAD_MAX_BYTES + FORM_ALLOWANCE_BYTES:
            return request_too_large(request)
        return self.get_response(request)


TOO_LARGE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Too large · ModelFactory</title></head>
<body><h1>Too large</h1><p>{message}</p><p><a href="{back}">Back</a></p></body></html>
"""


def request_too_large(request) -> HttpResponse:
    limit = filesizeformat(settings.MF_UPLOAD_MAX_BYTES)
    message = f"The upload is larger than the limit of {limit}, so it was not read. Split it into smaller files."
    if request.path.startswith(API_PREFIXES):
        response = error_response("file_too_large", message, 413)
    else:
        page = TOO_LARGE_PAGE.format(message=html.escape(message), back=html.escape(request.path))
        response = HttpResponse(page, status=413, content_type="text/html; charset=utf-8")
    # Django's development server (`make run`) would read what is left of the body into memory when the response
    # ends: tell its stream nothing is left. The answer has no Content-Length (this runs before CommonMiddleware),
    # so that server closes the connection after it, and the unread body is never taken for a next request (a WSGI
    # application may not send `Connection: close` itself). Other servers discard the rest or close.
    stream = request.META.get("wsgi.input")
    if isinstance(stream, LimitedStream):
        stream.limit = 0
    return response


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

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not request.path.startswith(REST_PREFIX) or not request.GET:
            return None
        from core.query_params import query_errors

        errors = query_errors(request.path, request.method, list(request.GET), dict(request.GET.lists()))
        if errors:
            return error_response("invalid", "Some values are not valid: " + ", ".join(sorted(errors)), 400, errors)
        return None

    def process_exception(self, request, exception):
        if isinstance(exception, OperationalError | InterfaceError):
            return database_unavailable(request, exception)
        if not request.path.startswith(API_PREFIXES):
            return None
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("server_error", "Something went wrong on our side; it has been logged.", 500)


DATABASE_DOWN_MESSAGE = "The database cannot be reached right now; please try again in a minute."
DATABASE_DOWN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Temporarily unavailable · ModelFactory</title></head>
<body><h1>Temporarily unavailable</h1><p>{message}</p><p><a href="/">Home</a></p></body></html>
"""


def database_unavailable(request, exception) -> HttpResponse:
    """A database that is down or restarting (connection refused or dropped): 503 with Retry-After, in the API's
    error shape or as a plain page that needs no database (no template context, no user), never a traceback.
    Django closes the broken connection at the end of the request (CONN_HEALTH_CHECKS), so the next request
    reconnects by itself once the database is back."""
    logger.error("database unavailable on %s %s: %s", request.method, request.path, exception)
    if request.path.startswith(API_PREFIXES):
        response = error_response("database_unavailable", DATABASE_DOWN_MESSAGE, 503)
    else:
        response = HttpResponse(
            DATABASE_DOWN_PAGE.format(message=DATABASE_DOWN_MESSAGE),
            status=503,
            content_type="text/html; charset=utf-8",
        )
    response["Retry-After"] = "30"
    return response


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


class HtmxLoginRedirectMiddleware:
    """A partial (htmx) request that needs a log-in (a session that ended, a log-out in another tab) gets the whole
    page sent to the log-in page (HX-Redirect), coming back to the page the person was on, instead of the log-in
    page drawn inside the part of the page that asked."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not getattr(request, "htmx", False) or response.status_code not in (301, 302):
            return response
        login = resolve_url(settings.LOGIN_URL)
        location = urlsplit(response.get("Location", ""))
        if location.path != login:
            return response
        current = urlsplit(request.htmx.current_url or "")
        back = current.path + (f"?{current.query}" if current.query else "") if current.path else request.path
        redirect = HttpResponseClientRedirect(f"{login}?{urlencode({REDIRECT_FIELD_NAME: back})}")
        patch_vary_headers(redirect, ("HX-Request",))
        return redirect
