import csv
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseStopPolling

from datanets import hooks, selectors, services
from datanets.export import export_columns, export_row
from datanets.forms import (
    ColumnMappingForm,
    DatanetForm,
    DatanetSettingsForm,
    PublishForm,
    ReasonForm,
    UploadForm,
    split_list,
)
from datanets.ingest.examples import example_jsonl
from datanets.ingest.screen import FLAG_KINDS
from datanets.models import Contribution, Datanet, Record, VersionRecord
from datanets.uploads import install_upload_limit

PAGE_SIZE = 25


def _datanet(request, slug: str) -> Datanet:
    try:
        return selectors.datanet_get_visible(user=request.user, slug=slug)
    except Datanet.DoesNotExist:
        raise Http404("No such datanet.") from None


def _contribution(request, pk: int) -> Contribution:
    try:
        return selectors.contribution_get_visible(user=request.user, contribution_id=pk)
    except Contribution.DoesNotExist:
        raise Http404("No such contribution.") from None


def _base(request, datanet: Datanet, tab: str) -> dict:
    return {
        "datanet": datanet,
        "tab": tab,
        "can_curate": selectors.datanet_can_curate(user=request.user, datanet=datanet),
        "can_contribute": selectors.datanet_can_contribute(user=request.user, datanet=datanet),
    }


@vary_on_headers("HX-Request")
def datanet_list(request):
    q, tag = request.GET.get("q", "").strip(), request.GET.get("tag", "").strip()
    page = Paginator(selectors.datanet_list_visible(user=request.user, q=q, tag=tag), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    context = {"page": page, "q": q, "tag": tag, "tags": selectors.tag_list()}
    template = "datanets/list.html#results" if request.htmx else "datanets/list.html"
    return render(request, template, context)


@login_required
def datanet_create(request):
    form = DatanetForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            datanet = services.datanet_create(
                owner=request.user,
                name=data["name"],
                slug=data["slug"] or None,
                kind=data["kind"],
                summary=data["summary"],
                description=data["description"],
                tags=split_list(data["tags"]),
                licence=data["licence"],
                visibility=data["visibility"],
                policy=data["policy"],
            )
        except services.DatanetError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Datanet “{datanet.name}” created. Upload the first rows.")
            return redirect("datanets:detail", slug=datanet.slug)
    return render(request, "datanets/create.html", {"form": form})


@vary_on_headers("HX-Request")
def datanet_detail(request, slug):
    datanet = _datanet(request, slug)
    q = request.GET.get("q", "").strip()
    paginator = Paginator(selectors.record_list(datanet=datanet, q=q), PAGE_SIZE)
    stats = None
    if not request.htmx:
        stats = selectors.datanet_stats(datanet=datanet)
        if not q:  # the stats counted the accepted rows already: no second COUNT over them for the pages
            paginator.count = stats["rows"]
    page = paginator.get_page(request.GET.get("page"))
    context = {**_base(request, datanet, "rows"), "page": page, "q": q}
    if request.htmx:
        return render(request, "datanets/detail.html#rows", context)
    context["stats"] = stats
    context["latest"] = selectors.version_list(datanet=datanet).first()
    return render(request, "datanets/detail.html", context)


@login_required
def datanet_settings(request, slug):
    datanet = _datanet(request, slug)
    if not selectors.datanet_can_curate(user=request.user, datanet=datanet):
        raise Http404("No such datanet.")
    initial = {
        "name": datanet.name,
        "summary": datanet.summary,
        "description": datanet.description,
        "tags": ", ".join(t.name for t in datanet.tags.all()),
        "licence": datanet.licence,
        "visibility": datanet.visibility,
        "policy": datanet.policy,
        "curators": ", ".join(u.username for u in datanet.curators.all()),
        "holding_days": datanet.holding_days,
        "bond_credits": Decimal(datanet.bond_micro) / 1_000_000,
        **{f"flag_{k}": datanet.flag_actions.get(k, "keep") for k in FLAG_KINDS},
    }
    form = DatanetSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        curators = split_list(data["curators"])
        owner_can = request.user.is_staff or request.user.pk == datanet.owner_id
        try:
            services.datanet_update(
                datanet=datanet,
                actor=request.user,
                tags=split_list(data["tags"]),
                curators=curators if owner_can else None,
                flag_actions=form.flag_actions(),
                **{k: data[k] for k in ("name", "summary", "description", "licence", "visibility", "policy")},
                **form.money_terms(),
            )
        except services.DatanetError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Settings saved. New uploads use the new choices.")
            return redirect("datanets:detail", slug=datanet.slug)
    return render(request, "datanets/settings.html", {**_base(request, datanet, "settings"), "form": form})


@csrf_exempt
def datanet_upload(request, slug):
    # The size limit must be in place before the CSRF check reads the request body.
    install_upload_limit(request, settings.MF_UPLOAD_MAX_BYTES)
    return _datanet_upload(request, slug)


@csrf_protect
@login_required
def _datanet_upload(request, slug):
    datanet = _datanet(request, slug)
    posted = request.method == "POST"
    form = UploadForm(request.POST if posted else None, request.FILES if posted else None, kind=datanet.kind)
    error = ""
    if request.method == "POST":
        if request.upload_too_large:
            form = UploadForm(kind=datanet.kind)
            error = services._too_large_message() + " Split it into smaller files."
        elif form.is_valid():
            try:
                contribution = services.contribution_create(
                    datanet=datanet, contributor=request.user, upload=form.upload()
                )
            except services.DatanetError as exc:
                error = exc.message
            else:
                return redirect("datanets:contribution", pk=contribution.pk)
    context = {**_base(request, datanet, "upload"), "form": form, "error": error, "limit": settings.MF_UPLOAD_MAX_BYTES}
    return render(request, "datanets/upload.html", context, status=400 if (form.errors or error) else 200)


@login_required
def datanet_upload_example(request, slug):
    """A three-row example file in the shape this datanet's kind expects."""
    datanet = _datanet(request, slug)
    response = HttpResponse(example_jsonl(datanet.kind), content_type="application/jsonl; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="example-{datanet.kind}.jsonl"'
    return response


@login_required
def contribution_detail(request, pk):
    contribution = _contribution(request, pk)
    datanet = contribution.datanet
    context = {**_base(request, datanet, "contributions"), "c": contribution}
    context["worker_silent"] = contribution.status == Contribution.Status.VALIDATING and contribution.silent_for(
        settings.MF_INGEST_STALE_SECONDS
    )
    report = contribution.report or {}
    if contribution.status == Contribution.Status.FAILED and report.get("code") == "columns":
        context["mapping_form"] = ColumnMappingForm(kind=datanet.kind, columns=report.get("columns", []))
    if context["can_curate"] and contribution.status == Contribution.Status.NEEDS_REVIEW:
        contribution.bond_held = hooks.bonds_held([contribution.pk]).get(contribution.pk, 0)
    if contribution.is_finished and contribution.status != Contribution.Status.FAILED:
        context["flagged"] = list(
            contribution.records.filter(status__in=Record.LIVE)
            .exclude(flags=[])
            .select_related("copy_of__contributor")
            .order_by("line")[:200]
        )
    if request.htmx:
        response = render(request, "datanets/contribution.html#live", context)
        if contribution.is_finished:
            response.status_code = HttpResponseStopPolling.status_code
        return response
    return render(request, "datanets/contribution.html", context)


ROW_FILTERS = (
    ("", "All"),
    ("pending", "Waiting for review"),
    ("accepted", "Accepted"),
    ("rejected", "Rejected"),
    ("dropped", "Dropped"),
)


@login_required
def contribution_rows(request, pk):
    """Every row of an upload, page by page: what a curator reads before deciding, and what the contributor
    follows (kept or not, flagged, in which versions)."""
    contribution = _contribution(request, pk)
    status = request.GET.get("status", "")
    if status not in selectors.CONTRIBUTION_ROW_STATUSES:
        status = ""
    rows = selectors.contribution_rows(contribution=contribution, status=status)
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    versions = selectors.record_version_numbers(record_ids=[record.pk for record in page])
    # What the rows earned is the contributor's business: shown to them only (curators see the rows, not the pay).
    earnings = None
    if contribution.contributor_id == request.user.pk:
        earnings = hooks.row_earnings(
            user=request.user, contribution_id=contribution.pk, record_ids=[record.pk for record in page]
        )
    for record in page:
        record.version_numbers = versions[record.pk]
        record.earned = earnings["rows"][record.pk] if earnings else None
    context = {
        **_base(request, contribution.datanet, "contributions"),
        "c": contribution,
        "page": page,
        "status": status,
        "filters": ROW_FILTERS,
        "earnings": earnings,
    }
    return render(request, "datanets/contribution_rows.html", context)


@login_required
@require_POST
def contribution_retry(request, pk):
    contribution = _contribution(request, pk)
    mapping = None
    report = contribution.report or {}
    if report.get("code") == "columns":
        form = ColumnMappingForm(request.POST, kind=contribution.datanet.kind, columns=report.get("columns", []))
        if not form.is_valid():
            messages.error(request, "Choose a column for each required field.")
            return redirect("datanets:contribution", pk=pk)
        mapping = {k: v for k, v in form.cleaned_data.items() if v}
    try:
        services.contribution_retry(contribution=contribution, actor=request.user, column_mapping=mapping)
    except services.DatanetError as exc:
        messages.error(request, exc.message)
    return redirect("datanets:contribution", pk=pk)


@login_required
@require_POST
def contribution_review(request, pk, decision):
    contribution = _contribution(request, pk)
    try:
        if decision == "approve":
            services.contribution_approve(
                contribution=contribution, curator=request.user, note=request.POST.get("reason", "")
            )
            messages.success(request, f"Upload #{pk} accepted.")
        else:
            contribution = services.contribution_reject(
                contribution=contribution,
                curator=request.user,
                reason=request.POST.get("reason", ""),
                grounds=request.POST.get("grounds") or Contribution.RejectedAs.NOT_A_FIT,  # as the API's default
            )
            messages.success(request, f"Upload #{pk} rejected: {contribution.get_rejected_as_display().lower()}.")
    except services.DatanetError as exc:
        messages.error(request, exc.message)
    return redirect("datanets:review", slug=contribution.datanet.slug)


@login_required
@require_POST
def record_drop(request, pk):
    record = get_object_or_404(Record.objects.select_related("datanet"), pk=pk)
    datanet = _datanet(request, record.datanet.slug)
    try:
        services.record_drop(record=record, curator=request.user, reason=request.POST.get("reason", ""))
        messages.success(request, f"Row {record.pk} dropped.")
    except services.DatanetError as exc:
        messages.error(request, exc.message)
    if request.POST.get("back") == "rows":
        return redirect("datanets:contribution_rows", pk=record.contribution_id)
    if record.contribution.status == Contribution.Status.NEEDS_REVIEW:
        return redirect("datanets:contribution", pk=record.contribution_id)
    return redirect("datanets:detail", slug=datanet.slug)


@login_required
def contribution_list(request, slug):
    datanet = _datanet(request, slug)
    contributions = selectors.contribution_list(datanet=datanet, user=request.user)
    page = Paginator(contributions, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "datanets/contributions.html", {**_base(request, datanet, "contributions"), "page": page})


@login_required
def review_queue(request, slug):
    datanet = _datanet(request, slug)
    if not selectors.datanet_can_curate(user=request.user, datanet=datanet):
        # The datanet is visible to this person: say why they cannot go on (a hidden one is 404 above).
        raise PermissionDenied("Only this datanet's curators can review its contributions.")
    queue = list(selectors.contribution_list(datanet=datanet, user=request.user, review_only=True))
    scores = hooks.reputations(datanet)
    for contribution in queue:  # lowest reputation first (new contributors are neutral, 50); newest first within
        contribution.reputation, contribution.low_reputation = scores.get(contribution.contributor_id, (50, False))
    queue.sort(key=lambda c: c.reputation)
    held = hooks.bonds_held(c.pk for c in queue)
    for contribution in queue:
        contribution.bond_held = held.get(contribution.pk, 0)
    context = {**_base(request, datanet, "review"), "queue": queue, "reject_form": ReasonForm()}
    return render(request, "datanets/review.html", context)


def version_list(request, slug):
    datanet = _datanet(request, slug)
    form = PublishForm(request.POST or None)
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if form.is_valid():
            try:
                version = services.version_publish(
                    datanet=datanet, actor=request.user, notes=form.cleaned_data["notes"]
                )
            except services.DatanetError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"Version {version.number} published.")
                return redirect("datanets:version", slug=slug, number=version.number)
    context = {**_base(request, datanet, "versions"), "versions": selectors.version_list(datanet=datanet)}
    context["form"] = form
    return render(request, "datanets/versions.html", context, status=400 if form.errors else 200)


def version_detail(request, slug, number):
    datanet = _datanet(request, slug)
    version = get_object_or_404(selectors.version_list(datanet=datanet), number=number)
    context = {
        **_base(request, datanet, "versions"),
        "version": version,
        "diff": selectors.version_diff(version=version),
    }
    return render(request, "datanets/version.html", context)


def contributor_stats(request, slug):
    datanet = _datanet(request, slug)
    context = {**_base(request, datanet, "contributors"), "rows": selectors.contributor_stats(datanet=datanet)}
    return render(request, "datanets/contributors.html", context)


class _Echo:
    def write(self, value):
        return value


def datanet_export(request, slug):
    """CSV of the accepted rows, or of one version's rows with ?version=N. Formula-like cells are neutralised."""
    datanet = _datanet(request, slug)
    number = request.GET.get("version")
    if number:
        version = get_object_or_404(selectors.version_list(datanet=datanet), number=number)
        records = Record.objects.filter(
            pk__in=VersionRecord.objects.filter(version=version).values("record_id")
        ).order_by("id")
        filename = f"{datanet.slug}-v{version.number}.csv"
    else:
        records = selectors.record_list(datanet=datanet)
        filename = f"{datanet.slug}-accepted.csv"
    values = records.values_list("id", "contributor__username", "content", "content_hash", "token_count")
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(export_columns(datanet.kind))
        for row in values.iterator(chunk_size=2000):
            yield writer.writerow(export_row(datanet.kind, *row))

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
