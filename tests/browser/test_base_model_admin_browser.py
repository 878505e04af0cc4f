"""The admin's "add base model" in real Chromium: a refused folder is named on the form and nothing is written; a
checked tiny model folder is registered. Screenshots at 1280 and 390 px are kept in test-artifacts/pages/
(admin-base-model-refused-*.png)."""

import pytest

from modelfactory.models import BaseModel
from modelfactory.training.tiny import build_tiny_model_dir

from .conftest import keep_screenshots, log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_operator_registers_a_folder_after_a_refusal(page, live_server, cast, tmp_path):
    folder = build_tiny_model_dir(tmp_path / "tiny-qwen2", family="qwen2")
    log_in(page, live_server, cast.staff)
    page.goto("/admin/modelfactory/basemodel/add/")
    page.fill("#id_path", "Qwen/Qwen2.5-0.5B-Instruct")
    page.click("input[name=_save]")
    error = page.locator(".errorlist").first
    assert "looks like a Hugging Face Hub id. This deployment registers local folders only" in error.inner_text()
    keep_screenshots(page, "admin-base-model-refused")
    assert BaseModel.objects.count() == 0

    page.fill("#id_path", str(folder))
    page.fill("#id_name", "Tiny Qwen2")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/modelfactory/basemodel/")
    assert "Tiny Qwen2" in page.locator("#result_list").inner_text()
    assert BaseModel.objects.get().architecture == "Qwen2ForCausalLM"
