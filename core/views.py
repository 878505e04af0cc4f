from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from core.selectors import health_report


def home(request):
    return render(request, "core/home.html")


@never_cache
def healthz(request):
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
