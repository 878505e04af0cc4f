"""Pages: the fine-tuning wizard, job list and live job page, trained models. Thin: parse, call, render."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from common.jsonlimits import JsonTooDeep, loads_bounded
from core.api import error_body
from datanets.selectors import version_list_usable
from ledger.calc.money import format_credits_exact
from modelfactory import comparison, evaluation_views, export_views, selectors, services, wizard_steps
from modelfactory.forms import PresetForm, PublishForm
from modelfactory.models import FineTuneJob, Inference, ServingPolicy, TrainedModel
from modelfactory.openai_api import relay
from modelfactory.training.presets import HYPERPARAMETERS, PRESETS, validate_hyperparameters

SESSION_KEY = "finetune_wizard"


def _new_state() -> dict:
    default = selectors.base_model_default()
    return wizard_steps.new_state(base_model=default.slug if default else "")


def _lookups(user) -> wizard_steps.Lookups:
    return wizard_steps.Lookups(
        base_model_exists=lambda slug: selectors.base_model_list().filter(slug=slug).exists(),
        versions_problem=lambda ids: selectors.versions_usable_by(user=user, version_ids=ids)[1],
        capabilities=selectors.training_capabilities,
    )


def _render_wizard(request, state: dict, context: dict | None = None, status: int = 200):
    context = {**(context or {}), "state": state, "steps": wizard_steps.STEPS}
    step = state["step"]
    base = selectors.base_model_list().filter(slug=state["base_model"]).first()
    versions, version_error = selectors.versions_usable_by(user=request.user, version_ids=state["versions"])
    context.update(base=base, chosen_versions=versions)
    if step == wizard_steps.BASE_MODEL:
        context["base_models"] = selectors.base_model_list()
    elif step == wizard_steps.DATA:
        context["versions"] = version_list_usable(user=request.user)
    elif step == wizard_steps.EXAMPLES and base and versions:
        hp, _ = validate_hyperparameters(state["advanced"], preset=state["preset"])
        context["preview"] = selectors.wizard_preview(base=base, versions=versions, max_length=int(hp["max_length"]))
    elif step == wizard_steps.SETTINGS:
        context.setdefault(
            "form",
            PresetForm(
                capabilities=selectors.training_capabilities(),
                initial={
                    "preset": state["preset"],
                    "name": state["name"],
                    **{f"hp_{k}": v for k, v in state["advanced"].items()},
                },
            ),
        )
        context["presets"] = PRESETS
        if base and versions:
            context["preset_estimates"] = selectors.wizard_preset_estimates(base=base, versions=versions)
    elif step == wizard_steps.REVIEW and base and versions:
        hp, errors = validate_hyperparameters(state["advanced"], preset=state["preset"])
        context["hyperparameters"] = [(HYPERPARAMETERS[k].label, v) for k, v in hp.items() if k in HYPERPARAMETERS]
        problem = selectors.quantization_problem(hp["quantization"]) if not errors else None
        if problem:
            context.setdefault("error", problem)
        elif not errors:
            context["estimate"] = selectors.wizard_estimate(base=base, versions=versions, hyperparameters=hp)
    # A history restore (Back to an address htmx has no snapshot of: the wizard keeps none) wants the whole page.
    partial = request.htmx and not request.htmx.history_restore_request
    template = "modelfactory/wizard.html#wizard" if partial else "modelfactory/wizard.html"
    return render(request, template, context, status=status)


def _wizard_step_url(step: int) -> str:
    return f"{reverse('modelfactory:wizard')}?step={step}"


def _step_number(value) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


@login_required
def wizard(request):
    """The fine-tuning wizard (steps and their checks: modelfactory.wizard_steps). Each step has its own address
    (?step=N), so the browser's Back and Forward and a reload keep the step; a step not reached yet shows the
    furthest one reached. "?restart=1" asks before forgetting a wizard in progress; POST action=restart forgets it.
    POST submits the step the page showed (its `step` field), whatever step the session was on."""
    state = request.session.get(SESSION_KEY) or _new_state()
    if request.method == "GET":
        if request.GET.get("restart"):
            if wizard_steps.has_progress(state):
                reached = {"number": state["reached"], "label": wizard_steps.STEPS[state["reached"] - 1]}
                context = {"state": state, "reached": reached, "total": len(wizard_steps.STEPS)}
                return render(request, "modelfactory/wizard_restart.html", context)
            state = _new_state()
        step = _step_number(request.GET.get("step"))
        if step is None:  # every address names its step: the history entry of this visit comes back to it
            request.session[SESSION_KEY] = state
            return redirect(_wizard_step_url(state["step"]))
        state = wizard_steps.go_to(state, step)
        request.session[SESSION_KEY] = state
        return _render_wizard(request, state)

    if request.POST.get("action") == "restart":
        request.session[SESSION_KEY] = _new_state()
        messages.info(request, "Started a new fine-tune.")
        return redirect(_wizard_step_url(wizard_steps.BASE_MODEL))
    shown = _step_number(request.POST.get("step"))
    if shown is not None:  # the page may be an older one the browser went back to
        state = wizard_steps.go_to(state, shown)
    submission = wizard_steps.Submission(
        action=request.POST.get("action", "next"),
        base_model=request.POST.get("base_model", ""),
        versions=request.POST.getlist("versions"),
        settings=request.POST,
    )
    outcome = wizard_steps.submit(state, submission, lookups=_lookups(request.user))
    if outcome.launch:
        return _launch(request, outcome.state)
    request.session[SESSION_KEY] = outcome.state
    context = {} if outcome.form is None else {"form": outcome.form}
    if outcome.error:
        context["error"] = outcome.error
        response = _render_wizard(request, outcome.state, context, status=422 if not request.htmx else 200)
    else:
        response = _render_wizard(request, outcome.state, context)
    response["HX-Push-Url"] = _wizard_step_url(outcome.state["step"])
    return response


def _launch(request, state: dict):
    try:
        job, created = services.finetune_launch(
            user=request.user,
            base_model_slug=state["base_model"],
            version_ids=state["versions"],
            preset=state["preset"],
            hyperparameters=state["advanced"],
            name=state["name"],
            idempotency_key=state["key"],
        )
    except services.LaunchError as exc:
        return _render_wizard(request, state, {"launch_errors": exc.errors})
    request.session.pop(SESSION_KEY, None)
    if job.status == FineTuneJob.Status.FAILED:
        messages.error(request, job.message)
    elif created:
        messages.success(request, "Training job launched. You can close this page: it keeps running.")
    url = reverse("modelfactory:job", args=[job.pk])
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


@login_required
def train(request):
    jobs = selectors.job_list_for(user=request.user)
    return render(request, "modelfactory/train.html", {"jobs": jobs})


def _job_context(request, job: FineTuneJob) -> dict:
    model_version = getattr(job, "model_version", None) if job.status == FineTuneJob.Status.SUCCEEDED else None
    return {
        **evaluation_views.evaluations_context(user=request.user, job=job, model_version=model_version),
        "job": job,
        "queue_position": selectors.job_queue_position(job=job),
        "queue_wait": selectors.job_queue_wait_seconds(job=job) if job.status == FineTuneJob.Status.QUEUED else None,
        "peak_memory": None if job.is_active else selectors.job_peak_memory_bytes(job=job),
        "latest": selectors.job_latest_train_event(job=job),
        "chart": selectors.job_chart_points(job=job),
        "model_version": model_version,
        "worker_silent": job.status == FineTuneJob.Status.RUNNING and job.silent_for(settings.MF_JOB_STALE_SECONDS),
    }


@login_required
def job_detail(request, job_id: int):
    try:
        job = selectors.job_get_for(user=request.user, job_id=job_id)
    except FineTuneJob.DoesNotExist:
        raise Http404("No such training job.") from None
    context = _job_context(request, job)
    if request.htmx and request.GET.get("partial") == "progress":
        response = render(request, "modelfactory/job_detail.html#progress", context)
        if not job.is_active:
            stop = HttpResponseStopPolling(response.content)
            stop["HX-Refresh"] = "true"  # one last full render: eval results, samples, download
            return stop
        return response
    return render(request, "modelfactory/job_detail.html", context)


@login_required
def jobs_compare(request):
    """Two or more of the user's jobs on one base model (?jobs=1&jobs=2): curves, differing settings, answers."""
    ids = [int(v) for v in request.GET.getlist("jobs") if v.isdigit()]
    try:
        context = {"comparison": comparison.jobs_compare(user=request.user, job_ids=ids)}
    except comparison.CompareError as exc:
        context = {"error": str(exc), "jobs": selectors.job_list_for(user=request.user)}
    return render(request, "modelfactory/compare.html", context, status=200 if "comparison" in context else 400)


@login_required
def job_chart(request, job_id: int):
    try:
        job = selectors.job_get_for(user=request.user, job_id=job_id)
    except FineTuneJob.DoesNotExist:
        raise Http404("No such training job.") from None
    after = int(request.GET.get("after", "0") or 0)
    return JsonResponse({**selectors.job_chart_points(job=job, after_id=after), "active": job.is_active})


@login_required
@require_POST
def job_control(request, job_id: int):
    try:
        job = services.finetune_control(user=request.user, job_id=job_id, mode=request.POST.get("mode", ""))
    except FineTuneJob.DoesNotExist:
        raise Http404("No such training job.") from None
    except services.JobStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, job.message)
    return redirect("modelfactory:job", job_id=job_id)


def models_list(request):
    models = selectors.trained_model_list(user=request.user)
    return render(request, "modelfactory/models.html", {"models": models})


def _model_or_404(request, slug: str) -> TrainedModel:
    model = selectors.trained_models_visible(user=request.user).filter(slug=slug).first()
    if model is None:
        raise Http404("No such model.")
    return model


def model_detail(request, slug: str):
    model = _model_or_404(request, slug)
    version = model.latest_version
    price_credits = format_credits_exact(model.price_per_1k_tokens) if model.price_per_1k_tokens else "0.002"
    card = selectors.model_card_for(user=request.user, version=version) if version else ""
    context = {"model": model, "version": version, "model_card": card, "price_credits": price_credits}
    context["lineage"] = selectors.model_lineage_for(user=request.user, model=model)
    if model.owner_id == request.user.pk and version:
        context["train_again_versions"] = version_list_usable(user=request.user)
        chosen = set(model.retrieval_versions.values_list("pk", flat=True)) or set(
            version.job.datanet_versions.values_list("pk", flat=True)
        )
        context["retrieval_choices"] = [(v, v.pk in chosen) for v in context["train_again_versions"]]
    context.update(export_views.exports_context(user=request.user, model=model, version=version))
    if request.htmx and request.GET.get("partial") == "exports":
        response = render(request, "modelfactory/model_detail.html#exports", context)
        return response if context.get("exports_active") else HttpResponseStopPolling(response.content)
    return render(request, "modelfactory/model_detail.html", context)


@login_required
@require_POST
def model_train_again(request, slug: str):
    """Launches the model's next version: training continues from its adapter on the chosen datanet versions."""
    model = _model_or_404(request, slug)
    version_ids = sorted({int(v) for v in request.POST.getlist("versions") if v.isdigit()})
    latest = model.latest_version
    # the same choices from the same version are the same request: a double click launches one job
    key = f"again-{latest.pk if latest else 0}-" + "-".join(map(str, version_ids))
    try:
        job, _ = services.finetune_continue(
            user=request.user, model_slug=model.slug, version_ids=version_ids, idempotency_key=key[:64]
        )
    except services.LaunchError as exc:
        messages.error(request, " ".join(exc.errors.values()))
        return redirect("modelfactory:model", slug=model.slug)
    except services.IdempotencyConflict:
        messages.error(request, "This form was already sent with other choices: reload the page and try again.")
        return redirect("modelfactory:model", slug=model.slug)
    return redirect("modelfactory:job", job_id=job.pk)


@login_required
def model_download(request, slug: str):
    model = _model_or_404(request, slug)
    if model.owner_id != request.user.pk and not request.user.is_staff:
        raise Http404("Only the owner can download the adapter.")
    version = model.latest_version
    if version is None or not Path(version.zip_path).exists():
        raise Http404("The adapter file is missing.")
    name = f"{model.slug}-v{version.number}-adapter.zip"
    return FileResponse(open(version.zip_path, "rb"), as_attachment=True, filename=name)  # noqa: SIM115


# --- Publishing and the playground ---------------------------------------------------------------------------------


@login_required
@require_POST
def model_publish(request, slug: str):
    form = PublishForm(request.POST, version_ids=version_list_usable(user=request.user).values_list("pk", flat=True))
    if not form.is_valid():
        price_errors = form.errors.get("price")
        other = "Choose who may use the model, and at most 10 rows per question from data you may use."
        messages.error(request, price_errors[0] if price_errors else other)
        return redirect("modelfactory:model", slug=slug)
    try:
        model = services.trained_model_publish(
            user=request.user,
            slug=slug,
            price_per_1k_tokens=form.cleaned_data["price"],
            visibility=form.cleaned_data["visibility"],
            allow_exports=form.cleaned_data["allow_exports"],
            retrieval=form.retrieval(),
        )
    except services.ServingRefused as exc:
        messages.error(request, exc.message)
        return redirect("modelfactory:model", slug=slug)
    messages.success(request, f"{model.name} is published. Anyone allowed can now chat with it and call it.")
    return redirect("modelfactory:model", slug=slug)


@login_required
@require_POST
def model_unpublish(request, slug: str):
    try:
        model = services.trained_model_unpublish(user=request.user, slug=slug)
    except services.ServingRefused as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{model.name} is no longer published; only you can use it now.")
    return redirect("modelfactory:model", slug=slug)


PLAYGROUND_ANSWER_TOKENS = 128  # a short first answer: quicker, cheaper; the field allows up to the policy's cap


@login_required
def playground(request, slug: str):
    try:
        model = services.model_servable(user=request.user, slug=slug)
    except services.ServingRefused as exc:
        raise Http404(exc.message) from None
    policy = ServingPolicy.current()
    context = {
        "model": model,
        "version": model.latest_version,
        "policy": policy,
        "answer_tokens": min(PLAYGROUND_ANSWER_TOKENS, policy.default_max_new_tokens, policy.max_new_tokens_cap),
    }
    return render(request, "modelfactory/playground.html", context)


def _json_error(exc) -> JsonResponse:
    response = JsonResponse(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if "retry_after_seconds" in exc.details:
        response["Retry-After"] = str(exc.details["retry_after_seconds"])
    return response


@login_required
@require_POST
def playground_start(request, slug: str):
    """JSON in ({messages, temperature, max_new_tokens, compare}); JSON out: where to stream the answer(s) from."""
    try:
        data = loads_bounded(request.body or b"{}")
    except JsonTooDeep as exc:
        return JsonResponse({"error": {"code": "nested_too_deeply", "message": str(exc)}}, status=400)
    except ValueError:
        data = None
    try:
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        temperature = float(data.get("temperature", 0.7))
        max_new_tokens = int(data.get("max_new_tokens", 128))
    except (ValueError, TypeError):
        return JsonResponse({"error": {"code": "invalid", "message": "The request could not be read."}}, status=400)
    try:
        inference = services.inference_start(
            user=request.user, slug=slug, source=Inference.Source.PLAYGROUND, messages=data.get("messages"),
            max_new_tokens=max_new_tokens, temperature=temperature, stream=True,
        )  # fmt: skip
        base_channel = None
        if data.get("compare"):
            base_channel = services.base_compare_start(
                user=request.user, slug=slug, messages=inference.messages,
                max_new_tokens=inference.parameters["max_new_tokens"], temperature=temperature,
            )  # fmt: skip
            request.session.setdefault("playground_channels", [])
            request.session["playground_channels"] = [*request.session["playground_channels"][-19:], base_channel]
    except services.ServingRefused as exc:
        return _json_error(exc)
    payload = {
        "inference_id": inference.pk,
        "stream_url": reverse("modelfactory:playground_stream", args=[slug, inference.pk]),
        "answer_url": reverse("modelfactory:playground_answer", args=[slug, inference.pk]),
        "stop_url": reverse("modelfactory:playground_stop", args=[slug, inference.pk]),
        "base_stream_url": reverse("modelfactory:playground_base", args=[slug, base_channel]) if base_channel else None,
    }
    return JsonResponse(payload)


def _sse_page(events):
    response = StreamingHttpResponse((f"data: {json.dumps(e)}\n\n" for e in events), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


def _own_inference(request, inference_id: int):
    inference = Inference.objects.select_related("model", "model_version").filter(pk=inference_id).first()
    if inference is None or inference.caller_id != request.user.pk:
        raise Http404("No such answer.")
    return inference


@login_required
def playground_stream(request, slug: str, inference_id: int):
    inference = _own_inference(request, inference_id)

    def on_done(event):
        yield {"type": "done", **event}

    events = relay(
        inference,
        on_delta=lambda text: {"type": "delta", "text": text},
        on_done=on_done,
        on_error=lambda event: event,
    )
    return _sse_page(events)


@login_required
@require_POST
def playground_stop(request, slug: str, inference_id: int):
    """The Stop button: JSON {shown: the text pieces the page showed}. The answer ends there and is billed for them."""
    inference = _own_inference(request, inference_id)
    try:
        data = loads_bounded(request.body or b"{}")
        shown = int(data["shown"]) if isinstance(data, dict) else None
    except (ValueError, TypeError, KeyError, JsonTooDeep):
        shown = None
    if shown is None or shown < 0:
        message = 'Say how many pieces of the answer the page showed: {"shown": 12}.'
        return JsonResponse({"error": {"code": "invalid", "message": message}}, status=400)
    services.inference_stream_stop(inference_id=inference.pk, shown=shown)
    return JsonResponse({"stopped": True})


@login_required
def playground_base(request, slug: str, channel: str):
    if channel not in request.session.get("playground_channels", []):
        raise Http404("No such answer.")
    return _sse_page(services.inference_events(channel=channel))


@login_required
def playground_answer(request, slug: str, inference_id: int):
    inference = _own_inference(request, inference_id)
    citations = services.citations_for(inference=inference, user=request.user)
    context = {"inference": inference, "citations": citations, "no_sources": services.NO_SOURCES}
    return render(request, "modelfactory/_answer_footer.html", context)
