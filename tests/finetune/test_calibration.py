"""A gpu worker measures its training throughput per base model when it starts (services.calibration), and the
review step's first estimate starts from that measured rate instead of the FLOP-rate guess."""

from types import SimpleNamespace

import pytest

from modelfactory import selectors, services
from modelfactory.apps import calibrate_on_start
from modelfactory.models import BaseModel
from modelfactory.training.estimate import MEASURED_FACTOR
from modelfactory.training.presets import validate_hyperparameters
from tests.finetune.conftest import FAST, launch_job

CPU = "this server's CPU"


def test_a_worker_measures_each_active_base_model_once_a_week_and_keeps_the_rate(tiny_base):
    measured = services.finetune_calibrate()
    assert list(measured) == ["tiny-base"] and measured["tiny-base"] > 0
    kept = BaseModel.objects.get(pk=tiny_base.pk).calibration
    assert list(kept) == [CPU] and kept[CPU]["tokens_per_s"] == measured["tiny-base"]
    assert services.finetune_calibrate() == {}  # measured minutes ago: a restart keeps it
    again = services.finetune_calibrate(force=True)
    assert list(again) == ["tiny-base"]
    assert BaseModel.objects.get(pk=tiny_base.pk).calibration[CPU]["tokens_per_s"] == again["tiny-base"]


def test_a_base_model_that_cannot_load_is_skipped_and_the_others_are_measured(tiny_base, caplog):
    broken = BaseModel.objects.create(slug="gone", name="Gone", path="/nonexistent/model", parameters=1,
                                      context_length=128)  # fmt: skip
    BaseModel.objects.create(slug="hidden", name="Hidden", path=tiny_base.path, parameters=1, context_length=128,
                             is_active=False)  # fmt: skip
    measured = services.finetune_calibrate()
    assert list(measured) == ["tiny-base"]  # not the broken one, not the one the wizard does not offer
    assert BaseModel.objects.get(pk=broken.pk).calibration == {}  # nothing half-written
    assert "calibrating gone on this server's CPU failed" in caplog.text


def test_the_first_estimate_uses_the_measured_rate_then_the_finished_runs_take_over(client, cast, tiny_base, version):
    clean, _ = validate_hyperparameters(FAST, preset="quick")
    rough = selectors.wizard_estimate(base=tiny_base, versions=[version], hyperparameters=clean)
    assert (rough["run_method"], rough["method"]) == ("rough", "constant")

    BaseModel.objects.filter(pk=tiny_base.pk).update(calibration={CPU: {"tokens_per_s": 500.0, "measured_at": "x"}})
    tiny_base.refresh_from_db()
    measured = selectors.wizard_estimate(base=tiny_base, versions=[version], hyperparameters=clean)
    assert (measured["run_method"], measured["method"], measured["run_runs"]) == ("measured", "measured", 0)
    assert measured["tokens_per_s"] == 500.0 and measured["seconds"] == measured["tokens"] / 500.0
    assert measured["run_low"] == pytest.approx(measured["run_seconds"] / MEASURED_FACTOR)
    assert measured["run_high"] == pytest.approx(measured["run_seconds"] * MEASURED_FACTOR)

    job, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                        hyperparameters=FAST, name="First", idempotency_key="c1")  # fmt: skip
    assert job.estimate["run_method"] == "measured"  # kept with the job, for its page
    services.finetune_run(job_id=job.pk, hostname="w")
    client.force_login(cast.owner)
    page = client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "(from this computer's measured speed: no earlier run)" in page
    after = selectors.wizard_estimate(base=tiny_base, versions=[version], hyperparameters=clean)
    assert (after["run_method"], after["run_runs"], after["method"]) == ("calibrated", 1, "constant")


def test_only_a_gpu_worker_asks_for_the_measurement_when_it_starts(monkeypatch, settings):
    sent = []
    monkeypatch.setattr("modelfactory.tasks.finetune_calibrate_task.delay", lambda: sent.append(1))

    def worker(*queues):
        return SimpleNamespace(task_consumer=SimpleNamespace(queues=[SimpleNamespace(name=q) for q in queues]))

    settings.MF_CALIBRATE_ON_START = True
    assert calibrate_on_start(sender=worker("default", "inference")) is False and sent == []
    assert calibrate_on_start(sender=worker("gpu")) is True and sent == [1]
    settings.MF_CALIBRATE_ON_START = False
    assert calibrate_on_start(sender=worker("gpu")) is False and sent == [1]
