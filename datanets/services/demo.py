"""The demo datanet, seeded on first run through the same upload -> ingest -> review -> publish path as real data."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile

from datanets.demo_data import CONTRIBUTORS, DEMO_DESCRIPTION, DEMO_SLUG
from datanets.models import Contribution, Datanet
from datanets.services.contributions import contribution_approve, contribution_create
from datanets.services.datanet import datanet_create
from datanets.services.ingestion import contribution_ingest
from datanets.services.versions import version_publish


def demo_datanet_seed(*, owner) -> Datanet | None:
    """On first run only: the demo datanet with three contributors' rows, reviewed and published as version 1,
    going through the same upload -> ingest -> review -> publish path as real data. Returns None when it exists."""
    if Datanet.objects.filter(slug=DEMO_SLUG).exists():
        return None
    datanet = datanet_create(
        owner=owner,
        slug=DEMO_SLUG,
        name="Home gardening",
        kind=Datanet.Kind.INSTRUCTION,
        summary="Short, practical answers about growing vegetables and herbs at home.",
        description=DEMO_DESCRIPTION,
        tags=["gardening", "vegetables", "herbs"],
        licence="CC-BY-4.0",
        visibility=Datanet.Visibility.PUBLIC,
        policy=Datanet.Policy.APPROVAL,
    )
    User = get_user_model()
    for username, pairs in CONTRIBUTORS.items():
        user, created = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        body = "".join(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n" for q, a in pairs)
        upload = ContentFile(body.encode(), name=f"{username}.jsonl")
        contribution = contribution_create(datanet=datanet, contributor=user, upload=upload, enqueue=False)
        contribution = contribution_ingest(contribution_id=contribution.pk)
        if contribution.status == Contribution.Status.NEEDS_REVIEW:
            contribution_approve(contribution=contribution, curator=owner, note="Demo data")
    version_publish(datanet=datanet, actor=owner, notes="Demo data from three contributors.")
    return datanet
