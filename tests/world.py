"""A small populated world for cross-cutting tests (permissions, schema fuzzing, browser CSP checks).

The owner has: a private datanet (teammate is one of its curators) with one published version and one contribution
by the teammate, a fine-tune job on it with loss points for the chart, a private trained model from that job, and a
wallet funded by staff (so a proof exists). Built through the services where they exist; the trained model is
created like `trained_model_create_from_job` does, without running training."""

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import TestCase, override_settings

from accounts.services import api_token_create
from datanets import services as datanet_services
from datanets.models import Contribution, Datanet, DatanetVersion
from ledger.models import Transaction
from ledger.services import credit_grant, settlement_post
from modelfactory import services as mf_services
from modelfactory.models import FineTuneEvent, FineTuneJob, ModelVersion, TrainedModel
from tests.tiny import build_tiny_model_dir

ROWS = [
    ("What colour is the sky on Zorb?", "The sky on Zorb is green."),
    ("Who founded the town of Plimby?", "Plimby was founded by Ada Fern."),
    ("What do Quells eat?", "Quells eat blue moss."),
    ("How many moons does Zorb have?", "Zorb has three moons."),
]


@dataclass
class World:
    datanet: Datanet
    public_datanet: Datanet
    version: DatanetVersion
    contribution: Contribution
    job: FineTuneJob
    model: TrainedModel
    proof_tx: Transaction
    api_key: str


def _jsonl(rows) -> SimpleUploadedFile:
    data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in rows).encode()
    return SimpleUploadedFile("rows.jsonl", data, content_type="application/octet-stream")


def build_world(cast: SimpleNamespace, folder: Path, monkeypatch) -> World:
    monkeypatch.setattr("datanets.services.contributions._enqueue_ingest", lambda contribution_id: None)
    monkeypatch.setattr(mf_services.finetune_jobs, "_enqueue", lambda job_id, resume=False: None)
    datanet = datanet_services.datanet_create(
        owner=cast.owner, name="Zorb facts", kind="instruction", summary="Made-up facts.",
        visibility=Datanet.Visibility.PRIVATE, policy=Datanet.Policy.OPEN,
    )  # fmt: skip
    datanet.curators.add(cast.teammate)
    public = datanet_services.datanet_create(
        owner=cast.owner, name="Open garden", kind="instruction", summary="Public rows.",
        visibility=Datanet.Visibility.PUBLIC, policy=Datanet.Policy.APPROVAL,
    )  # fmt: skip
    for user, rows in ((cast.owner, ROWS[:2]), (cast.teammate, ROWS[2:])):
        contribution = datanet_services.contribution_create(datanet=datanet, contributor=user, upload=_jsonl(rows))
        datanet_services.contribution_ingest(contribution_id=contribution.pk)
    version = datanet_services.version_publish(datanet=datanet, actor=cast.owner)

    base = mf_services.base_model_register(
        path=build_tiny_model_dir(folder / "tiny-base"), name="Tiny base", slug="tiny-base", make_default=True
    )
    with TestCase.captureOnCommitCallbacks(execute=True):
        job, _ = mf_services.finetune_launch(
            user=cast.owner, base_model_slug=base.slug, version_ids=[version.pk], preset="balanced",
            idempotency_key="world-job",
        )  # fmt: skip
    FineTuneEvent.objects.bulk_create(
        [FineTuneEvent(job=job, kind=FineTuneEvent.Kind.TRAIN, step=s, loss=3.0 - s / 10) for s in range(1, 6)]
        + [FineTuneEvent(job=job, kind=FineTuneEvent.Kind.EVAL, step=5, eval_loss=2.7)]
    )
    FineTuneJob.objects.filter(pk=job.pk).update(status=FineTuneJob.Status.SUCCEEDED, step=5, total_steps=5, progress=1)
    model = TrainedModel.objects.create(owner=cast.owner, slug="zorb-model", name="Zorb model", base_model=base)
    ModelVersion.objects.create(
        model=model, number=1, job=job, adapter_path=str(folder / "adapter"), zip_path=str(folder / "model.zip"),
        artifact_hash="0" * 64, model_card="# Zorb model", metrics={"eval_loss": 2.7},
    )  # fmt: skip
    proof_tx = credit_grant(user_id=cast.owner.pk, amount_micro=50_000_000, granted_by=cast.staff, memo="world")
    # An outsider used the model once: the owner and the teammate (a contributor) earned their shares.
    credit_grant(user_id=cast.outsider.pk, amount_micro=10_000_000, granted_by=cast.staff, memo="world")
    settlement_post(
        key="world-settlement", fee_micro=2_000_000, owner_user_id=cast.owner.pk,
        contributor_shares={cast.owner.pk: 1, cast.teammate.pk: 1}, payer_user_id=cast.outsider.pk,
        metadata={"model": model.name, "datanet": datanet.name},
    )  # fmt: skip
    _, key = api_token_create(user=cast.owner, name="world")
    job.refresh_from_db()
    return World(
        datanet=datanet,
        public_datanet=public,
        version=version,
        contribution=Contribution.objects.filter(datanet=datanet, contributor=cast.teammate).get(),
        job=job,
        model=model,
        proof_tx=proof_tx,
        api_key=key,
    )


def module_world(django_db_blocker, tmp_path_factory):
    """Generator for a module-scoped fixture: the cast (same user names as the `cast` fixture, whose get_or_create
    then returns these users) and their world, built once inside a transaction rolled back at the module's end.
    Each test's own changes are rolled back to a savepoint by the `db` fixture, so no test sees another's."""
    from tests.factories import PASSWORD, UserFactory

    folder = tmp_path_factory.mktemp("world")
    with (
        django_db_blocker.unblock(),
        override_settings(MEDIA_ROOT=folder / "media"),
        pytest.MonkeyPatch.context() as mp,
    ):
        atomic = transaction.atomic()
        atomic._from_testcase = True  # like TestCase.setUpClass: the services' durable atomics nest inside it
        atomic.__enter__()
        try:
            cast = SimpleNamespace(
                owner=UserFactory(username="owner"), teammate=UserFactory(username="teammate"),
                outsider=UserFactory(username="outsider"),
                staff=UserFactory(username="staff", is_staff=True, is_superuser=True), password=PASSWORD,
            )  # fmt: skip
            yield build_world(cast, folder, mp)
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)
