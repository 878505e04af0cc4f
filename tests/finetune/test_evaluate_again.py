""" "Evaluate again" on a finished model: a test set chosen after training (datanet versions or an uploaded file),
answered by base and tuned and scored row by row; bad input refused before anything is created."""

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase
from rest_framework.test import APIClient

from datanets import services as datanet_services
from datanets.models import Datanet
from modelfactory import services
from modelfactory.models import FineTuneJob, ModelEvaluation
from modelfactory.selectors import finetune_rows
from modelfactory.services import evaluations
from tests.finetune.conftest import FACTS, FAST, launch_job, publish_version

pytestmark = pytest.mark.django_db

EXTRA = [
    ("What colour is the sea on Zorb?", "The sea on Zorb is orange."),
    ("How many legs does a Quell have?", "A Quell has six legs."),
]


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr(evaluations, "_enqueue", calls.append)
    return calls


@pytest.fixture
def finished(cast, tiny_base, version):
    job, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                        hyperparameters=FAST, name="Zorb expert", idempotency_key="e1")  # fmt: skip
    done = services.finetune_run(job_id=job.pk, hostname="w")
    assert done.status == FineTuneJob.Status.SUCCEEDED, done.message
    return done


def trained_questions(job, version) -> set[str]:
    held_out = {s["row_id"] for s in job.samples}
    return {r["content"]["instruction"] for r in finetune_rows(versions=[version])[0] if r["id"] not in held_out}


def request(user, job, **kwargs):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return services.evaluation_request(user=user, job_id=job.pk, **kwargs)


def test_a_datanet_version_as_test_set_is_scored_row_by_row_without_the_rows_trained_on(cast, finished, version,
                                                                                        queued):  # fmt: skip
    exam = publish_version(owner=cast.owner, contributors=[cast.owner], name="Zorb exam", rows=FACTS[:2] + EXTRA)
    evaluation = request(cast.owner, finished, version_ids=[exam.pk])
    assert (evaluation.status, evaluation.rows, evaluation.version) == ("queued", 4, finished.model_version)
    assert queued == [evaluation.pk]
    done = services.evaluation_run(evaluation_id=evaluation.pk)
    assert done.status == ModelEvaluation.Status.SUCCEEDED, done.message
    overlap = sum(1 for q, _ in FACTS[:2] if q in trained_questions(finished, version))
    assert overlap >= 1  # 2 of 10 rows are held out: at least one of the two was trained on
    assert (done.rows, done.overlap, done.progress) == (4, overlap, 1.0)
    assert done.metrics["answers_scored"] == len(done.samples) == 4 - overlap
    assert {"What colour is the sea on Zorb?", "How many legs does a Quell have?"} <= {
        s["prompt"] for s in done.samples
    }
    for sample in done.samples:
        assert set(sample) >= {"prompt", "reference", "base", "tuned", "base_exact", "tuned_exact", "base_f1",
                               "tuned_f1"}  # fmt: skip
        assert 0.0 <= sample["tuned_f1"] <= 1.0 and 0.0 <= sample["base_f1"] <= 1.0
    f1 = sum(s["tuned_f1"] for s in done.samples) / len(done.samples)
    assert done.metrics["token_f1"] == pytest.approx(f1)
    assert done.message.startswith(f"Finished: {4 - overlap} questions answered by both.")
    assert services.evaluation_run(evaluation_id=evaluation.pk) is None  # a second delivery does nothing


def test_a_test_set_that_cannot_fit_the_workers_memory_fails_clearly_and_keeps_nothing(cast, finished, queued,
                                                                                      settings, monkeypatch):  # fmt: skip
    """MF_MEMORY_LIMIT_MB under what the worker already holds: nothing is free, so not even one row fits alone."""
    from modelfactory.training import evaluate

    settings.MF_MEMORY_LIMIT_MB = 1
    ran = []
    monkeypatch.setattr(evaluate, "eval_loss", lambda *args, **kwargs: ran.append(1))
    evaluation = request(cast.owner, finished, upload=SimpleUploadedFile("exam.jsonl", b'{"instruction": "Hi?", '
                                                                         b'"output": "Hello."}'))  # fmt: skip
    done = services.evaluation_run(evaluation_id=evaluation.pk)
    assert ran == []  # refused before any pass
    assert (done.status, done.metrics, done.samples, done.rows) == ("failed", {}, [], 1)
    assert re.fullmatch(
        r"There is not enough memory for comparing the base model and the fine-tuned one on the test set: answering "
        r"its longest prompt \(\d+ tokens with the answer\) needs about \d+ MB on its own, and the worker has 0 MB "
        r"free, so nothing was evaluated\. Lower the maximum length \(rows longer than it are left out\) or leave "
        r"the longest rows out, then launch it again\.",
        done.message,
    )


def test_an_uploaded_file_is_a_test_set_and_several_evaluations_are_kept(cast, finished, queued):
    data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in EXTRA).encode()
    first = request(cast.owner, finished, upload=SimpleUploadedFile("exam.jsonl", data))
    assert (first.upload_name, first.rows, [r["id"] for r in first.upload_rows]) == ("exam.jsonl", 2, [1, 2])
    assert first.upload_rows[0] == {"id": 1, "kind": "instruction", "content": {"instruction": EXTRA[0][0],
                                                                               "output": EXTRA[0][1]}}  # fmt: skip
    chat = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in EXTRA
    ).encode()
    second = request(cast.owner, finished, upload=SimpleUploadedFile("chat.jsonl", chat))
    assert second.upload_rows[1]["kind"] == "chat"
    done = services.evaluation_run(evaluation_id=first.pk)
    assert done.status == "succeeded", done.message
    assert (done.rows, done.overlap, done.metrics["answers_scored"]) == (2, 0, 2)
    assert list(finished.model_version.evaluations.values_list("pk", flat=True)) == [second.pk, first.pk]


TEXT_MESSAGE = (
    "“Zorb prose” holds plain text, not questions with expected answers: a test set needs instruction or chat rows."
)


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (b"", "The file is empty."),
        (b'{"text": "Zorb is green."}\n', "The file has no row with a question and an expected answer (instruction and "
         "output, or messages with an assistant answer): line 1: the field 'instruction' is missing."),
        (b'{"instruction": "Q?", "output": ""}\n', "The file has no row with a question and an expected answer "
         "(instruction and output, or messages with an assistant answer): line 1: the expected answer is empty."),
    ],
)  # fmt: skip
def test_an_unusable_file_is_refused_before_anything_is_created(cast, finished, queued, upload, message):
    with pytest.raises(services.EvaluationRefused) as caught:
        request(cast.owner, finished, upload=SimpleUploadedFile("bad.jsonl", upload))
    assert caught.value.errors == {"file": message}
    assert ModelEvaluation.objects.count() == 0 and queued == []


def test_a_test_set_of_the_wrong_kind_or_not_usable_is_refused_before_anything_is_created(cast, finished, queued):
    prose = datanet_services.datanet_create(
        owner=cast.owner, name="Zorb prose", kind="text", summary="Text.", visibility=Datanet.Visibility.PUBLIC,
        policy=Datanet.Policy.OPEN,
    )  # fmt: skip
    contribution = datanet_services.contribution_create(
        datanet=prose, contributor=cast.owner, upload=SimpleUploadedFile("p.jsonl", b'{"text": "Zorb is green."}\n')
    )
    datanet_services.contribution_ingest(contribution_id=contribution.pk)
    prose_v1 = datanet_services.version_publish(datanet=prose, actor=cast.owner)
    private = publish_version(owner=cast.outsider, contributors=[cast.outsider], name="Secret exam",
                              visibility=Datanet.Visibility.PRIVATE, rows=EXTRA)  # fmt: skip
    cases = [
        ({"version_ids": [prose_v1.pk]}, {"test_versions": TEXT_MESSAGE}),
        ({}, {"test_versions": "Choose a datanet version or upload a file to evaluate on."}),
        ({"version_ids": [prose_v1.pk], "upload": SimpleUploadedFile("x.jsonl", b"x")},
         {"test_versions": "Choose datanet versions or upload a file, not both."}),
    ]  # fmt: skip
    for kwargs, errors in cases:
        with pytest.raises(services.EvaluationRefused) as caught:
            request(cast.owner, finished, **kwargs)
        assert caught.value.errors == errors
    with pytest.raises(services.EvaluationRefused) as caught:
        request(cast.owner, finished, version_ids=[private.pk])
    assert list(caught.value.errors) == ["test_versions"]
    with pytest.raises(services.EvaluationRefused) as caught:  # someone else's model
        request(cast.teammate, finished, version_ids=[prose_v1.pk])
    assert (caught.value.errors, caught.value.status) == ({"job": "You have no training job with this number."}, 404)
    assert ModelEvaluation.objects.count() == 0 and queued == []


def test_a_job_that_made_no_model_cannot_be_evaluated(cast, tiny_base, version, queued):
    job, _ = launch_job(cast.owner, base_model_slug="tiny-base", version_ids=[version.pk], preset="quick",
                        hyperparameters=FAST, idempotency_key="e2")  # fmt: skip
    with pytest.raises(services.EvaluationRefused) as caught:
        request(cast.owner, job, version_ids=[version.pk])
    assert caught.value.status == 409
    assert caught.value.errors == {"job": "Only a finished training job that made a model can be evaluated again."}
    assert ModelEvaluation.objects.count() == 0


def test_cancel_a_queued_or_running_evaluation(cast, finished, version, queued, monkeypatch):
    queued_one = request(cast.owner, finished, version_ids=[version.pk])
    with pytest.raises(ModelEvaluation.DoesNotExist):
        services.evaluation_cancel(user=cast.teammate, evaluation_id=queued_one.pk)
    cancelled = services.evaluation_cancel(user=cast.owner, evaluation_id=queued_one.pk)
    assert (cancelled.status, cancelled.message) == ("cancelled", "Cancelled before it started.")
    assert services.evaluation_run(evaluation_id=queued_one.pk) is None
    with pytest.raises(services.EvaluationRefused) as caught:
        services.evaluation_cancel(user=cast.owner, evaluation_id=queued_one.pk)
    assert caught.value.errors == {"status": "This evaluation has already ended (cancelled)."}
    # running: the cancel is seen at the next batch, and nothing is kept
    running = request(cast.owner, finished, version_ids=[version.pk])
    monkeypatch.setattr(evaluations, "PROGRESS_EVERY_S", 0.0)
    real_writer = evaluations._progress_writer

    def cancelling_writer(evaluation_id):
        write = real_writer(evaluation_id)

        def first_batch(fraction):
            services.evaluation_cancel(user=cast.owner, evaluation_id=evaluation_id)
            write(fraction)

        return first_batch

    monkeypatch.setattr(evaluations, "_progress_writer", cancelling_writer)
    done = services.evaluation_run(evaluation_id=running.pk)
    assert (done.status, done.message, done.samples, done.metrics) == ("cancelled", "Cancelled: nothing was kept.", [],
                                                                       {})  # fmt: skip


def test_a_silent_evaluation_is_failed_by_the_sweep(cast, finished, version, queued, settings):
    from datetime import timedelta

    from django.utils import timezone

    evaluation = request(cast.owner, finished, version_ids=[version.pk])
    old = timezone.now() - timedelta(seconds=settings.MF_JOB_STALE_SECONDS + 1)
    ModelEvaluation.objects.filter(pk=evaluation.pk).update(status="running", heartbeat_at=old)
    assert services.evaluation_reap_stale() == [evaluation.pk]
    evaluation.refresh_from_db()
    assert (evaluation.status, evaluation.message) == ("failed", evaluations.STALE_MESSAGE)
    assert services.evaluation_reap_stale() == []


def test_the_task_runs_on_the_gpu_queue(cast, finished, version, queued):
    from config.celery import app
    from modelfactory.tasks import evaluation_run_task

    assert app.amqp.router.route({}, "modelfactory.tasks.evaluation_run_task")["queue"].name == "gpu"
    evaluation = request(cast.owner, finished, version_ids=[version.pk])
    assert evaluation_run_task.run(evaluation.pk) == "succeeded"
    assert evaluation_run_task.run(evaluation.pk) == "not-claimed"


def test_api_evaluate_again_and_follow(cast, finished, version, queued):
    exam = publish_version(owner=cast.owner, contributors=[cast.owner], name="Zorb exam", rows=EXTRA)
    api = APIClient()
    api.force_authenticate(cast.owner)
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = api.post(f"/api/v1/finetunes/{finished.pk}/evaluations/", {"test_versions": [exam.pk]},
                            format="json")  # fmt: skip
    assert response.status_code == 202, response.content
    body = response.json()
    assert response["Location"] == f"http://testserver/api/v1/evaluations/{body['id']}/"
    assert (body["status"], body["rows"], body["model"], body["model_version"], body["test_versions"]) == (
        "queued",
        2,
        finished.model_version.model.slug,
        1,
        [exam.pk],
    )
    services.evaluation_run(evaluation_id=body["id"])
    detail = api.get(f"/api/v1/evaluations/{body['id']}/").json()
    assert (detail["status"], detail["progress"], detail["overlap"]) == ("succeeded", 1.0, 0)
    assert detail["totals"]["answers_scored"] == len(detail["samples"]) == 2
    assert set(detail["totals"]) == {"answers_scored", "base_exact_match", "exact_match", "base_token_f1", "token_f1",
                                     "base_eval_loss", "eval_loss"}  # fmt: skip
    listed = api.get(f"/api/v1/finetunes/{finished.pk}/evaluations/").json()
    assert [e["id"] for e in listed["results"]] == [body["id"]]
    assert "samples" not in listed["results"][0]
    other = APIClient()
    other.force_authenticate(cast.teammate)
    assert other.get(f"/api/v1/evaluations/{body['id']}/").status_code == 404
    assert other.post(f"/api/v1/evaluations/{body['id']}/cancel/").status_code == 404
    response = api.post(f"/api/v1/evaluations/{body['id']}/cancel/")
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "This evaluation has already ended (finished)."


def test_api_refusals_create_nothing(cast, finished, queued):
    api = APIClient()
    api.force_authenticate(cast.owner)
    url = f"/api/v1/finetunes/{finished.pk}/evaluations/"
    response = api.post(url, {}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "test_versions": ["Choose a datanet version or upload a file to evaluate on."]
    }
    response = api.post(url, {"test_versions": [999_999]}, format="json")
    assert response.status_code == 400 and list(response.json()["error"]["details"]) == ["test_versions"]
    response = api.post(url, {"file": SimpleUploadedFile("bad.jsonl", b'{"text": "x"}\n')}, format="multipart")
    assert response.status_code == 400 and list(response.json()["error"]["details"]) == ["file"]
    other = APIClient()
    other.force_authenticate(cast.teammate)
    assert other.post(url, {"test_versions": [1]}, format="json").status_code == 404
    assert other.get(url).status_code == 404
    assert ModelEvaluation.objects.count() == 0 and queued == []


def test_api_upload_a_file(cast, finished, queued):
    api = APIClient()
    api.force_authenticate(cast.owner)
    data = "\n".join(json.dumps({"instruction": q, "output": a}) for q, a in EXTRA).encode()
    response = api.post(f"/api/v1/finetunes/{finished.pk}/evaluations/",
                        {"file": SimpleUploadedFile("exam.jsonl", data)}, format="multipart")  # fmt: skip
    assert response.status_code == 202, response.content
    assert (response.json()["upload_name"], response.json()["rows"]) == ("exam.jsonl", 2)
    assert ModelEvaluation.objects.count() == 1


def test_page_evaluate_again_and_follow(client, cast, finished, version, queued):
    exam = publish_version(owner=cast.owner, contributors=[cast.owner], name="Zorb exam", rows=EXTRA)
    client.force_login(cast.owner)
    page = client.get(f"/train/jobs/{finished.pk}/").content.decode()
    assert 'id="evaluate-again"' in page and f'value="{exam.pk}"' in page
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post(f"/train/jobs/{finished.pk}/evaluations/", {"test_version": exam.pk})
    evaluation = ModelEvaluation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/train/jobs/{finished.pk}/evaluations/{evaluation.pk}/"
    page = client.get(response["Location"], headers={"HX-Request": "true"}, query_params={"partial": "progress"})
    assert page.status_code == 200 and 'hx-trigger="every 2s"' in page.content.decode()
    services.evaluation_run(evaluation_id=evaluation.pk)
    page = client.get(response["Location"], headers={"HX-Request": "true"}, query_params={"partial": "progress"})
    assert page.status_code == 286  # stops polling; the whole page reloads with the result
    page = client.get(response["Location"]).content.decode()
    assert "What colour is the sea on Zorb?" in page and "Zorb exam v1" in page
    listing = client.get(f"/train/jobs/{finished.pk}/").content.decode()
    assert f"/train/jobs/{finished.pk}/evaluations/{evaluation.pk}/" in listing
    # bad input: the page says why, nothing created
    response = client.post(f"/train/jobs/{finished.pk}/evaluations/", {"file": SimpleUploadedFile("a.jsonl", b"")})
    assert response.status_code == 302 and ModelEvaluation.objects.count() == 1
    page = client.get(response["Location"]).content.decode()
    assert "The file is empty." in page
    client.force_login(cast.teammate)
    assert client.get(f"/train/jobs/{finished.pk}/evaluations/{evaluation.pk}/").status_code == 404
    assert client.post(f"/train/jobs/{finished.pk}/evaluations/", {"test_version": exam.pk}).status_code == 404


def test_a_file_over_the_limit_is_refused_unread(cast, finished, queued, monkeypatch):
    monkeypatch.setattr(evaluations, "MAX_UPLOAD_BYTES", 10)

    class Unreadable(SimpleUploadedFile):
        def read(self, *args):
            pytest.fail("the file was read")

    upload = Unreadable("big.jsonl", b'{"instruction": "Q?", "output": "A."}\n')
    with pytest.raises(services.EvaluationRefused) as caught:
        request(cast.owner, finished, upload=upload)
    assert caught.value.errors == {"file": evaluations.TOO_BIG}
    assert ModelEvaluation.objects.count() == 0 and queued == []
