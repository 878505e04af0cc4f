"""Contributor reputation per datanet (read-only), derived from what happened to their rows and contributions:

    score = 50                                           everyone starts neutral
          + 25 * (2 * accepted / reviewed - 1) * reviewed / (reviewed + 20)
                                                         rows kept vs rejected or dropped, trusted as rows add up
          + 25 * credited / (credited + 10)              answers their rows were credited in (models trained on it)
          - 30 * confirmed                               contributions a curator confirmed harmful
    clamped to 0..100, rounded. `reviewed` = accepted + rejected + dropped rows.

Below LOW_REPUTATION a contributor is "low": the curator's list shows it first, and (see services/holding) once a
contribution of theirs is confirmed harmful, their earnings from the datanet wait for a curator
(settings.MF_FLAGGED_HOLD_DAYS) instead of reaching the wallet at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count

from attribution.models import AttributionShare, ContributionFinding, ContributionValue
from datanets.models import Record

NEUTRAL = 50
LOW_REPUTATION = 35


@dataclass(frozen=True)
class Reputation:
    contributor_id: int
    username: str
    accepted: int
    rejected: int
    credited: int
    flagged: int
    confirmed: int
    score: int

    @property
    def low(self) -> bool:
        return self.score < LOW_REPUTATION


def reputation_score(*, accepted: int, rejected: int, credited: int, confirmed: int) -> int:
    reviewed = accepted + rejected
    rows = 25 * (2 * accepted / reviewed - 1) * reviewed / (reviewed + 20) if reviewed else 0.0
    answers = 25 * credited / (credited + 10)
    return round(min(100.0, max(0.0, NEUTRAL + rows + answers - 30 * confirmed)))


def datanet_reputations(*, datanet) -> list[Reputation]:
    """Every contributor of the datanet with their reputation's parts and score, lowest score first."""
    rows: dict[int, dict] = {}
    for user_id, username, status, n in (
        Record.objects.filter(datanet=datanet)
        .exclude(status=Record.Status.STAGED)
        .values_list("contributor_id", "contributor__username", "status")
        .annotate(n=Count("id"))
    ):
        entry = rows.setdefault(user_id, {"username": username, "accepted": 0, "rejected": 0})
        if status == Record.Status.ACCEPTED:
            entry["accepted"] += n
        elif status in (Record.Status.REJECTED, Record.Status.DROPPED):
            entry["rejected"] += n
    jobs = datanet.versions.values("finetune_jobs")
    credited = dict(
        AttributionShare.objects.filter(
            contributor_id__in=rows, share__gt=0, attribution__inference__model_version__job__in=jobs
        )
        .values_list("contributor_id")
        .annotate(n=Count("attribution_id", distinct=True))
    )
    flagged = dict(
        ContributionValue.objects.filter(datanet=datanet, harmful=True)
        .values_list("contributor_id")
        .annotate(n=Count("contribution_id", distinct=True))
    )
    confirmed = dict(
        ContributionFinding.objects.filter(datanet=datanet, verdict=ContributionFinding.Verdict.CONFIRMED)
        .values_list("contributor_id")
        .annotate(n=Count("id"))
    )
    result = [
        Reputation(
            contributor_id=user_id,
            username=entry["username"],
            accepted=entry["accepted"],
            rejected=entry["rejected"],
            credited=credited.get(user_id, 0),
            flagged=flagged.get(user_id, 0),
            confirmed=confirmed.get(user_id, 0),
            score=reputation_score(
                accepted=entry["accepted"],
                rejected=entry["rejected"],
                credited=credited.get(user_id, 0),
                confirmed=confirmed.get(user_id, 0),
            ),
        )
        for user_id, entry in rows.items()
    ]
    return sorted(result, key=lambda r: (r.score, r.username))


def datanet_reputation_scores(*, datanet) -> dict[int, tuple[int, bool]]:
    """{user id: (score, low)}: the review queue's view (datanets.hooks)."""
    return {r.contributor_id: (r.score, r.low) for r in datanet_reputations(datanet=datanet)}


def contributor_reputations(*, user, limit: int = 20) -> list[tuple[object, Reputation]]:
    """[(datanet, the user's reputation there)] for the datanets the user has rows in (their own view)."""
    from datanets.models import Datanet

    datanets = Datanet.objects.filter(pk__in=Record.objects.filter(contributor=user).values("datanet_id")).order_by(
        "name"
    )[:limit]
    mine = []
    for datanet in datanets:
        found = next((r for r in datanet_reputations(datanet=datanet) if r.contributor_id == user.pk), None)
        if found is not None:
            mine.append((datanet, found))
    return mine
