from django.db import DatabaseError
from django.http import JsonResponse
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
