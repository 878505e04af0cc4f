from django.shortcuts import render

from accounts.views import NEW_ACCOUNT_SESSION_KEY
from datanets.selectors import dashboard_datanets, dashboard_uploads
from ledger.selectors import wallet_summary
from modelfactory.selectors import dashboard_jobs, dashboard_models


def home(request):
    """Anonymous visitors: what the product does. Signed-in users: their dashboard (wallet, datanets, uploads,
    training jobs, models), a few indexed queries whatever the size of their history. It lives in the project
    package because it reads every app; no app may import the others' dashboards."""
    if not request.user.is_authenticated:
        return render(request, "core/home.html")
    user = request.user
    context = {
        "wallet": wallet_summary(user=user),
        "datanets": dashboard_datanets(user=user),
        "uploads": dashboard_uploads(user=user),
        "jobs": dashboard_jobs(user=user),
        "models": dashboard_models(user=user),
        "new_account": request.session.get(NEW_ACCOUNT_SESSION_KEY, False),
    }
    return render(request, "core/dashboard.html", context)
