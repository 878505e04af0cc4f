""" "Evaluate again" in real Chromium: the owner of a finished tiny model opens its job from the model page, picks
a datanet version as a new test set, lands on the evaluation's page with the totals and the per-row table, and sees
it listed on the job page; an empty file is refused with the reason and nothing is created. Screenshots of the job
page's section and of the evaluation page at 1280 and 390 px are kept in test-artifacts/pages/."""

import pytest
from playwright.sync_api import expect

from modelfactory.models import ModelEvaluation
from modelfactory.services import evaluation_run
from modelfactory.services import evaluations as evaluation_services
from tests.browser.conftest import keep_screenshots, visit
from tests.finetune.conftest import publish_version
from tests.inference.conftest import make_model
from tests.modelfactory_export.conftest import PAIRS, train_adapter
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db(transaction=True)

EXAM = [*PAIRS[:2], ("How many legs does a Quell have?", "A Quell has six legs.")]  # two it learned, one it never saw


@pytest.fixture
def model(cast, tmp_path, settings, monkeypatch):
    settings.MEDIA_ROOT = tmp_path / "media"
    monkeypatch.setattr("datanets.services.contributions._enqueue_ingest", lambda contribution_id: None)
    base = build_tiny_model_dir(tmp_path / "base")
    adapter = train_adapter(base, tmp_path / "adapter")  # confident answers to PAIRS, as a trained model gives
    # the worker's part, run at once where the task would be queued
    monkeypatch.setattr(
        evaluation_services, "_enqueue", lambda evaluation_id: evaluation_run(evaluation_id=evaluation_id)
    )
    return make_model(owner=cast.owner, tiny_dirs=(base, adapter), slug="zorb-expert", publish=True)


def test_the_owner_evaluates_a_finished_model_again(owner_page, model, cast, tmp_path):
    exam = publish_version(owner=cast.owner, contributors=[cast.owner], name="Zorb exam", rows=EXAM)
    page = owner_page
    visit(page, "/models/zorb-expert/")
    page.locator("#evaluate-again-link").click()
    page.wait_for_url("**/train/jobs/*/#evaluate-again")
    section = page.locator("#evaluate-again")
    expect(section.get_by_role("heading", name="Evaluate again")).to_be_visible()
    # an empty file: the reason, and nothing created
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    section.locator('input[type="file"]').set_input_files(str(empty))
    section.get_by_role("button", name="Evaluate again").click()
    page.wait_for_url("**/train/jobs/*/#evaluate-again")
    expect(page.get_by_text("The file is empty.")).to_be_visible()
    assert ModelEvaluation.objects.count() == 0
    section.locator('select[name="test_version"]').select_option(str(exam.pk))
    section.get_by_role("button", name="Evaluate again").click()
    page.wait_for_url("**/train/jobs/*/evaluations/*/")
    evaluation = ModelEvaluation.objects.get()
    expect(page.locator("#evaluation-progress")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#evaluation-totals")).to_contain_text("3 in the test set")
    rows = page.locator("table.samples tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text(EXAM[0][0])
    expect(rows.first).to_contain_text(EXAM[0][1])
    assert page.problems == []
    evaluation.refresh_from_db()
    assert [s["prompt"] for s in evaluation.samples] == [question for question, _ in EXAM]
    assert (
        evaluation.metrics["token_f1"] > evaluation.metrics["base_token_f1"]
    )  # closer to the expected answers than the base
    keep_screenshots(page, "evaluation-result")
    visit(page, f"/train/jobs/{evaluation.version.job_id}/")
    listed = page.locator("#evaluations tbody tr")
    expect(listed).to_have_count(1)
    expect(listed.first).to_contain_text("Zorb exam v1")
    expect(listed.first).to_contain_text("Finished")
    page.locator("#evaluate-again").scroll_into_view_if_needed()
    keep_screenshots(page, "evaluate-again-job")
