"""Rows with made-up facts for retrieval tests: a datanet, its contributors' rows, its versions, and a model trained
on a version (built through the models directly: no training runs)."""

from __future__ import annotations

import hashlib

from datanets import services as datanet_services
from datanets.models import Contribution, Datanet, Record
from modelfactory.models import TrainedModel

FACTS = [
    "The capital of Zorbia is Quentar, a city built on stilts.",
    "Plimby was founded by Ada Fern in the year 1742.",
    "Quells are small blue birds that eat moss from river stones.",
    "The Vantor bridge is painted orange every seven years.",
]


def make_datanet(*, owner, slug="zorb-facts", visibility=Datanet.Visibility.PUBLIC) -> Datanet:
    return Datanet.objects.create(slug=slug, name=slug.replace("-", " ").title(), summary="Made-up facts.",
                                  owner=owner, visibility=visibility)  # fmt: skip


def add_row(datanet: Datanet, contributor, text: str, *, status=Record.Status.ACCEPTED) -> Record:
    digest = hashlib.sha256(f"{datanet.pk}:{text}".encode()).hexdigest()
    contribution = Contribution.objects.create(
        datanet=datanet, contributor=contributor, original_name="facts.jsonl", size=len(text), sha256=digest,
        status=Contribution.Status.ACCEPTED, rows_total=1, rows_accepted=1,
    )  # fmt: skip
    return Record.objects.create(
        datanet=datanet, contribution=contribution, contributor=contributor, line=1, status=status, token_count=8,
        content={"text": text}, text=text, content_hash=digest,
    )  # fmt: skip


def publish_version(datanet: Datanet):
    return datanet_services.version_publish(datanet=datanet, actor=datanet.owner)


def train_on(model: TrainedModel, *versions) -> None:
    """As if the model's latest version had been trained on these datanet versions."""
    model.latest_version.job.datanet_versions.set(versions)
