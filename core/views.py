from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from core.selectors import health_report


def home(request):
    """Anonymous visitors: what the product does. Signed-in users: their dashboard (wallet, datanets, uploads,
    training jobs, models), a few indexed queries whatever the size of their history."""
    if not request.user.is_authenticated:
        return render(request, "core/home.html")
    from datanets.selectors import dashboard_datanets, dashboard_uploads
    from ledger.selectors import wallet_summary
    from modelfactory.selectors import dashboard_jobs, dashboard_models

    user = request.user
    context = {
        "wallet": wallet_summary(user=user),
        "datanets": dashboard_datanets(user=user),
        "uploads": dashboard_uploads(user=user),
        "jobs": dashboard_jobs(user=user),
        "models": dashboard_models(user=user),
    }
    return render(request, "core/dashboard.html", context)


@never_cache
def healthz(request):
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
