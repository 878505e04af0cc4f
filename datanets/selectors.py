"""Datanet reads. Visibility: a public datanet is visible to everyone (anonymous visitors included, for pages);
a private one only to its owner, its curators and staff. Contributors always see their own contributions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum

from datanets.models import Contribution, Datanet, DatanetVersion, Record, VersionRecord

STATS_CACHE_SECONDS = 24 * 3600


class VersionNotUsable(Exception):
    """The version does not exist, or belongs to a private datanet the user may not see (told apart from a missing
    version by nothing, not even the message)."""


class VersionRow(NamedTuple):
    record_id: int
    contributor_id: int
    contribution_id: int
    kind: str
    content: dict


def _visible_q(user) -> Q:
    q = Q(visibility=Datanet.Visibility.PUBLIC)
    if user is not None and user.is_authenticated:
        if user.is_staff:
            return Q()
        q |= Q(owner=user) | Q(curators=user)
    return q


def datanet_list_visible(*, user, q: str = "", tag: str = "") -> QuerySet[Datanet]:
    ids = Datanet.objects.filter(_visible_q(user)).values("pk")
    qs = Datanet.objects.filter(pk__in=ids).select_related("owner").prefetch_related("tags")
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(summary__icontains=q) | Q(slug__icontains=q))
    if tag:
        qs = qs.filter(tags__name=tag)
    return qs.order_by("-created_at")


def datanet_get_visible(*, user, slug: str) -> Datanet:
    """Raises Datanet.DoesNotExist when there is no such datanet or the user may not see it."""
    return datanet_list_visible(user=user).get(slug=slug)


def datanet_ids_visible(*, user, datanet_ids) -> set[int]:
    """Those of the given datanets that the user may see (and so may read the rows of)."""
    return set(Datanet.objects.filter(_visible_q(user), pk__in=list(datanet_ids)).values_list("pk", flat=True))


def datanet_can_curate(*, user, datanet: Datanet) -> bool:
    if user is None or not user.is_authenticated:
        return False
    return user.is_staff or datanet.owner_id == user.pk or datanet.curators.filter(pk=user.pk).exists()


def datanet_can_contribute(*, user, datanet: Datanet) -> bool:
    if user is None or not user.is_authenticated:
        return False
    return datanet.visibility == Datanet.Visibility.PUBLIC or datanet_can_curate(user=user, datanet=datanet)


def tag_list() -> list[str]:
    return list(Datanet.tags.through.objects.values_list("tag__name", flat=True).distinct().order_by("tag__name")[:100])


def contribution_get_visible(*, user, contribution_id: int) -> Contribution:
    """The contributor, the datanet's curators and staff see a contribution. Raises Contribution.DoesNotExist."""
    contribution = Contribution.objects.select_related("datanet", "contributor").get(pk=contribution_id)
    if user is not None and user.is_authenticated and contribution.contributor_id == user.pk:
        return contribution
    if datanet_can_curate(user=user, datanet=contribution.datanet):
        return contribution
    raise Contribution.DoesNotExist


def contribution_list(*, datanet: Datanet, user, review_only: bool = False) -> QuerySet[Contribution]:
    qs = Contribution.objects.filter(datanet=datanet).select_related("contributor", "reviewed_by")
    if review_only:
        qs = qs.filter(status=Contribution.Status.NEEDS_REVIEW)
    if not datanet_can_curate(user=user, datanet=datanet):
        qs = qs.filter(contributor=user) if user.is_authenticated else qs.none()
    return qs.order_by("-created_at")


CONTRIBUTION_ROW_STATUSES = ("pending", "accepted", "rejected", "dropped")


def contribution_rows(*, contribution: Contribution, status: str = "") -> QuerySet[Record]:
    """A contribution's rows as its contributor and curators see them (rows still being checked are left out), in
    file order, each with the copied row it points at. `status` narrows to one of CONTRIBUTION_ROW_STATUSES."""
    statuses = (status,) if status else CONTRIBUTION_ROW_STATUSES
    return (
        Record.objects.filter(contribution=contribution, status__in=statuses)
        .select_related("copy_of__contributor")
        .order_by("line", "id")
    )


def record_version_numbers(*, record_ids: list[int]) -> dict[int, list[int]]:
    """{row id: the numbers of the datanet versions holding it, oldest first}: one query for a page of rows."""
    numbers: dict[int, list[int]] = {record_id: [] for record_id in record_ids}
    entries = (
        VersionRecord.objects.filter(record_id__in=record_ids)
        .order_by("version__number")
        .values_list("record_id", "version__number")
    )
    for record_id, number in entries:
        numbers[record_id].append(number)
    return numbers


def record_list(*, datanet: Datanet, q: str = "", statuses=(Record.Status.ACCEPTED,)) -> QuerySet[Record]:
    qs = Record.objects.filter(datanet=datanet, status__in=statuses).select_related("contributor")
    if q:
        qs = qs.filter(text__icontains=q)
    return qs.order_by("id")


def datanet_stats(*, datanet: Datanet) -> dict:
    """Accepted rows, contributors, tokens, and each contributor's share of the accepted rows.

    Cached under the datanet's `updated_at`, which every service that changes which rows are live moves on
    (services.common._rows_changed): counting a 100k-row datanet on every page view costs tens of milliseconds."""
    key = f"datanets:stats:{datanet.pk}:{datanet.updated_at.isoformat()}"
    stats = cache.get(key)
    if stats is None:
        stats = _datanet_stats(datanet)
        cache.set(key, stats, STATS_CACHE_SECONDS)
    return stats


def _datanet_stats(datanet: Datanet) -> dict:
    rows = Record.objects.filter(datanet=datanet, status=Record.Status.ACCEPTED)
    # Grouped by contributor id (an index-only scan), names looked up for the few contributors afterwards.
    grouped = list(rows.values("contributor_id").annotate(rows=Count("*"), tokens=Sum("token_count")).order_by())
    names = dict(
        get_user_model().objects.filter(pk__in=[p["contributor_id"] for p in grouped]).values_list("pk", "username")
    )
    per = sorted(
        ({**p, "contributor__username": names[p["contributor_id"]]} for p in grouped),
        key=lambda p: (-p["rows"], p["contributor__username"]),
    )
    total = sum(p["rows"] for p in per)
    estimated = Contribution.objects.filter(
        datanet=datanet, status=Contribution.Status.ACCEPTED, tokens_estimated=True
    ).exists()
    return {
        "rows": total,
        "contributors": len(per),
        "tokens": sum(p["tokens"] or 0 for p in per),
        "tokens_estimated": estimated,
        "pending": Record.objects.filter(datanet=datanet, status=Record.Status.PENDING).count(),
        "shares": [
            {"username": p["contributor__username"], "rows": p["rows"], "share": p["rows"] / total if total else 0}
            for p in per
        ],
    }


def contributor_stats(*, datanet: Datanet) -> list[dict]:
    """Per contributor: rows accepted, rows in the latest version, share of the datanet's accepted rows."""
    accepted = dict(
        Record.objects.filter(datanet=datanet, status=Record.Status.ACCEPTED)
        .values_list("contributor__username")
        .annotate(n=Count("id"))
    )
    latest = datanet.versions.order_by("-number").first()
    in_latest = {}
    if latest is not None:
        in_latest = dict(
            VersionRecord.objects.filter(version=latest)
            .values_list("record__contributor__username")
            .annotate(n=Count("id"))
        )
    total = sum(accepted.values())
    names = sorted(set(accepted) | set(in_latest), key=lambda n: (-accepted.get(n, 0), n))
    return [
        {
            "username": name,
            "rows_accepted": accepted.get(name, 0),
            "rows_in_latest": in_latest.get(name, 0),
            "share": accepted.get(name, 0) / total if total else 0.0,
        }
        for name in names
    ]


def version_list(*, datanet: Datanet) -> QuerySet[DatanetVersion]:
    return datanet.versions.select_related("created_by").order_by("-number")


def version_diff(*, version: DatanetVersion) -> dict:
    """Rows added and removed per contributor compared with the previous version of the same datanet."""
    previous = (
        DatanetVersion.objects.filter(datanet_id=version.datanet_id, number__lt=version.number)
        .order_by("-number")
        .first()
    )
    current_ids = VersionRecord.objects.filter(version=version).values("record_id")
    previous_ids = (
        VersionRecord.objects.filter(version=previous).values("record_id")
        if previous
        else VersionRecord.objects.none().values("record_id")
    )
    added = dict(
        Record.objects.filter(pk__in=current_ids)
        .exclude(pk__in=previous_ids)
        .values_list("contributor__username")
        .annotate(n=Count("id"))
    )
    removed = dict(
        Record.objects.filter(pk__in=previous_ids)
        .exclude(pk__in=current_ids)
        .values_list("contributor__username")
        .annotate(n=Count("id"))
    )
    names = sorted(set(added) | set(removed))
    return {
        "previous": previous,
        "contributors": [{"username": n, "added": added.get(n, 0), "removed": removed.get(n, 0)} for n in names],
        "added": sum(added.values()),
        "removed": sum(removed.values()),
    }


# --- Interfaces for fine-tuning and attribution --------------------------------------------------------------------


def version_get_usable(*, user, version_id: int) -> DatanetVersion:
    """The version if `user` may train on it (its datanet is public, or the user owns/curates it, or is staff).
    Raises VersionNotUsable otherwise, with a message that can be shown to the user."""
    version = DatanetVersion.objects.select_related("datanet").filter(pk=version_id).first()
    if version is None or (
        version.datanet.visibility != Datanet.Visibility.PUBLIC
        and not datanet_can_curate(user=user, datanet=version.datanet)
    ):
        # A private datanet the user may not see answers exactly as a missing version: saying "private" would
        # tell an outsider that the id exists, and naming the datanet would leak its name.
        raise VersionNotUsable(f"There is no datanet version {version_id}.")
    return version


def version_records(*, version_id: int) -> Iterator[VersionRow]:
    """Every row frozen in the version, in record id order, streamed from the database."""
    kind = DatanetVersion.objects.select_related("datanet").get(pk=version_id).datanet.kind
    rows = (
        Record.objects.filter(pk__in=VersionRecord.objects.filter(version_id=version_id).values("record_id"))
        .order_by("id")
        .values_list("id", "contributor_id", "contribution_id", "content")
    )
    for record_id, contributor_id, contribution_id, content in rows.iterator(chunk_size=2000):
        yield VersionRow(record_id, contributor_id, contribution_id, kind, content)


COPY_CHAIN_MAX = 20


def version_copy_credit(*, version_id: int) -> dict[int, tuple[int, int]]:
    """{record id: (contributor id, contribution id) of the original} for the version's rows that copy another
    contributor's earlier row (Record.copy_of, followed back to the first row of the chain): whom their credit
    belongs to. Rows that copy nobody are left out."""
    parent = dict(
        Record.objects.filter(
            pk__in=VersionRecord.objects.filter(version_id=version_id).values("record_id"), copy_of__isnull=False
        ).values_list("id", "copy_of_id")
    )
    if not parent:
        return {}
    known: dict[int, tuple[int | None, int, int]] = {}  # id -> (copy_of, contributor, contribution)
    wanted = set(parent.values())
    for _ in range(COPY_CHAIN_MAX):
        wanted -= known.keys()
        if not wanted:
            break
        for pk, copy_of, contributor, contribution in Record.objects.filter(pk__in=wanted).values_list(
            "id", "copy_of_id", "contributor_id", "contribution_id"
        ):
            known[pk] = (copy_of, contributor, contribution)
        wanted = {known[pk][0] for pk in wanted if pk in known and known[pk][0] is not None}
    credit = {}
    for record_id, original in parent.items():
        for _ in range(COPY_CHAIN_MAX):
            if original not in known or known[original][0] is None or known[original][0] not in known:
                break
            original = known[original][0]
        if original in known:
            credit[record_id] = known[original][1:]
    return credit


def version_contributor_row_counts(*, version_id: int) -> dict[int, int]:
    """{user id: number of rows in the version}."""
    return dict(
        VersionRecord.objects.filter(version_id=version_id)
        .values_list("record__contributor_id")
        .annotate(n=Count("id"))
        .order_by()
    )


def version_list_usable(*, user) -> QuerySet[DatanetVersion]:
    """Every version `user` may train on (same rule as version_get_usable), newest datanets first."""
    visible = Datanet.objects.filter(_visible_q(user)).values("pk")
    return (
        DatanetVersion.objects.filter(datanet__in=visible)
        .select_related("datanet")
        .order_by("datanet__name", "-number")
    )


def dashboard_datanets(*, user, limit: int = 5) -> list[Datanet]:
    """The datanets the user owns or curates, newest first, each with `to_review`: uploads waiting for a curator."""
    ids = Datanet.objects.filter(Q(owner=user) | Q(curators=user)).values("pk")
    return list(
        Datanet.objects.filter(pk__in=ids)
        .annotate(to_review=Count("contributions", filter=Q(contributions__status=Contribution.Status.NEEDS_REVIEW)))
        .order_by("-created_at")[:limit]
    )


def dashboard_uploads(*, user, limit: int = 5) -> list[Contribution]:
    """The user's latest uploads to any datanet, with their status."""
    return list(Contribution.objects.filter(contributor=user).select_related("datanet").order_by("-id")[:limit])
