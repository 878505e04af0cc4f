import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from datanets import services
from datanets.models import Contribution, Datanet, Record
from tests.datanets.conftest import QA, jsonl, upload
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_user(cast):
    def make(user):
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


def test_create_list_get_patch_datanet(as_user, cast):
    owner = as_user(cast.owner)
    response = owner.post(
        "/api/v1/datanets/",
        {
            "name": "Home gardening",
            "kind": "instruction",
            "summary": "Growing food at home.",
            "tags": ["gardening"],
            "visibility": "public",
        },
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "home-gardening"
    assert (body["kind"], body["visibility"], body["policy"], body["tags"], body["owner"]) == (
        "instruction",
        "public",
        "approval",
        ["gardening"],
        "owner",
    )
    listed = as_user(cast.outsider).get("/api/v1/datanets/?q=garden").json()
    assert [d["slug"] for d in listed["results"]] == ["home-gardening"]
    response = owner.patch(
        "/api/v1/datanets/home-gardening/",
        {"summary": "Food at home.", "curators": ["teammate"], "flag_actions": {"email": "drop"}},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["curators"] == ["teammate"]
    assert response.json()["flag_actions"]["email"] == "drop"
    denied = as_user(cast.outsider).patch("/api/v1/datanets/home-gardening/", {"summary": "mine"}, format="json")
    assert denied.status_code == 403
    assert denied.json()["error"] == {
        "code": "permission_denied",
        "message": "Only the datanet's owner and curators can change it.",
        "details": {},
    }
    assert Datanet.objects.get().summary == "Food at home."


def test_create_validation_error_shape(as_user, cast):
    response = as_user(cast.owner).post("/api/v1/datanets/", {"name": "x", "kind": "poems"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert sorted(error["details"]) == ["kind", "summary", "visibility"]


def test_private_datanet_is_invisible_to_outsiders(as_user, cast):
    services.datanet_create(owner=cast.owner, name="Secret", kind="text", summary="s", visibility="private")
    assert as_user(cast.outsider).get("/api/v1/datanets/secret/").status_code == 404
    assert as_user(cast.outsider).get("/api/v1/datanets/").json()["results"] == []
    assert as_user(cast.owner).get("/api/v1/datanets/secret/").status_code == 200
    assert as_user(cast.staff).get("/api/v1/datanets/secret/").status_code == 200
    assert APIClient().get("/api/v1/datanets/").status_code == 401


GARDEN = {"name": "Home gardening", "kind": "instruction", "summary": "Growing food.", "visibility": "public",
          "tags": ["b", "a"]}  # fmt: skip


def test_creating_a_datanet_twice_with_one_key_gives_one_datanet(as_user, cast):
    owner = as_user(cast.owner)
    first = owner.post("/api/v1/datanets/", GARDEN, format="json", HTTP_IDEMPOTENCY_KEY="garden-1")
    again = owner.post("/api/v1/datanets/", {**GARDEN, "tags": ["a", "b"]}, format="json",
                       HTTP_IDEMPOTENCY_KEY="garden-1")  # fmt: skip
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json() == again.json()
    assert first["Location"] == again["Location"] == "http://testserver/api/v1/datanets/home-gardening/"
    assert Datanet.objects.count() == 1
    # another owner's key is another key
    other = as_user(cast.teammate).post("/api/v1/datanets/", GARDEN, format="json", HTTP_IDEMPOTENCY_KEY="garden-1")
    assert other.status_code == 201 and other.json()["slug"] == "home-gardening-2"
    # without a key, two requests are two datanets
    assert owner.post("/api/v1/datanets/", GARDEN, format="json").json()["slug"] == "home-gardening-3"


def test_a_datanet_key_reused_with_a_different_request_is_409_and_creates_nothing(as_user, cast):
    owner = as_user(cast.owner)
    owner.post("/api/v1/datanets/", GARDEN, format="json", HTTP_IDEMPOTENCY_KEY="k")
    before = list(Datanet.objects.values())
    response = owner.post("/api/v1/datanets/", {**GARDEN, "summary": "Other"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "idempotency_conflict",
            "message": "The Idempotency-Key “k” was already used with a different request; send a new key, or the "
            "same request to get the first answer back.",
            "details": {},
        }
    }
    assert list(Datanet.objects.values()) == before


def test_records_refuse_an_unknown_status(as_user, cast, datanet):
    response = as_user(cast.owner).get(f"/api/v1/datanets/{datanet.slug}/records/?status=everything")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"status": ["“everything” is not one of: accepted, pending."]}


def test_upload_review_publish_and_records(as_user, cast, datanet, django_capture_on_commit_callbacks, _no_broker):
    contributor = as_user(cast.teammate)
    with django_capture_on_commit_callbacks(execute=True):
        response = contributor.post(
            f"/api/v1/datanets/{datanet.slug}/contributions/",
            {"file": upload("qa.jsonl", jsonl(QA))},
            format="multipart",
        )
    assert response.status_code == 201
    body = response.json()
    assert response["Location"] == f"http://testserver/api/v1/contributions/{body['id']}/"
    assert (body["status"], body["original_name"], body["report"]["rows_total"]) == ("uploaded", "qa.jsonl", 0)
    assert _no_broker == [body["id"]]
    services.contribution_ingest(contribution_id=body["id"])

    detail = contributor.get(f"/api/v1/contributions/{body['id']}/").json()
    assert detail["status"] == "needs_review"
    report = detail["report"]
    assert (report["rows_total"], report["rows_accepted"], report["errors"], report["duplicates"], report["flags"]) == (
        4,
        4,
        [],
        [],
        {},
    )
    assert as_user(cast.outsider).get(f"/api/v1/contributions/{body['id']}/").status_code == 404

    assert contributor.post(f"/api/v1/contributions/{body['id']}/approve/").status_code == 403
    approved = as_user(cast.owner).post(f"/api/v1/contributions/{body['id']}/approve/", {}, format="json")
    assert approved.status_code == 200 and approved.json()["status"] == "accepted"

    assert contributor.post(f"/api/v1/datanets/{datanet.slug}/versions/", {}, format="json").status_code == 403
    published = as_user(cast.owner).post(f"/api/v1/datanets/{datanet.slug}/versions/", {"notes": "v1"}, format="json")
    assert published.status_code == 201
    v = published.json()
    assert published["Location"] == f"http://testserver/api/v1/datanets/{datanet.slug}/versions/1/"
    assert as_user(cast.outsider).get(published["Location"]).json() == v
    assert as_user(cast.outsider).get(f"/api/v1/datanets/{datanet.slug}/versions/2/").status_code == 404
    assert (v["number"], v["row_count"], v["contributor_count"], len(v["manifest_hash"])) == (1, 4, 1, 64)
    again = as_user(cast.owner).post(f"/api/v1/datanets/{datanet.slug}/versions/", {}, format="json")
    assert again.status_code == 400
    assert again.json()["error"]["message"] == "Nothing changed since version 1; there is nothing new to publish."
    versions = as_user(cast.outsider).get(f"/api/v1/datanets/{datanet.slug}/versions/").json()
    assert [x["manifest_hash"] for x in versions["results"]] == [v["manifest_hash"]]

    records = as_user(cast.outsider).get(f"/api/v1/datanets/{datanet.slug}/records/?q=garlic").json()
    assert records["count"] == 1
    assert records["results"][0]["content"] == QA[0]
    assert records["results"][0]["contributor"] == "teammate"
    pending = as_user(cast.outsider).get(f"/api/v1/datanets/{datanet.slug}/records/?status=pending")
    assert pending.status_code == 403


def test_reject_needs_a_reason(as_user, cast, datanet):
    c = services.contribution_create(datanet=datanet, contributor=cast.teammate, upload=upload("a.jsonl", jsonl(QA)))
    services.contribution_ingest(contribution_id=c.pk)
    owner = as_user(cast.owner)
    response = owner.post(f"/api/v1/contributions/{c.pk}/reject/", {"reason": ""}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "reason_required"
    assert Contribution.objects.get().status == "needs_review"
    response = owner.post(f"/api/v1/contributions/{c.pk}/reject/", {"reason": "Off topic"}, format="json")
    assert response.json()["status"] == "rejected" and response.json()["message"] == "Off topic"
    assert set(Record.objects.values_list("status", flat=True)) == {"rejected"}


def test_upload_over_the_limit_is_413_and_stores_nothing(as_user, cast, datanet, settings):
    settings.MF_UPLOAD_MAX_BYTES = 2048
    response = as_user(cast.teammate).post(
        f"/api/v1/datanets/{datanet.slug}/contributions/",
        {"file": upload("big.jsonl", b"y" * 50_000)},
        format="multipart",
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert not Contribution.objects.exists()


def test_duplicate_upload_is_409(as_user, cast, datanet):
    client = as_user(cast.teammate)
    url = f"/api/v1/datanets/{datanet.slug}/contributions/"
    assert client.post(url, {"file": upload("a.jsonl", jsonl(QA))}, format="multipart").status_code == 201
    response = client.post(url, {"file": upload("b.jsonl", jsonl(QA))}, format="multipart")
    assert response.status_code == 409
    assert response.json()["error"]["message"].startswith("You already uploaded this exact file to this datanet on ")


def test_private_datanet_refuses_outside_contributions(as_user, cast):
    services.datanet_create(owner=cast.owner, name="Secret", kind="text", summary="s", visibility="private")
    response = as_user(cast.outsider).post(
        "/api/v1/datanets/secret/contributions/", {"file": upload("a.txt", b"Hello there.")}, format="multipart"
    )
    assert response.status_code == 404
    assert not Contribution.objects.exists()


def test_writes_are_throttled(as_user, cast, monkeypatch):
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "writes": "2/min"})
    client = as_user(cast.owner)
    body = {"kind": "text", "summary": "s", "visibility": "public"}
    statuses = [client.post("/api/v1/datanets/", {"name": f"N{i}", **body}).status_code for i in range(3)]
    assert statuses == [201, 201, 429]
    assert client.get("/api/v1/datanets/").status_code == 200


@pytest.mark.skipif(connection.vendor != "postgresql", reason="real concurrency needs PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_with_one_key_give_one_datanet():
    owner = UserFactory(username="racer")
    threads = 8
    barrier = threading.Barrier(threads, timeout=60)

    def create(_):
        try:
            client = APIClient()
            client.force_authenticate(owner)
            barrier.wait()
            response = client.post("/api/v1/datanets/", GARDEN, format="json", HTTP_IDEMPOTENCY_KEY="race-1")
            return response.status_code, response.json()["slug"]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(create, range(threads)))
    assert answers == [(201, "home-gardening")] * threads
    assert list(Datanet.objects.values_list("slug", flat=True)) == ["home-gardening"]


def test_a_form_patch_applies_flag_actions_sent_as_one_json_part(as_user, cast, datanet):
    owner = as_user(cast.owner)
    response = owner.patch(
        f"/api/v1/datanets/{datanet.slug}/", {"flag_actions": '{"email": "drop"}'}, format="multipart"
    )
    assert response.status_code == 200 and response.json()["flag_actions"]["email"] == "drop"
    before = list(Datanet.objects.values())
    response = owner.patch(
        f"/api/v1/datanets/{datanet.slug}/", {"flag_actions": '{"email": "AAA"}'}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"flag_actions.email": ['"AAA" is not a valid choice.']}
    assert list(Datanet.objects.values()) == before


def test_an_empty_curators_part_in_a_form_is_refused_and_keeps_the_curators(as_user, cast, datanet):
    owner = as_user(cast.owner)
    assert (
        owner.patch(f"/api/v1/datanets/{datanet.slug}/", {"curators": ["teammate"]}, format="json").status_code == 200
    )
    response = owner.patch(f"/api/v1/datanets/{datanet.slug}/", {"curators": ""}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"curators.0": ["This field may not be blank."]}
    assert list(Datanet.objects.get(pk=datanet.pk).curators.values_list("username", flat=True)) == ["teammate"]
    emptied = owner.patch(f"/api/v1/datanets/{datanet.slug}/", {"curators": []}, format="json")
    assert emptied.status_code == 200 and emptied.json()["curators"] == []


def test_an_undocumented_query_parameter_is_refused_by_name(as_user, cast, datanet):
    response = as_user(cast.owner).get(f"/api/v1/datanets/{datanet.slug}/records/?stauts=pending")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid",
            "message": "Some values are not valid: stauts",
            "details": {
                "stauts": ["Unknown query parameter 'stauts'. This operation accepts: page, page_size, q, status."]
            },
        }
    }
    ok = as_user(cast.owner).get(f"/api/v1/datanets/{datanet.slug}/records/?status=accepted&format=json")
    assert ok.status_code == 200
