"""Pages of "evaluate again": ask from a finished job's page, follow the progress, read the per-row table. Thin."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from datanets.selectors import version_list_usable
from modelfactory import selectors, services
from modelfactory.models import FineTuneJob, ModelEvaluation

MAX_CHOICES = 200


def evaluations_context(*, user, job: FineTuneJob, model_version) -> dict:
    """What the job page's "Evaluate again" section needs (empty before the job has made a model)."""
    if model_version is None or job.owner_id != user.pk:  # staff may see the job; only its owner evaluates
        return {}
    choices = version_list_usable(user=user).exclude(datanet__kind="text").filter(row_count__gt=0)[:MAX_CHOICES]
    return {
        "evaluations": list(selectors.evaluations_of_job(user=user, job_id=job.pk)),
        "test_set_choices": choices,
    }


@login_required
@require_POST
def job_evaluate(request, job_id: int):
    version = request.POST.get("test_version", "")
    try:
        evaluation = services.evaluation_request(
            user=request.user,
            job_id=job_id,
            version_ids=[int(version)] if version.isdigit() else [],
            upload=request.FILES.get("file"),
        )
    except services.EvaluationRefused as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        messages.error(request, str(exc))
        return redirect(reverse("modelfactory:job", args=[job_id]) + "#evaluate-again")
    return redirect("modelfactory:job_evaluation", job_id=job_id, evaluation_id=evaluation.pk)


def _evaluation_or_404(request, job_id: int, evaluation_id: int) -> ModelEvaluation:
    try:
        evaluation = selectors.evaluation_get_for(user=request.user, evaluation_id=evaluation_id)
    except ModelEvaluation.DoesNotExist:
        raise Http404("No such evaluation.") from None
    if evaluation.version.job_id != job_id:
        raise Http404("No such evaluation.")
    return evaluation


@login_required
def job_evaluation(request, job_id: int, evaluation_id: int):
    """An evaluation's page: progress while it runs, then the totals and every row, expected vs base vs tuned."""
    evaluation = _evaluation_or_404(request, job_id, evaluation_id)
    context = {"evaluation": evaluation, "job": evaluation.version.job, "model": evaluation.version.model}
    if request.htmx and request.GET.get("partial") == "progress":
        response = render(request, "modelfactory/evaluation.html#progress", context)
        if not evaluation.is_active:
            stop = HttpResponseStopPolling(response.content)
            stop["HX-Refresh"] = "true"  # one last full render: the totals and the table
            return stop
        return response
    return render(request, "modelfactory/evaluation.html", context)


@login_required
@require_POST
def job_evaluation_cancel(request, job_id: int, evaluation_id: int):
    evaluation = _evaluation_or_404(request, job_id, evaluation_id)
    try:
        services.evaluation_cancel(user=request.user, evaluation_id=evaluation.pk)
    except services.EvaluationRefused as exc:
        messages.error(request, str(exc))
    return redirect("modelfactory:job_evaluation", job_id=job_id, evaluation_id=evaluation.pk)
