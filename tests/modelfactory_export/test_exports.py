"""Exports from the API and the pages: the contract, who may export, one export per version and format (also under
concurrency), and bad inputs that leave nothing half-written."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import TestCase
from django.utils import timezone

from modelfactory.models import ModelExport, TrainedModel
from modelfactory.services import export_reap_stale, export_request, export_run
from modelfactory.services import exports as export_services
from tests.inference.conftest import make_model

pytestmark = pytest.mark.django_db

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="real concurrency needs PostgreSQL (SQLite runs one writer at a time). Run with DATABASE_URL=postgres://...",
)


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    calls = []
    monkeypatch.setattr(export_services, "_enqueue", lambda export_id: calls.append(export_id))
    return calls


@pytest.fixture
def model(cast, trained_dirs):
    return make_model(owner=cast.owner, tiny_dirs=trained_dirs, slug="zorb-expert", publish=False)


def _post(api_client, user, fmt="adapter", slug="zorb-expert"):
    api_client.force_authenticate(user)
    with TestCase.captureOnCommitCallbacks(execute=True):
        return api_client.post(f"/api/v1/models/{slug}/exports/", {"format": fmt}, format="json")


def test_post_answers_202_with_the_export_and_get_follows_it_to_the_download(api_client, client, cast, model, enqueued):
    response = _post(api_client, cast.owner, "adapter")
    assert response.status_code == 202, response.content
    body = response.json()
    export = ModelExport.objects.get()
    assert (body["id"], body["status"], body["format"], body["download_url"]) == (export.pk, "queued", "adapter", None)
    assert response["Location"] == f"http://testserver/api/v1/exports/{export.pk}/"
    assert enqueued == [export.pk]

    export_run(export_id=export.pk)
    shown = api_client.get(f"/api/v1/exports/{export.pk}/").json()
    export.refresh_from_db()
    assert shown == {
        "id": export.pk, "model": "zorb-expert", "model_version": 1, "format": "adapter", "status": "succeeded",
        "progress": 1.0,
        "download_url": f"http://testserver/models/zorb-expert/exports/{export.pk}/download/",
        "instructions_url": f"http://testserver/models/zorb-expert/exports/{export.pk}/",
        "sha256": export.sha256, "bytes": export.bytes, "message": "Ready to download.",
    }  # fmt: skip
    assert len(export.sha256) == 64 and export.bytes > 0
    assert client.get(shown["download_url"]).status_code == 404  # signed out: a private model's file is hidden
    client.force_login(cast.owner)
    download = client.get(shown["download_url"])
    assert download.status_code == 200
    assert download["Content-Disposition"] == 'attachment; filename="zorb-expert-v1-adapter.zip"'
    assert b"".join(download.streaming_content) == open(export.path, "rb").read()  # noqa: SIM115


def test_asking_again_returns_the_same_export_and_queues_nothing(api_client, cast, model, enqueued):
    first = _post(api_client, cast.owner, "merged").json()
    second = _post(api_client, cast.owner, "merged")
    assert second.status_code == 202 and second.json()["id"] == first["id"]
    assert enqueued == [first["id"]] and ModelExport.objects.count() == 1


def test_one_export_per_version_and_format_is_a_database_constraint(cast, model):
    version = model.latest_version
    ModelExport.objects.create(version=version, format="gguf-f16")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelExport.objects.create(version=version, format="gguf-f16")
    ModelExport.objects.create(version=version, format="gguf-q8_0")  # another format is another file
    assert ModelExport.objects.count() == 2


def test_a_request_that_loses_the_race_returns_the_winner(cast, model, monkeypatch):
    """The lookup saw nothing, then the insert hit the constraint: the export made by the other request is returned."""
    winner = ModelExport.objects.create(version=model.latest_version, format="merged")
    real_filter = ModelExport.objects.filter
    calls = []

    def filter_missing_once(*args, **kwargs):
        calls.append(kwargs)
        queryset = real_filter(*args, **kwargs)
        return queryset.none() if len(calls) == 1 else queryset

    monkeypatch.setattr(ModelExport.objects, "filter", filter_missing_once)
    export, created = export_request(user=cast.owner, slug="zorb-expert", format="merged")
    assert (export.pk, created) == (winner.pk, False)
    assert real_filter(format="merged").count() == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_make_one_export(trained_dirs, settings, tmp_path, monkeypatch):
    from tests.factories import UserFactory

    monkeypatch.setattr(export_services, "_enqueue", lambda export_id: None)
    owner = UserFactory(username="conc-owner")
    make_model(owner=owner, tiny_dirs=trained_dirs, slug="conc-model", publish=False)
    threads = 8
    barrier = threading.Barrier(threads, timeout=60)

    def ask(_):
        try:
            barrier.wait()
            export, created = export_request(user=owner, slug="conc-model", format="gguf-f16")
            return export.pk, created
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(ask, range(threads)))
    export = ModelExport.objects.get()
    assert {pk for pk, _ in results} == {export.pk}
    assert sum(created for _, created in results) == 1


# --- who may export ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "visibility", "allow", "status"),
    [
        ("owner", "private", False, 202),
        ("staff", "private", False, 202),
        ("outsider", "private", True, 404),  # a private model is never exported for anyone else
        ("outsider", "public", False, 403),  # published publicly, but the owner does not allow it
        ("outsider", "public", True, 202),
    ],
)
def test_who_may_export(api_client, cast, model, who, visibility, allow, status):
    TrainedModel.objects.filter(pk=model.pk).update(
        status="published" if visibility == "public" else "draft", visibility=visibility, allow_exports=allow
    )
    response = _post(api_client, getattr(cast, who), "adapter")
    assert response.status_code == status, response.content
    assert ModelExport.objects.count() == (1 if status == 202 else 0)
    if status == 403:
        assert response.json()["error"] == {
            "code": "export_not_allowed",
            "message": "The owner of Zorb Expert has not allowed others to download its files.",
            "details": {},
        }


def test_an_export_is_hidden_from_others_once_the_owner_stops_allowing_it(api_client, cast, model):
    TrainedModel.objects.filter(pk=model.pk).update(status="published", visibility="public", allow_exports=True)
    export_id = _post(api_client, cast.outsider, "adapter").json()["id"]
    assert api_client.get(f"/api/v1/exports/{export_id}/").status_code == 200
    TrainedModel.objects.filter(pk=model.pk).update(allow_exports=False)
    assert api_client.get(f"/api/v1/exports/{export_id}/").status_code == 404
    assert api_client.get(f"/models/zorb-expert/exports/{export_id}/").status_code == 404


def test_the_owner_allows_exports_when_publishing(api_client, cast, model):
    api_client.force_authenticate(cast.owner)
    body = {"price_per_1k_tokens": "0.002000", "visibility": "public", "allow_exports": True}
    assert api_client.post("/api/v1/models/zorb-expert/publish/", body, format="json").status_code == 200
    model.refresh_from_db()
    assert model.allow_exports is True
    body.pop("allow_exports")  # left out: unchanged
    api_client.post("/api/v1/models/zorb-expert/publish/", body, format="json")
    model.refresh_from_db()
    assert model.allow_exports is True


# --- bad input ----------------------------------------------------------------------------------------------------


def test_an_unknown_format_is_refused(api_client, cast, model):
    response = _post(api_client, cast.owner, "onnx")
    assert response.status_code == 400
    assert "format" in response.json()["error"]["details"]
    assert ModelExport.objects.count() == 0


def test_gguf_of_an_architecture_it_cannot_write_is_refused_plainly(api_client, cast, model, tmp_path):
    base = model.base_model
    folder = tmp_path / "gpt2-like"
    shutil.copytree(base.path, folder)
    (folder / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    type(base).objects.filter(pk=base.pk).update(path=str(folder))
    response = _post(api_client, cast.owner, "gguf-q8_0")
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "GGUF export is only available for Llama-family models; this one is GPT2LMHeadModel. "
        "Download the merged model instead: llama.cpp's own convert_hf_to_gguf.py can convert it."
    )
    assert ModelExport.objects.count() == 0


@pytest.mark.parametrize("fmt", ["adapter", "merged", "gguf-f16"])
def test_missing_adapter_files_fail_plainly_and_leave_nothing(cast, model, tmp_path, fmt):
    version = model.latest_version
    version.adapter_path = str(tmp_path / "gone")
    version.save(update_fields=["adapter_path"])
    export, _ = export_request(user=cast.owner, slug="zorb-expert", format=fmt)
    done = export_run(export_id=export.pk)
    assert done.status == "failed"
    assert done.message == (
        f"This model version's adapter files are missing (adapter_config.json, adapter_model.safetensors in "
        f"{tmp_path / 'gone'}), so nothing was exported. Train the model again to make a new version."
    )
    assert (done.path, done.sha256, done.bytes) == ("", "", None)
    assert not export.folder.exists() or list(export.folder.iterdir()) == []


def test_a_failure_while_writing_removes_the_temporary_file(cast, model, monkeypatch):
    def broken(model, tokenizer, *, path, **kwargs):
        path.write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(export_services.gguf_file, "write_gguf", broken)
    export, _ = export_request(user=cast.owner, slug="zorb-expert", format="gguf-q8_0")
    done = export_run(export_id=export.pk)
    assert done.status == "failed"
    assert done.message.startswith("The file could not be made (OSError: No space left on device); nothing was kept.")
    assert list(export.folder.iterdir()) == []


def test_a_failed_export_is_tried_again_when_asked(cast, model, enqueued):
    export = ModelExport.objects.create(
        version=model.latest_version, format="adapter", status="failed", message="The worker stopped."
    )
    export.folder.mkdir(parents=True)
    (export.folder / ".zorb-expert-v1-adapter.zip.0123.part").write_bytes(b"left by a worker that died")
    with TestCase.captureOnCommitCallbacks(execute=True):
        again, created = export_request(user=cast.owner, slug="zorb-expert", format="adapter")
    assert (again.pk, again.status, created, enqueued) == (export.pk, "queued", True, [export.pk])
    assert export_run(export_id=export.pk).status == "succeeded"
    assert sorted(p.name for p in export.folder.iterdir()) == ["zorb-expert-v1-adapter.zip"]
    assert export_run(export_id=export.pk) is None  # delivered twice: the second does nothing


def test_the_sweep_fails_an_export_whose_worker_died(cast, model, settings):
    old = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS + 5)
    stale = ModelExport.objects.create(version=model.latest_version, format="merged", status="running",
                                       heartbeat_at=old)  # fmt: skip
    fresh = ModelExport.objects.create(version=model.latest_version, format="adapter", status="running",
                                       heartbeat_at=timezone.now())  # fmt: skip
    stale.folder.mkdir(parents=True)
    (stale.folder / ".zorb-expert-v1-merged.zip.abc.part").write_bytes(b"half")
    (stale.folder / ".work-abc").mkdir()
    assert export_reap_stale() == [stale.pk]
    assert list(stale.folder.iterdir()) == []
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.status, stale.message) == ("failed", export_services.STALE_MESSAGE)
    assert fresh.status == "running"


def test_the_task_runs_on_the_gpu_queue_and_makes_the_file(cast, model):
    from config.celery import app
    from modelfactory.tasks import export_run_task

    assert app.amqp.router.route({}, "modelfactory.tasks.export_run_task")["queue"].name == "gpu"
    export, _ = export_request(user=cast.owner, slug="zorb-expert", format="adapter")
    assert export_run_task.run(export.pk) == "succeeded"
    assert export_run_task.run(export.pk) == "not-claimed"
