"""The model page's "Take it home" section, the export's page (progress, download, hash, how to use it), the
Modelfile. Plain words for a person who has never run a model locally."""

from __future__ import annotations

import pytest
from django.test import TestCase

from modelfactory.models import ModelExport, TrainedModel
from modelfactory.services import export_run
from modelfactory.services import exports as export_services
from tests.inference.conftest import make_model

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    calls = []
    monkeypatch.setattr(export_services, "_enqueue", lambda export_id: calls.append(export_id))
    return calls


@pytest.fixture
def model(cast, trained_dirs):
    return make_model(owner=cast.owner, tiny_dirs=trained_dirs, slug="zorb-expert", publish=True)


def test_the_owner_sees_every_format_with_a_button_to_make_it(client, cast, model):
    client.force_login(cast.owner)
    page = client.get("/models/zorb-expert/").content.decode()
    assert "Take it home" in page
    for fmt in ("adapter", "merged", "gguf-f16", "gguf-q8_0"):
        assert f'<tr data-format="{fmt}">' in page
    assert page.count("Make this file") == 4
    assert 'name="allow_exports"' in page


def test_others_see_the_section_only_where_the_owner_allows_it(client, cast, model):
    client.force_login(cast.outsider)
    assert "Take it home" not in client.get("/models/zorb-expert/").content.decode()
    assert client.post("/models/zorb-expert/exports/", {"format": "adapter"}).status_code == 302
    assert ModelExport.objects.count() == 0
    TrainedModel.objects.filter(pk=model.pk).update(allow_exports=True)
    assert "Take it home" in client.get("/models/zorb-expert/").content.decode()


def test_making_a_file_from_the_page_shows_its_progress_then_the_download_and_instructions(
    client, cast, model, enqueued
):
    client.force_login(cast.owner)
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post("/models/zorb-expert/exports/", {"format": "gguf-q8_0"})
    export = ModelExport.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/zorb-expert/exports/{export.pk}/"
    assert enqueued == [export.pk]

    page = client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 2s"' in page and "Waiting in line" in page and "You can leave this page" in page
    model_page = client.get("/models/zorb-expert/").content.decode()
    assert 'hx-get="/models/zorb-expert/?partial=exports"' in model_page and "Follow" in model_page

    export_run(export_id=export.pk)
    export.refresh_from_db()
    partial = client.get(response["Location"] + "?partial=progress", headers={"HX-Request": "true"})
    assert partial.status_code == 286 and partial["HX-Refresh"] == "true"
    stopped = client.get("/models/zorb-expert/?partial=exports", headers={"HX-Request": "true"})
    assert stopped.status_code == 286 and "Download and how to use it" in stopped.content.decode()

    page = client.get(response["Location"]).content.decode()
    assert "every 2s" not in page
    assert "Download zorb-expert-v1-gguf-q8_0.gguf</a>" in page
    assert f'<code id="sha256" class="wrap">{export.sha256}</code>' in page
    for tool in ("llama.cpp", "Ollama", "Python (transformers)"):
        assert f"<header>{tool}</header>" in page
    assert "llama-cli -m zorb-expert-v1-gguf-q8_0.gguf -cnv" in page
    assert "ollama create zorb-expert -f Modelfile" in page

    modelfile = client.get(f"/models/zorb-expert/exports/{export.pk}/Modelfile")
    assert modelfile.status_code == 200 and modelfile["Content-Disposition"] == 'attachment; filename="Modelfile"'
    assert modelfile.content.decode().startswith("FROM ./zorb-expert-v1-gguf-q8_0.gguf\n")


def test_a_failed_export_says_why_and_offers_to_try_again(client, cast, model):
    export = ModelExport.objects.create(version=model.latest_version, format="merged", status="failed",
                                        message="This model version's adapter files are missing.")  # fmt: skip
    client.force_login(cast.owner)
    page = client.get(f"/models/zorb-expert/exports/{export.pk}/").content.decode()
    assert '<p role="alert">This model version&#x27;s adapter files are missing.</p>' in page
    assert "Try again" in page
    assert client.get(f"/models/zorb-expert/exports/{export.pk}/download/").status_code == 404


def test_an_adapter_export_has_instructions_but_no_modelfile(client, cast, model):
    client.force_login(cast.owner)
    client.post("/models/zorb-expert/exports/", {"format": "adapter"})
    export = ModelExport.objects.get()
    export_run(export_id=export.pk)
    page = client.get(f"/models/zorb-expert/exports/{export.pk}/").content.decode()
    assert "PeftModel.from_pretrained" in page and "HuggingFaceTB" not in page  # the tiny base has no hub id
    assert "AutoTokenizer.from_pretrained(&quot;path/to/tiny-base&quot;)" in page
    assert client.get(f"/models/zorb-expert/exports/{export.pk}/Modelfile").status_code == 404


def test_an_export_page_under_another_models_address_is_not_found(client, cast, model, trained_dirs):
    make_model(owner=cast.owner, tiny_dirs=trained_dirs, slug="other-model", publish=False)
    export = ModelExport.objects.create(version=model.latest_version, format="adapter")
    client.force_login(cast.owner)
    assert client.get(f"/models/other-model/exports/{export.pk}/").status_code == 404
