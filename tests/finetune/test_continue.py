"""Train again from a model: the next version starts from its adapter, on a newer datanet version, with lineage."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase
from rest_framework.test import APIClient

from attribution.models import ModelIndex
from datanets import services as datanet_services
from modelfactory import services
from modelfactory.models import FineTuneJob, ModelVersion, TrainedModel
from modelfactory.selectors import finetune_rows
from tests.finetune.conftest import FACTS, FAST, launch_job, publish_version

pytestmark = pytest.mark.django_db

NEW_FACTS = [
    ("What colour is the sea on Zorb?", "The sea on Zorb is orange."),
    ("How many legs does a Quell have?", "A Quell has six legs."),
    ("Who built the Plimby bridge?", "The Plimby bridge was built by Tom Reed."),
    ("What is the Zorb national dish?", "The Zorb national dish is moss stew."),
]


def newer_version(version, contributor):
    """Version 2 of the same datanet: version 1's rows and a new contribution."""
    data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in NEW_FACTS).encode()
    contribution = datanet_services.contribution_create(
        datanet=version.datanet, contributor=contributor, upload=SimpleUploadedFile("more.jsonl", data)
    )
    datanet_services.contribution_ingest(contribution_id=contribution.pk)
    return datanet_services.version_publish(datanet=version.datanet, actor=version.datanet.owner)


@pytest.fixture
def first_model(cast, tiny_base, version):
    job, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                        hyperparameters=FAST, name="Zorb expert", idempotency_key="v1")  # fmt: skip
    services.finetune_run(job_id=job.pk, hostname="w")
    return TrainedModel.objects.get()


def continue_on(user, model, version_ids, key="v2"):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return services.finetune_continue(
            user=user, model_slug=model.slug, version_ids=version_ids, idempotency_key=key
        )


def test_training_again_makes_the_next_version_from_the_adapter_with_lineage(client, cast, first_model, version):
    v2_data = newer_version(version, cast.teammate)
    v1 = first_model.latest_version
    job, created = continue_on(cast.owner, first_model, [v2_data.pk])
    assert created and job.parent_version == v1
    assert (job.preset, job.hyperparameters) == (v1.job.preset, v1.job.hyperparameters)
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == FineTuneJob.Status.SUCCEEDED, done.message

    assert TrainedModel.objects.count() == 1  # the same model, a new version
    v2 = first_model.latest_version
    assert (v2.number, v2.job_id) == (2, job.pk)
    assert services.model_lineage(version=v2) == [v1, v2]
    assert v2.artifact_hash != v1.artifact_hash

    # its attribution index covers the rows both jobs trained on
    index = ModelIndex.objects.get(job=job)
    assert set(job.datanet_versions.all()) == {v2_data}
    first_index = ModelIndex.objects.get(job=v1.job)
    assert index.rows > first_index.rows  # v1's training rows and the new ones

    client.force_login(cast.owner)
    page = client.get(f"/models/{first_model.slug}/").content.decode()
    assert 'id="lineage"' in page and "<td>v1</td>" in page and "v2 <small" in page and "(answering now)" in page
    assert "Zorb facts v1" in page and "Zorb facts v2" in page
    assert "Train again from this model" in page


def test_the_first_adapter_is_where_training_starts(cast, first_model, version, monkeypatch):
    from modelfactory.training import finetune

    seen = {}
    real = finetune.run_finetune

    def spy(spec, **kwargs):
        seen["init"] = spec.init_adapter_dir
        return real(spec, **kwargs)

    monkeypatch.setattr(finetune, "run_finetune", spy)
    job, _ = continue_on(cast.owner, first_model, [version.pk])
    services.finetune_run(job_id=job.pk, hostname="w")
    assert str(seen["init"]) == first_model.versions.get(number=1).adapter_path


def test_the_page_form_launches_once_and_refuses_a_stranger(client, cast, first_model, version):
    client.force_login(cast.owner)
    for _ in range(2):  # a double click
        response = client.post(f"/models/{first_model.slug}/train-again/", {"versions": [str(version.pk)]})
    job = FineTuneJob.objects.get(parent_version__isnull=False)
    assert response.status_code == 302 and response["Location"] == f"/train/jobs/{job.pk}/"

    services.trained_model_publish(
        user=cast.owner, slug=first_model.slug, price_per_1k_tokens=1000, visibility="public"
    )
    client.force_login(cast.outsider)
    response = client.post(f"/models/{first_model.slug}/train-again/", {"versions": [str(version.pk)]}, follow=True)
    assert "You have no trained model called “zorb-expert”." in response.content.decode()
    assert FineTuneJob.objects.filter(parent_version__isnull=False).count() == 1


def test_api_from_model(cast, first_model, version):
    api = APIClient()
    api.force_authenticate(cast.owner)
    body = {"from_model": first_model.slug, "datanet_versions": [version.pk], "idempotency_key": "api-again"}
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = api.post("/api/v1/finetunes/", body, format="json")
    assert response.status_code == 201, response.json()
    assert response["Location"].endswith(f"/api/v1/finetunes/{response.json()['id']}/")
    assert FineTuneJob.objects.get(pk=response.json()["id"]).parent_version == first_model.latest_version

    api.force_authenticate(cast.outsider)
    response = api.post("/api/v1/finetunes/", {**body, "idempotency_key": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"from_model": ["You have no trained model called “zorb-expert”."]}
    response = api.post("/api/v1/finetunes/", {"datanet_versions": [version.pk]}, format="json")
    assert response.status_code == 400 and "base_model" in response.json()["error"]["details"]
    assert FineTuneJob.objects.count() == 2
    assert ModelVersion.objects.count() == 1


def test_a_chosen_test_set_is_scored_without_the_rows_trained_on(client, cast, tiny_base, version):
    extra = [("What colour is the sea on Zorb?", "The sea on Zorb is orange.")]
    test_set = publish_version(owner=cast.owner, contributors=[cast.owner], name="Zorb exam", rows=FACTS[:2] + extra)
    job, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                        hyperparameters=FAST, name="Examined", idempotency_key="t1",
                        test_version_ids=[test_set.pk])  # fmt: skip
    assert list(job.test_versions.all()) == [test_set]
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == FineTuneJob.Status.SUCCEEDED, done.message
    test = done.metrics["test"]
    # the two FACTS rows were trained on unless the split held them out; what is left is scored, row by row
    held_out = {s["row_id"] for s in done.samples}
    trained = {r["content"]["instruction"] for r in finetune_rows(versions=[version])[0] if r["id"] not in held_out}
    overlap = sum(1 for question, _ in FACTS[:2] if question in trained)
    assert overlap >= 1  # 2 of 10 rows are held out: at least one of the two was trained on
    assert (test["rows"], test["overlap"]) == (3, overlap)
    assert test["answers_scored"] == len(test["samples"]) == 3 - overlap
    assert "What colour is the sea on Zorb?" in [s["prompt"] for s in test["samples"]]
    client.force_login(cast.owner)
    page = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert 'id="test-set"' in page and "What colour is the sea on Zorb?" in page


WRONG_KIND = (
    "“Zorb prose” holds plain text, not questions with expected answers: a test set needs instruction or chat rows."
)


def test_a_test_set_of_the_wrong_kind_is_refused_before_anything_is_created(cast, tiny_base, version):
    from datanets.models import Datanet

    prose = datanet_services.datanet_create(
        owner=cast.owner, name="Zorb prose", kind="text", summary="Text.", visibility=Datanet.Visibility.PUBLIC,
        policy=Datanet.Policy.OPEN,
    )  # fmt: skip
    data = b'{"text": "Zorb has green skies and blue moss."}\n'
    contribution = datanet_services.contribution_create(
        datanet=prose, contributor=cast.owner, upload=SimpleUploadedFile("p.jsonl", data)
    )
    datanet_services.contribution_ingest(contribution_id=contribution.pk)
    prose_v1 = datanet_services.version_publish(datanet=prose, actor=cast.owner)
    with pytest.raises(services.LaunchError) as caught:
        launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                   hyperparameters=FAST, idempotency_key="t2", test_version_ids=[prose_v1.pk])  # fmt: skip
    assert caught.value.errors == {"test_versions": WRONG_KIND}
    with pytest.raises(services.LaunchError) as caught:
        launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                   hyperparameters=FAST, idempotency_key="t3", test_version_ids=[999_999])  # fmt: skip
    assert list(caught.value.errors) == ["test_versions"]
    assert FineTuneJob.objects.count() == 0
