import json

import pytest

from datanets.models import Datanet, DatanetVersion
from modelfactory.models import FineTuneJob
from tests.finetune.conftest import FAST, publish_version

pytestmark = pytest.mark.django_db


def body(version, **extra):
    return {"base_model": "tiny-base", "datanet_versions": [version.pk], "preset": "quick", "hyperparameters": FAST,
            **extra}  # fmt: skip


def test_launch_follow_and_cancel(api_client, cast, tiny_base, version, enqueued, django_capture_on_commit_callbacks):
    api_client.force_authenticate(cast.owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post("/api/v1/finetunes/", body(version, name="API job"), format="json")
    assert response.status_code == 201
    job = response.json()
    assert (job["status"], job["name"], job["queue_position"], job["model"]) == ("queued", "API job", 1, None)
    assert job["phase"] == "queued"
    assert job["datanet_versions"] == [version.pk]
    assert enqueued == [(job["id"], False)]

    detail = api_client.get(f"/api/v1/finetunes/{job['id']}/").json()
    assert detail["progress"] == 0.0 and detail["metrics"] == {}

    response = api_client.post(f"/api/v1/finetunes/{job['id']}/cancel/", {}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    response = api_client.post(f"/api/v1/finetunes/{job['id']}/cancel/", {"mode": "stop"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"status": ["This job has already ended (cancelled)."]}


def test_idempotency_key_header_returns_the_same_job(api_client, cast, tiny_base, version):
    api_client.force_authenticate(cast.owner)
    first = api_client.post("/api/v1/finetunes/", body(version), format="json", HTTP_IDEMPOTENCY_KEY="abc")
    again = api_client.post("/api/v1/finetunes/", body(version), format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert (first.status_code, again.status_code) == (201, 201)  # a replay answers as the first request did
    assert first.json()["id"] == again.json()["id"]
    location = f"http://testserver/api/v1/finetunes/{first.json()['id']}/"
    assert first["Location"] == again["Location"] == location
    assert FineTuneJob.objects.count() == 1


def test_an_idempotency_key_header_too_long_is_refused_naming_it(api_client, cast, tiny_base, version):
    api_client.force_authenticate(cast.owner)
    response = api_client.post("/api/v1/finetunes/", body(version), format="json", HTTP_IDEMPOTENCY_KEY="k" * 65)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"Idempotency-Key": ["Use 1 to 64 printable characters."]}
    assert FineTuneJob.objects.count() == 0


@pytest.mark.parametrize(
    "change",
    [
        {"base_model": "other-base"},
        {"preset": "balanced"},
        {"hyperparameters": {**FAST, "epochs": 4}},
        {"hyperparameters": {}},
        {"name": "Another job"},
        {"datanet_versions": [999]},
    ],
    ids=["base_model", "preset", "hyperparameters", "no hyperparameters", "name", "datanet_versions"],
)
def test_idempotency_key_reused_with_a_different_request_is_409(api_client, cast, tiny_base, version, enqueued, change):
    api_client.force_authenticate(cast.owner)
    first = api_client.post("/api/v1/finetunes/", body(version), format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert first.status_code == 201
    before = list(FineTuneJob.objects.values()), len(enqueued)

    response = api_client.post("/api/v1/finetunes/", {**body(version), **change}, format="json",
                               HTTP_IDEMPOTENCY_KEY="abc")  # fmt: skip
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "idempotency_conflict",
            "message": "The Idempotency-Key “abc” was already used with a different request; send a new key, or the "
            "same request to get the first answer back.",
            "details": {},
        }
    }
    assert (list(FineTuneJob.objects.values()), len(enqueued)) == before

    # The key in the body is the same key: the same conflict.
    response = api_client.post("/api/v1/finetunes/", {**body(version), **change, "idempotency_key": "abc"},
                               format="json")  # fmt: skip
    assert response.status_code == 409
    assert (list(FineTuneJob.objects.values()), len(enqueued)) == before


def test_idempotency_key_with_the_same_request_in_another_spelling_returns_the_same_job(
    api_client, cast, tiny_base, version
):
    """Key order in the JSON, repeated version ids and a name's surrounding spaces do not make another request."""
    api_client.force_authenticate(cast.owner)
    first = api_client.post("/api/v1/finetunes/", body(version, name="Job"), format="json", HTTP_IDEMPOTENCY_KEY="k")
    again = {
        "name": "  Job ",
        "hyperparameters": dict(reversed(list(FAST.items()))),
        "datanet_versions": [version.pk, version.pk],
        "preset": "quick",
        "base_model": "tiny-base",
    }
    response = api_client.post("/api/v1/finetunes/", again, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert (first.status_code, response.status_code) == (201, 201)
    assert response.json()["id"] == first.json()["id"]
    assert FineTuneJob.objects.count() == 1


def test_another_user_may_use_the_same_key(api_client, cast, tiny_base, version):
    api_client.force_authenticate(cast.owner)
    assert (
        api_client.post("/api/v1/finetunes/", body(version), format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    )
    api_client.force_authenticate(cast.teammate)
    response = api_client.post(
        "/api/v1/finetunes/", body(version, name="Mine"), format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert response.status_code == 201
    assert FineTuneJob.objects.count() == 2


def test_the_schema_documents_the_conflict(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    launch = schema["paths"]["/api/v1/finetunes/"]["post"]
    assert launch["responses"]["409"]["description"] == (
        "The Idempotency-Key was used before with a different request; nothing was created."
    )
    assert "200" not in launch["responses"]
    assert "Idempotency-Key" in [p["name"] for p in launch["parameters"]]


def test_bad_launch_names_each_field_and_creates_nothing(api_client, cast, tiny_base, version):
    api_client.force_authenticate(cast.owner)
    response = api_client.post(
        "/api/v1/finetunes/", body(version, hyperparameters={"epochs": 99, "max_length": 1000}), format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "hyperparameters.epochs": ["must be between 1 and 20"],  # a list of messages, as for every field
        "hyperparameters.max_length": ["must be at most 256, the longest input Tiny base can read"],
    }
    response = api_client.post("/api/v1/finetunes/", {"datanet_versions": []}, format="json")
    assert response.json()["error"]["details"] == {"datanet_versions": ["This list may not be empty."]}
    response = api_client.post("/api/v1/finetunes/", {"datanet_versions": [version.pk]}, format="json")
    assert response.json()["error"]["details"] == {"base_model": ["This field is required (or give from_model)."]}
    assert FineTuneJob.objects.count() == 0


def test_jobs_are_private_to_their_owner(api_client, cast, tiny_base, version):
    api_client.force_authenticate(cast.owner)
    job_id = api_client.post("/api/v1/finetunes/", body(version), format="json").json()["id"]
    api_client.force_authenticate(cast.outsider)
    assert api_client.get("/api/v1/finetunes/").json()["count"] == 0
    assert api_client.get(f"/api/v1/finetunes/{job_id}/").status_code == 404
    assert api_client.post(f"/api/v1/finetunes/{job_id}/cancel/", {}, format="json").status_code == 404
    assert FineTuneJob.objects.get().status == "queued"


def test_someone_elses_private_version_is_answered_as_a_missing_one(api_client, cast, tiny_base):
    private = publish_version(
        owner=cast.teammate, contributors=[cast.teammate], name="Secret plans", visibility=Datanet.Visibility.PRIVATE
    )
    missing = DatanetVersion.objects.order_by("-pk").first().pk + 1
    api_client.force_authenticate(cast.outsider)
    hidden = api_client.post("/api/v1/finetunes/", {**body(private), "datanet_versions": [private.pk]}, format="json")
    absent = api_client.post("/api/v1/finetunes/", {**body(private), "datanet_versions": [missing]}, format="json")
    assert (hidden.status_code, absent.status_code) == (400, 400)
    # The same answer, the id aside, and the datanet's name nowhere in it.
    assert hidden.json() == _with_id(absent.json(), missing, private.pk)
    assert hidden.json()["error"]["details"] == {"datanet_versions": [f"There is no datanet version {private.pk}."]}
    assert "Secret" not in hidden.content.decode() and "private" not in hidden.content.decode()
    assert FineTuneJob.objects.count() == 0


def _with_id(payload, old: int, new: int):
    return json.loads(json.dumps(payload).replace(f"version {old}", f"version {new}"))
