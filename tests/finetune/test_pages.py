import pytest
from django.template.defaultfilters import filesizeformat
from django.test import TestCase
from django.urls import reverse

from datanets.models import Datanet
from modelfactory import selectors, services
from modelfactory.models import FineTuneJob
from tests.finetune.conftest import publish_version

pytestmark = pytest.mark.django_db
WIZARD = "/train/new/"


def post(client, **data):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.post(WIZARD, data)


def test_wizard_walks_through_five_steps_and_launches(client, cast, tiny_base, version, enqueued):
    client.force_login(cast.owner)
    page = client.get(WIZARD + "?restart=1", follow=True).content.decode()
    assert "1. Which base model do you start from?" in page
    assert "Tiny base" in page and "(recommended)" in page

    page = post(client, action="next", base_model="tiny-base").content.decode()
    assert "2. Which data does it learn from?" in page and "Zorb facts" in page

    page = post(client, action="next", versions=[str(version.pk)]).content.decode()
    assert "3. How your rows become training examples" in page
    assert "<mark>" in page  # the trained-on answer is highlighted in the exact text
    assert '<div class="bubble bubble-user"><small>Question</small>' in page  # and read as a conversation
    assert (
        '<div class="bubble bubble-assistant bubble-trained"><small>Answer: the model learns to write this</small>'
        in page
    )
    assert "<summary>Exactly what the model reads</summary>" in page
    assert "rows will be used" in page

    page = post(client, action="next").content.decode()
    assert (
        "4. How thoroughly should it train?" in page
        and "Learns your facts (recommended)" in page
        and "Advanced settings" in page
    )
    # each preset says what it costs on this data and hardware, before anything else is chosen
    assert page.count("On your data here: about ") == 3 and page.count(" of memory (a rough guess).</small>") == 3

    form = {"action": "next", "preset": "quick", "name": "Wizard model", "hp_max_length": "192", "hp_epochs": "2",
            "hp_min_steps": "0"}  # fmt: skip
    page = post(client, **form).content.decode()
    assert "5. Review and launch" in page
    assert "Estimated time" in page and "Estimated memory" in page
    assert "a rough guess: it gets sharper after the first run on this computer" in page  # no earlier run here
    assert page.count("a rough guess: it gets sharper after the first run on this computer") == 2  # time, memory
    assert "Estimated memory</header><strong>" in page and '</strong><br><small class="muted">most while ' in page
    # 9 training rows, batch 4, 2 passes, no minimum: 6 steps, and the review says so before launch
    assert "Only 6 learning steps are planned: too few for the model to learn your facts." in page
    assert "Only 9 rows to train on" in page

    response = post(client, action="launch")
    job = FineTuneJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("modelfactory:job", args=[job.pk])
    assert (job.name, job.preset, job.hyperparameters["epochs"], job.hyperparameters["max_length"]) == (
        "Wizard model",
        "quick",
        2,
        192,
    )
    assert enqueued == [(job.pk, False)]
    # A second click on Launch (the wizard state is gone) does not create another job.
    post(client, action="launch")
    assert FineTuneJob.objects.count() == 1


def test_back_keeps_what_was_entered(client, cast, tiny_base, version):
    client.force_login(cast.owner)
    client.get(WIZARD + "?restart=1")
    post(client, action="next", base_model="tiny-base")
    post(client, action="next", versions=[str(version.pk)])
    post(client, action="next")
    post(client, action="back", preset="thorough", name="Kept", hp_rank="12")
    page = client.get(WIZARD + "?step=4").content.decode()
    assert 'value="Kept"' in page and 'value="12"' in page
    assert '<input type="radio" name="preset" value="thorough" id="id_preset_2" required checked>' in page


def test_out_of_range_setting_is_shown_next_to_the_field(client, cast, tiny_base, version):
    client.force_login(cast.owner)
    client.get(WIZARD + "?restart=1")
    post(client, action="next", base_model="tiny-base")
    post(client, action="next", versions=[str(version.pk)])
    post(client, action="next")
    response = post(client, action="next", preset="quick", hp_rank="999")
    page = response.content.decode()
    assert response.status_code == 422
    assert "Some settings need a change" in page
    assert "Ensure this value is less than or equal to 256." in page
    assert FineTuneJob.objects.count() == 0


def test_step_two_requires_a_version(client, cast, tiny_base, version):
    client.force_login(cast.owner)
    client.get(WIZARD + "?restart=1")
    post(client, action="next", base_model="tiny-base")
    page = post(client, action="next").content.decode()
    assert "Choose at least one datanet version." in page


def test_step_two_answers_a_hidden_private_version_as_a_missing_one(client, cast, tiny_base, version):
    private = publish_version(
        owner=cast.teammate, contributors=[cast.teammate], name="Secret plans", visibility=Datanet.Visibility.PRIVATE
    )
    client.force_login(cast.outsider)
    client.get(WIZARD + "?restart=1")
    post(client, action="next", base_model="tiny-base")
    page = post(client, action="next", versions=[str(private.pk)]).content.decode()
    assert f"There is no datanet version {private.pk}." in page
    assert "Secret plans" not in page and "belongs to a private datanet" not in page
    assert "2. Which data does it learn from?" in page
    assert FineTuneJob.objects.count() == 0


def test_job_page_progress_partial_and_download(client, cast, tiny_base, version):
    from tests.finetune.conftest import FAST, launch_job

    client.force_login(cast.owner)
    job, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                        hyperparameters=FAST, name="Page job", idempotency_key="p")  # fmt: skip
    page = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "Waiting in line" in page and "number 1 in line" in page
    assert 'hx-trigger="every 2s"' in page
    # nothing trained yet: nothing to keep, only a cancel (as an outline button)
    assert "Stop and keep the adapter" not in page and 'class="secondary outline">Cancel this job</button>' in page
    FineTuneJob.objects.filter(pk=job.pk).update(status="running")
    running = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert ">Stop and keep the adapter</button>" in running and ">Cancel and discard</button>" in running
    FineTuneJob.objects.filter(pk=job.pk).update(status="queued")

    estimate = FineTuneJob.objects.get().estimate
    assert estimate["run_method"] == "rough" and estimate["run_low"] < estimate["run_seconds"] < estimate["run_high"]

    services.finetune_run(job_id=job.pk, hostname="w")
    partial = client.get(f"/train/jobs/{job.pk}/?partial=progress", HTTP_HX_REQUEST="true")
    assert partial.status_code == 286  # htmx stops polling
    page = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "Finished" in page and "Held-out questions, answered by both" in page
    assert "(a rough guess: no earlier run on this computer)" in page and "peak <strong>" in page
    job.refresh_from_db()
    low, high = (filesizeformat(job.estimate[key]) for key in ("memory_low", "memory_high"))
    assert f"estimated {low} to {high} (a rough guess" in page
    measured = job.metrics["peak_memory"]  # each stage's peak, measured by the worker
    assert set(measured) == {"training", "evaluation", "index", "job"}
    assert f"peak <strong>{filesizeformat(measured['job'])}</strong>" in page
    assert 'id="verdict"' in page and "Answers that match the expected ones" in page
    assert "preset “Learns your tone, fast”" in page  # the name the wizard showed, not the API's key
    chart = client.get(f"/train/jobs/{job.pk}/chart/").json()
    assert len(chart["train"]) == FineTuneJob.objects.get().total_steps and chart["active"] is False

    download = client.get("/models/page-job/download/")
    assert download.status_code == 200
    assert download["Content-Disposition"] == 'attachment; filename="page-job-v1-adapter.zip"'

    client.force_login(cast.outsider)
    assert client.get(f"/train/jobs/{job.pk}/").status_code == 404
    assert client.get("/models/page-job/").status_code == 404  # a private draft
    assert client.get("/models/page-job/download/").status_code == 404


QLORA_ON_CPU = (
    "4-bit training (QLoRA) needs a CUDA GPU and this worker has none: choose &#x27;none&#x27; for the 4-bit "
    "setting, or run the job on a GPU worker."
)


def _to_step_4(client, cast, version):
    client.force_login(cast.owner)
    client.get(WIZARD + "?restart=1")
    post(client, action="next", base_model="tiny-base")
    post(client, action="next", versions=[str(version.pk)])
    post(client, action="next")


def test_qlora_is_not_offered_on_a_cpu_worker_and_a_posted_4bit_is_refused(client, cast, tiny_base, version):
    _to_step_4(client, cast, version)
    page = client.get(WIZARD + "?step=4").content.decode()
    assert '<option value="none"' in page and '<option value="4bit"' not in page
    assert "Not offered here: the training worker has no CUDA GPU it can use for it." in page
    response = post(client, action="next", preset="quick", hp_quantization="4bit")
    page = response.content.decode()
    assert response.status_code == 422
    assert "Some settings need a change" in page
    assert QLORA_ON_CPU in page
    assert "5. Review and launch" not in page
    assert FineTuneJob.objects.count() == 0


def _gpu_worker(hostname="gpu@box", queues=("gpu",), age_seconds=0, **hardware):
    """A live (or stale) training worker's heartbeat row, with the hardware report its probe would write."""
    from datetime import timedelta

    from django.utils import timezone

    from core.models import WorkerHeartbeat

    report = {"cuda": True, "device_count": 2, "bf16": True, "bitsandbytes": True,
              "device_names": ["NVIDIA L4", "NVIDIA L4"], **hardware}  # fmt: skip
    seen = timezone.now() - timedelta(seconds=age_seconds)
    WorkerHeartbeat.objects.create(
        hostname=hostname, queues=list(queues), pid=1, started_at=seen, last_seen=seen, hardware=report
    )


def test_qlora_is_offered_where_the_gpu_worker_has_cuda_and_bitsandbytes(client, cast, tiny_base, version):
    """The web process (this CPU) decides from what the live gpu-queue worker reported on its heartbeat row."""
    _gpu_worker()
    _to_step_4(client, cast, version)
    page = client.get(WIZARD + "?step=4").content.decode()
    assert '<option value="4bit"' in page
    page = post(client, action="next", preset="quick", hp_quantization="4bit", hp_max_length="192").content.decode()
    assert "5. Review and launch" in page
    assert "<strong>2 GPUs (NVIDIA L4, bf16, 4-bit base model)</strong>: each step's rows are shared out among " \
        "the 2 devices" in page  # fmt: skip
    assert "on each device" in page


def test_the_wizard_offers_what_every_live_gpu_worker_can_do(client, cast, tiny_base, version, settings):
    from modelfactory.selectors import training_capabilities

    _gpu_worker("stale@box", age_seconds=settings.MF_WORKER_STALE_SECONDS + 5)  # gone: not counted
    _gpu_worker("web@box", queues=("default",))  # not a training worker
    assert training_capabilities().cuda is False  # neither counts: this machine's own CPU
    _gpu_worker("a@box")
    _gpu_worker("b@box", device_count=1, bitsandbytes=False, device_names=["NVIDIA T4"], bf16=False)
    caps = training_capabilities()
    assert (caps.cuda, caps.device_count, caps.bitsandbytes, caps.device_names) == (True, 1, False, ("NVIDIA T4",))
    _to_step_4(client, cast, version)
    page = client.get(WIZARD + "?step=4").content.decode()
    assert '<option value="4bit"' not in page  # one of the two workers could not run it


def test_review_names_the_cpu_as_the_hardware(client, cast, tiny_base, version):
    _to_step_4(client, cast, version)
    page = post(client, action="next", preset="quick", hp_max_length="192").content.decode()
    assert "<article><header>Hardware</header><strong>this server&#x27;s CPU</strong></article>" in page
    assert "on each device" not in page


def test_api_refuses_qlora_on_a_cpu_worker(cast, tiny_base, version):
    with pytest.raises(services.LaunchError) as caught:
        services.finetune_launch(
            user=cast.owner,
            base_model_slug="tiny-base",
            version_ids=[version.pk],
            preset="quick",
            hyperparameters={"quantization": "4bit"},
            idempotency_key="qlora-cpu",
        )
    assert caught.value.errors == {"hyperparameters.quantization": QLORA_ON_CPU.replace("&#x27;", "'")}
    assert FineTuneJob.objects.count() == 0


def test_a_second_run_is_estimated_from_the_first_and_the_queue_says_how_long(client, cast, tiny_base, version):
    from tests.finetune.conftest import FAST, launch_job

    first, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                          hyperparameters=FAST, name="First", idempotency_key="e1")  # fmt: skip
    services.finetune_run(job_id=first.pk, hostname="w")
    first.refresh_from_db()
    assert first.metrics["hardware"] == "this server's CPU"
    second, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                           hyperparameters=FAST, name="Second", idempotency_key="e2")  # fmt: skip
    third, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                          hyperparameters=FAST, name="Third", idempotency_key="e3")  # fmt: skip
    assert (second.estimate["run_method"], second.estimate["run_runs"]) == ("calibrated", 1)
    # the same data and settings as the calibrating run: the estimate is that run's time (up to rounding)
    took = (first.finished_at - first.started_at).total_seconds()
    assert abs(second.estimate["run_seconds"] - took) < 0.05 * took + 0.05
    assert second.estimate["run_low"] < took < second.estimate["run_high"]
    # memory too: each stage's formula scaled by what the first run measured against it
    peaks = first.metrics["peak_memory"]
    assert (second.estimate["memory_method"], second.estimate["memory_runs"]) == ("calibrated", 1)
    stage = second.estimate["memory_stage"]
    assert abs(second.estimate["memory_bytes"] - peaks[stage]) <= 1  # the same data: the first run's peak
    assert second.estimate["memory_low"] <= max(peaks[s] for s in ("training", "evaluation", "index"))
    assert max(peaks[s] for s in ("training", "evaluation", "index")) <= second.estimate["memory_high"]
    assert selectors.job_queue_wait_seconds(job=second) == 0.0  # first in line, nothing running
    assert selectors.job_queue_wait_seconds(job=third) == pytest.approx(second.estimate["run_seconds"])
    client.force_login(cast.owner)
    page = client.get(f"/train/jobs/{third.pk}/").content.decode()
    assert "number 2 in line, about " in page and " before it starts" in page


def test_each_wizard_step_has_its_own_address(client, cast, tiny_base, version):
    client.force_login(cast.owner)
    first = client.get(WIZARD)
    assert (first.status_code, first["Location"]) == (302, "/train/new/?step=1")
    htmx = {"HTTP_HX_REQUEST": "true"}
    response = client.post(WIZARD, {"step": "1", "action": "next", "base_model": "tiny-base"}, **htmx)
    assert response["HX-Push-Url"] == "/train/new/?step=2"  # the address bar follows the step
    response = client.post(WIZARD, {"step": "2", "action": "next", "versions": [str(version.pk)]}, **htmx)
    assert response["HX-Push-Url"] == "/train/new/?step=3"

    # Back, then a reload: the address's step, with the choices kept; Forward again: step 3.
    back = client.get(WIZARD + "?step=2", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    assert "<html" in back.content.decode()  # a history restore gets the whole page
    assert "2. Which data does it learn from?" in back.content.decode()
    page = client.get(WIZARD + "?step=2").content.decode()
    assert f'value="{version.pk}" checked' in page
    assert "3. How your rows become training examples" in client.get(WIZARD + "?step=3").content.decode()
    # A step not reached yet shows the furthest reached; nonsense is the current step, not an error.
    assert "3. How your rows become training examples" in client.get(WIZARD + "?step=5").content.decode()
    assert client.get(WIZARD + "?step=abc")["Location"] == "/train/new/?step=3"

    # A page the browser went back to posts the step it shows, whatever step the session was on.
    client.get(WIZARD + "?step=3")
    response = client.post(WIZARD, {"step": "1", "action": "next", "base_model": "tiny-base"}, **htmx)
    assert "2. Which data does it learn from?" in response.content.decode()


def test_starting_over_asks_first_when_a_wizard_is_in_progress(client, cast, tiny_base, version):
    client.force_login(cast.owner)
    client.get(WIZARD + "?restart=1")
    post(client, step="1", action="next", base_model="tiny-base")
    post(client, step="2", action="next", versions=[str(version.pk)])

    ask = client.get(WIZARD + "?restart=1")
    page = ask.content.decode()
    assert ask.status_code == 200 and "Start a new fine-tune?" in page
    assert "you reached step 3 of 5 (Examples), with 1 datanet version chosen." in page
    assert 'href="?step=3" role="button" class="secondary outline">Continue where I left off</a>' in page
    assert client.session["finetune_wizard"]["reached"] == 3  # asking forgets nothing

    response = client.post(WIZARD, {"action": "restart"})
    assert response["Location"] == "/train/new/?step=1"
    state = client.session["finetune_wizard"]
    assert (state["step"], state["reached"], state["versions"]) == (1, 1, [])
    assert client.get(WIZARD + "?restart=1")["Location"] == "/train/new/?step=1"  # nothing to lose: no question
