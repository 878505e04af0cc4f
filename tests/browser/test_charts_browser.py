"""Every chart kind, drawn by the one initialiser (static/js/charts.js) in real Chromium: each canvas with
data-chart holds exactly one Chart.js chart, and the job page's live loss chart takes the new points after each
htmx poll of the progress section, without a second chart on the canvas."""

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from attribution.models import Attribution, AttributionShare
from modelfactory.models import FineTuneEvent, FineTuneJob, Inference
from tests.browser.conftest import next_frames, visit
from tests.faults.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CHARTS = """() => Array.from(document.querySelectorAll("canvas[data-chart]")).map(c => {
  const chart = Chart.getChart(c);
  return {id: c.id, kind: c.dataset.chart, type: chart && chart.config.type, points: chart && chart.data.datasets
    .reduce((n, d) => n + d.data.length, 0)};
})"""
ALL_CHARTS = "Object.keys(Chart.instances).length"
LOSS_POINTS = (
    "(() => { const d = Chart.getChart('loss-chart').data.datasets; return [d[0].data.length, d[1].data.length]; })()"
)


def attributed_answer(world, cast) -> None:
    """One answer of the world's model, attributed to the owner and the teammate (for the per-day share chart)."""
    inference = Inference.objects.create(
        caller=cast.outsider, model=world.model, model_version=world.model.versions.get(),
        source=Inference.Source.API, status=Inference.Status.COMPLETED, price_per_1k_tokens=0,
        messages=[{"role": "user", "content": "What do Quells eat?"}], output="Quells eat blue moss.",
    )  # fmt: skip
    attribution = Attribution.objects.create(inference=inference, status=Attribution.Status.DONE)
    for user, share in ((cast.owner, 0.6), (cast.teammate, 0.4)):
        AttributionShare.objects.create(
            attribution=attribution, contributor=user, model=world.model, share=share, settled_share=share,
            created_at=timezone.now(),
        )  # fmt: skip


def test_every_chart_kind_is_drawn_once(owner_page, world, cast):
    page = owner_page
    attributed_answer(world, cast)
    expected = {
        f"/train/jobs/{world.job.pk}/": [{"id": "loss-chart", "kind": "loss", "type": "line", "points": 6}],
        "/wallet/": [
            {"id": "earnings-model", "kind": "credits", "type": "bar", "points": 1},
            {"id": "earnings-datanet", "kind": "credits", "type": "bar", "points": 1},
            {"id": "earnings-day", "kind": "credits-per-day", "type": "line", "points": 1},
        ],
        f"/attribution/models/{world.model.slug}/": [
            {"id": "attribution-chart", "kind": "share-per-day", "type": "bar", "points": 2}
        ],
        f"/datanets/{world.datanet.slug}/": [
            {"id": "share-chart", "kind": "rows-per-contributor", "type": "doughnut", "points": 2}
        ],
    }
    for path, charts in expected.items():
        visit(page, path)
        assert page.evaluate(CHARTS) == charts, path
        assert page.evaluate(ALL_CHARTS) == len(charts), path

    # An htmx swap elsewhere on the page (the datanet's row search) leaves its chart as it was.
    page.get_by_role("searchbox").fill("Quells")
    expect(page.locator("#rows")).not_to_contain_text("Plimby")
    assert page.evaluate(CHARTS) == expected[f"/datanets/{world.datanet.slug}/"]
    assert page.evaluate(ALL_CHARTS) == 1
    assert page.evaluate("window.__cspViolations") == [] and page.problems == []


def test_the_live_loss_chart_follows_the_polls(owner_page, world):
    page = owner_page
    job = world.job
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=FineTuneJob.Status.RUNNING, step=5, total_steps=8, progress=0.6, heartbeat_at=timezone.now()
    )
    visit(page, f"/train/jobs/{job.pk}/")
    assert page.evaluate(LOSS_POINTS) == [5, 1]
    page.evaluate("window.__lossChart = Chart.getChart('loss-chart')")
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text("step 5 of 8")

    FineTuneEvent.objects.bulk_create(
        [FineTuneEvent(job=job, kind=FineTuneEvent.Kind.TRAIN, step=s, loss=3.0 - s / 10) for s in (6, 7)]
    )
    FineTuneJob.objects.filter(pk=job.pk).update(step=7, heartbeat_at=timezone.now())
    expect(progress).to_contain_text("step 7 of 8", timeout=10_000)  # the progress section was swapped by a poll
    # Polled from here: wait_for_function re-evaluates a string with eval() in the page, which the page's CSP forbids
    # (it only passed when the points had already arrived at the first try).
    wait_for(lambda: page.evaluate(LOSS_POINTS)[0] == 7, timeout=10, what="the loss chart to get the new points")
    assert page.evaluate(LOSS_POINTS) == [7, 1]
    # The same chart, updated in place: not a second one drawn over the first.
    assert page.evaluate("Chart.getChart('loss-chart') === window.__lossChart") is True
    assert page.evaluate(ALL_CHARTS) == 1
    page.steps.shot("polled")

    # Further polls with nothing new add nothing.
    page.wait_for_timeout(2_500)
    assert page.evaluate(LOSS_POINTS) == [7, 1]

    # The job ends: the last poll stops polling and reloads the page, whose chart holds every point.
    FineTuneEvent.objects.create(job=job, kind=FineTuneEvent.Kind.EVAL, step=8, eval_loss=2.5)
    FineTuneJob.objects.filter(pk=job.pk).update(status=FineTuneJob.Status.SUCCEEDED, step=8, progress=1)
    expect(page.get_by_role("heading", name="Result")).to_be_visible(timeout=10_000)
    page.wait_for_load_state("networkidle")
    assert page.evaluate(LOSS_POINTS) == [7, 2]
    assert page.evaluate(ALL_CHARTS) == 1
    assert page.evaluate("window.__cspViolations") == [] and page.problems == []


# Chart.js redraws a chart at its container's new width from a ResizeObserver callback, which a loaded machine can
# deliver seconds late (CI once measured the wallet 606 px wide at 390). Until then a canvas keeps its old width in
# pixels; the stylesheet must keep it inside its column anyway.
NO_RESIZE_OBSERVER = "window.ResizeObserver = class { observe() {} unobserve() {} disconnect() {} };"


def test_a_chart_not_yet_redrawn_for_a_narrow_screen_does_not_widen_the_page(owner_page, world, cast):
    page = owner_page
    attributed_answer(world, cast)
    page.add_init_script(NO_RESIZE_OBSERVER)
    for path in (
        f"/train/jobs/{world.job.pk}/",
        "/wallet/",
        f"/attribution/models/{world.model.slug}/",
        f"/datanets/{world.datanet.slug}/",
    ):
        page.set_viewport_size({"width": 1280, "height": 900})
        visit(page, path)
        widths = "Array.from(document.querySelectorAll('canvas[data-chart]')).map(c => c.getBoundingClientRect().width)"
        assert min(page.evaluate(widths)) > 390, path  # drawn for the wide screen
        page.set_viewport_size({"width": 390, "height": 844})
        next_frames(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        assert max(page.evaluate(widths)) <= 390, path
