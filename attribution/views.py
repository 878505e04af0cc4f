from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from attribution import selectors
from attribution.models import Attribution
from attribution.reputation import contributor_reputations


@login_required
def index(request):
    """Your data's use, and the answers you asked or your models gave."""
    page = Paginator(selectors.attributions_visible(user=request.user), 25).get_page(request.GET.get("page"))
    return render(
        request,
        "attribution/index.html",
        {
            "summary": selectors.contributor_summary(user=request.user),
            "top_rows": selectors.top_earning_rows(user=request.user),
            "page": page,
            "reputations": contributor_reputations(user=request.user),
            "flag_hold_days": settings.MF_FLAGGED_HOLD_DAYS,
        },
    )


@login_required
def inference(request, inference_id: int):
    try:
        attribution = selectors.attribution_get_for(user=request.user, inference_id=inference_id)
    except Attribution.DoesNotExist:
        raise Http404("There is no attribution for this answer that you may see.") from None
    detail = selectors.attribution_detail(attribution=attribution, user=request.user)
    template = "attribution/inference.html#detail" if request.htmx else "attribution/inference.html"
    return render(request, template, {"attribution": attribution, "d": detail})


@login_required
def model(request, slug: str):
    from modelfactory.selectors import trained_models_visible

    trained = trained_models_visible(user=request.user).filter(slug=slug).first()
    if trained is None:
        raise Http404("No such model.")
    summary = selectors.model_summary(model=trained)
    return render(request, "attribution/model.html", {"model": trained, "s": summary})


@login_required
def datanet(request, slug: str):
    from datanets.models import Datanet
    from datanets.selectors import datanet_get_visible

    try:
        found = datanet_get_visible(user=request.user, slug=slug)
    except Datanet.DoesNotExist:
        raise Http404("No such datanet.") from None
    summary = selectors.datanet_summary(datanet=found, user=request.user)
    if summary["curator"]:
        from attribution.reputation import datanet_reputations

        summary["reputations"] = datanet_reputations(datanet=found)
        summary["findings"] = {f.contribution_id: f for f in found.findings.all()}
        summary["flag_hold_days"] = settings.MF_FLAGGED_HOLD_DAYS
    return render(request, "attribution/datanet.html", {"datanet": found, "s": summary})


@login_required
@require_POST
def contribution_decide(request, slug: str, contribution_id: int):
    """A curator confirms a flagged contribution harmful (or dismisses the flag), with a reason."""
    from attribution.services import FindingError, contribution_decide
    from datanets.models import Contribution, Datanet
    from datanets.selectors import datanet_get_visible

    try:
        found = datanet_get_visible(user=request.user, slug=slug)
        contribution = found.contributions.get(pk=contribution_id)
    except (Datanet.DoesNotExist, Contribution.DoesNotExist):
        raise Http404("No such contribution.") from None
    verdict = request.POST.get("verdict", "")
    try:
        contribution_decide(
            contribution=contribution, curator=request.user, verdict=verdict, reason=request.POST.get("reason", "")
        )
    except FindingError as exc:
        messages.error(request, exc.message)
    else:
        done = (
            "Confirmed harmful: its rows leave the next version, its pending earnings and bond go to the datanet."
            if verdict == "confirmed"
            else "Flag dismissed: its earnings follow the datanet's usual review period."
        )
        messages.success(request, f"Upload #{contribution.pk}: {done}")
    return redirect("attribution:datanet", slug=found.slug)
