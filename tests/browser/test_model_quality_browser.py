"""The published model page in real Chromium: how well payments follow the data, in plain words, with the figures
behind a disclosure, under the page's content policy. Screenshots at 1280 and 390 px are kept in
test-artifacts/pages/model-quality-*.png."""

import pytest
from playwright.sync_api import expect

from attribution import quality
from attribution.models import Attribution, ModelIndex
from attribution.quality import Measurement, quality_record
from modelfactory.models import Inference, TrainedModel
from tests.browser.conftest import keep_screenshots, visit

pytestmark = pytest.mark.django_db(transaction=True)

INDEX = {"folder": "/nowhere", "index_path": "/nowhere", "spans_path": "/nowhere", "owners_path": "/nowhere",
         "k": 1, "seed": 0, "rows": 1, "bytes": 1, "build_seconds": 0.1}  # fmt: skip


def test_the_model_page_states_how_well_payments_follow_the_data(owner_page, cast, world, tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "QUALITY_FILE", tmp_path / "quality.json")
    common = {"date": "2026-12-06", "bench": "bench/bench_attribution_planted.py",
              "command": "python bench/bench_attribution_planted.py --threads 1 --record"}  # fmt: skip
    tiny = {"bench_model": "tiny", "date": "2026-12-06", "bench": "bench/bench_attribution.py",
            "command": "python bench/bench_attribution.py --threads 1 --record"}  # fmt: skip
    quality_record(method_version="poa-3", measurements=[
        Measurement(metric="planted_fact_top1", value=0.95, bench_model="SmolLM2-135M-Instruct",
                    counts={"queries": 20}, **common),
        Measurement(metric="unattributed_out_of_domain", value=0.925, bench_model="SmolLM2-135M-Instruct",
                    counts={"queries": 20}, **common),
        Measurement(metric="planted_fact_top1", value=1.0, counts={"queries": 16}, **tiny),
        Measurement(metric="lds", value=0.8123, counts={"subsets": 32, "queries": 16}, **tiny),
    ])  # fmt: skip
    ModelIndex.objects.create(job=world.job, method_version="poa-3", **INDEX)
    TrainedModel.objects.filter(pk=world.model.pk).update(status="published", visibility="public")
    version = world.model.versions.get()
    for unattributed in (0.0, 0.2, 0.5):
        inference = Inference.objects.create(
            caller=cast.outsider, model=world.model, model_version=version, source=Inference.Source.API,
            status=Inference.Status.COMPLETED, messages=[{"role": "user", "content": "?"}], output="Three moons.",
            price_per_1k_tokens=0,
        )  # fmt: skip
        Attribution.objects.create(inference=inference, status=Attribution.Status.DONE, unattributed=unattributed)
    page = owner_page
    visit(page, f"/models/{world.model.slug}/")
    box = page.locator("#attribution-quality")
    expect(box).to_contain_text(
        "got the largest share for 19 of 20 answers (SmolLM2-135M-Instruct, measured 6 Dec 2026)"
    )
    expect(box).to_contain_text("Of the 3 answers this version has given so far, 3 have been traced: on average 77%")
    figures = page.locator("#attribution-quality-figures")
    expect(figures).to_be_hidden()
    box.locator("summary").click()
    expect(figures.locator("li[data-metric='lds'] .result")).to_have_text("0.812")
    box.get_by_role("link", name="how each answer's fee is shared").click()
    page.wait_for_function("location.hash === '#split-policy'")
    box.scroll_into_view_if_needed()
    keep_screenshots(page, "model-quality")
