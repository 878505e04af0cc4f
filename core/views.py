from django.db import DatabaseError
from django.http import JsonResponse
from django.middleware import csrf
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from core.selectors import health_report


def _is_staff(request) -> bool:
    try:
        return request.user.is_staff
    except DatabaseError:  # the session or user row cannot be read while the database is down: answer as for anyone
        return False


@never_cache
def healthz(request):
    # Public (load balancers, uptime monitors): anyone sees which parts fail; only staff see why, since exception
    # text names hosts and user names.
    report = health_report(full=_is_staff(request))
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


CSRF_MESSAGE = (
    "Your session expired or this page was open for a long time, so what you sent could not be checked. "
    "Reload the page and try again."
)


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: the site's own page (the technical reason is logged by Django, not shown). An htmx
    request gets the message in a header too, for the error line app.js shows."""
    no_cookie = reason == csrf.REASON_NO_CSRF_COOKIE
    response = render(request, "403_csrf.html", {"message": CSRF_MESSAGE, "no_cookie": no_cookie}, status=403)
    response["X-Error-Message"] = CSRF_MESSAGE
    return response
