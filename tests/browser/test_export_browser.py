"""Taking a model home in real Chromium: the owner makes the GGUF file from the model page, lands on its page with
the download, the hash and the instructions, and downloads the file. Screenshots of the model page's export table
and of the export page at 1280 and 390 px are kept in test-artifacts/pages/."""

import hashlib

import pytest
from playwright.sync_api import expect

from modelfactory.models import ModelExport
from modelfactory.services import export_run
from modelfactory.services import exports as export_services
from tests.browser.conftest import keep_screenshots, visit
from tests.inference.conftest import make_model
from tests.serving.conftest import save_random_adapter
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(cast, tmp_path, settings, monkeypatch):
    settings.MEDIA_ROOT = tmp_path / "media"
    base = build_tiny_model_dir(tmp_path / "base")
    adapter = save_random_adapter(base, tmp_path / "adapter", rank=4, targets=["q_proj", "v_proj"], seed=3)
    # the worker's part, run at once where the task would be queued
    monkeypatch.setattr(export_services, "_enqueue", lambda export_id: export_run(export_id=export_id))
    return make_model(owner=cast.owner, tiny_dirs=(base, adapter), slug="zorb-expert", publish=True)


def test_the_owner_makes_and_downloads_a_gguf_file(owner_page, model):
    page = owner_page
    visit(page, "/models/zorb-expert/")
    expect(page.get_by_role("heading", name="Take it home")).to_be_visible()
    keep_screenshots(page, "model-exports")
    page.locator('tr[data-format="gguf-q8_0"]').get_by_role("button", name="Make this file").click()
    page.wait_for_url("**/models/zorb-expert/exports/*/")
    export = ModelExport.objects.get()
    expect(page.locator("#export-progress")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#sha256")).to_have_text(export.sha256)
    for tool in ("llama.cpp", "Ollama", "Python (transformers)"):
        expect(page.locator("article header", has_text=tool)).to_be_visible()
    keep_screenshots(page, "export-gguf")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download zorb-expert-v1-gguf-q8_0.gguf").click()
    data = open(download.value.path(), "rb").read()  # noqa: SIM115
    assert download.value.suggested_filename == "zorb-expert-v1-gguf-q8_0.gguf"
    assert hashlib.sha256(data).hexdigest() == export.sha256 and len(data) == export.bytes
    visit(page, "/models/zorb-expert/")
    expect(page.locator('tr[data-format="gguf-q8_0"]')).to_contain_text("Ready")
