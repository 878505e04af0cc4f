"""Pages of a model's exports: ask for a format, follow its progress, read how to use it, download it. Thin."""

from __future__ import annotations

from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from modelfactory import export_howto, selectors, services
from modelfactory.models import ModelExport


def exports_context(*, user, model, version) -> dict:
    """What the model page's "Take it home" section needs (empty when the user may not export)."""
    if version is None or not selectors.model_exportable_by(user=user, model=model):
        return {}
    made = selectors.exports_of_version(version=version)
    rows = [(value, label, made.get(value)) for value, label in ModelExport.Format.choices]
    return {"export_rows": rows, "exports_active": any(e.is_active for e in made.values())}


@login_required
@require_POST
def model_export_start(request, slug: str):
    try:
        export, _ = services.export_request(user=request.user, slug=slug, format=request.POST.get("format", ""))
    except services.ServingRefused as exc:
        if exc.status == 404:
            raise Http404(exc.message) from None
        messages.error(request, exc.message)
        return redirect("modelfactory:model", slug=slug)
    return redirect("modelfactory:export", slug=slug, export_id=export.pk)


def _export_or_404(request, slug: str, export_id: int) -> ModelExport:
    try:
        export = selectors.export_get_for(user=request.user, export_id=export_id)
    except ModelExport.DoesNotExist:
        raise Http404("No such export.") from None
    if export.version.model.slug != slug:
        raise Http404("No such export.")
    return export


def model_export(request, slug: str, export_id: int):
    """The export's page: progress while it is made, then the download, its SHA-256 and how to use it."""
    export = _export_or_404(request, slug, export_id)
    context = {"export": export, "model": export.version.model, "steps": export_howto.steps(export)}
    if request.htmx and request.GET.get("partial") == "progress":
        response = render(request, "modelfactory/export.html#progress", context)
        if not export.is_active:
            stop = HttpResponseStopPolling(response.content)
            stop["HX-Refresh"] = "true"
            return stop
        return response
    return render(request, "modelfactory/export.html", context)


def _ready_file(export: ModelExport) -> Path:
    path = Path(export.path) if export.path else None
    if export.status != ModelExport.Status.SUCCEEDED or path is None or not path.is_file():
        raise Http404("The file is not ready (or is no longer kept): ask for it again on the model's page.")
    return path


def model_export_download(request, slug: str, export_id: int):
    export = _export_or_404(request, slug, export_id)
    path = _ready_file(export)
    return FileResponse(path.open("rb"), as_attachment=True, filename=export.filename)


def model_export_modelfile(request, slug: str, export_id: int):
    """The Ollama Modelfile written next to a GGUF file."""
    export = _export_or_404(request, slug, export_id)
    modelfile = _ready_file(export).parent / "Modelfile"
    if not export.is_gguf or not modelfile.is_file():
        raise Http404("This export has no Modelfile.")
    response = HttpResponse(modelfile.read_text(encoding="utf-8"), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="Modelfile"'
    return response
