import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from datanets import services
from datanets.models import Contribution, Datanet
from tests.datanets.conftest import QA, ingest, jsonl, upload

pytestmark = pytest.mark.django_db


def test_list_search_tags_and_partial(client, cast, datanet):
    services.datanet_create(owner=cast.owner, name="Beekeeping", kind="text", summary="Bees.", tags=["bees"])
    services.datanet_create(owner=cast.owner, name="Hidden", kind="text", summary="x", visibility="private")
    page = client.get("/datanets/").content.decode()
    assert "Home gardening" in page and "Beekeeping" in page and "Hidden" not in page
    assert "#vegetables" in page
    assert "Beekeeping" not in client.get("/datanets/?tag=vegetables").content.decode()
    partial = client.get("/datanets/?q=bee", HTTP_HX_REQUEST="true")
    body = partial.content.decode()
    assert body.lstrip().startswith('<div id="results">') and "Beekeeping" in body and "Home gardening" not in body
    assert "HX-Request" in partial["Vary"]


def test_list_query_count_does_not_grow_with_datanets(client, cast, datanet):
    with CaptureQueriesContext(connection) as few:
        client.get("/datanets/")
    for i in range(5):
        services.datanet_create(owner=cast.owner, name=f"Net {i}", kind="text", summary="s", tags=["t"])
    with CaptureQueriesContext(connection) as many:
        client.get("/datanets/")
    assert len(many) == len(few)


def test_create_page(client, cast):
    client.force_login(cast.owner)
    response = client.post(
        "/datanets/new/",
        {
            "name": "Orchard care",
            "kind": "instruction",
            "summary": "Fruit trees.",
            "licence": "CC-BY-4.0",
            "visibility": "public",
            "policy": "open",
            "tags": "fruit, trees",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/datanets/orchard-care/"
    assert sorted(Datanet.objects.get().tags.values_list("name", flat=True)) == ["fruit", "trees"]
    assert client.get("/datanets/new/").status_code == 200


def test_create_requires_login(client):
    assert client.get("/datanets/new/").status_code == 302


def test_upload_page_then_progress_polling_stops_with_286(client, cast, datanet):
    client.force_login(cast.teammate)
    assert client.get(f"/datanets/{datanet.slug}/upload/").status_code == 200
    response = client.post(f"/datanets/{datanet.slug}/upload/", {"file": upload("qa.jsonl", jsonl(QA))})
    c = Contribution.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/datanets/contributions/{c.pk}/"
    polling = client.get(f"/datanets/contributions/{c.pk}/", HTTP_HX_REQUEST="true")
    assert polling.status_code == 200
    assert 'hx-trigger="every 1s"' in polling.content.decode() and "<progress" in polling.content.decode()
    assert "Uploaded</span>\n    — waiting for a worker to start checking it." in polling.content.decode()
    services.contribution_ingest(contribution_id=c.pk)
    done = client.get(f"/datanets/contributions/{c.pk}/", HTTP_HX_REQUEST="true")
    assert done.status_code == 286
    assert "hx-trigger" not in done.content.decode() and "Waiting for review" in done.content.decode()


def test_column_mapping_form_on_the_report_page(client, cast, datanet):
    c = ingest(datanet, cast.teammate, "qa.csv", b"ask,reply_text\nWhen to sow peas?,Early spring.\n")
    client.force_login(cast.teammate)
    page = client.get(f"/datanets/contributions/{c.pk}/").content.decode()
    assert "Which column holds each field?" in page
    response = client.post(f"/datanets/contributions/{c.pk}/retry/", {"instruction": "ask", "output": "reply_text"})
    assert response.status_code == 302
    c.refresh_from_db()
    assert (c.status, c.column_mapping) == ("uploaded", {"instruction": "ask", "output": "reply_text"})


def test_review_queue_approve_reject_and_permissions(client, cast, datanet):
    a = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA[:2]))
    b = ingest(datanet, cast.outsider, "b.jsonl", jsonl(QA[2:]))
    client.force_login(cast.outsider)
    denied = client.get(f"/datanets/{datanet.slug}/review/")
    assert denied.status_code == 403  # the datanet is public: say why, not "no such datanet"
    assert "Only this datanet&#x27;s curators can review its contributions." in denied.content.decode()
    assert [t.name for t in denied.templates][:2] == ["403.html", "base.html"]
    assert client.get(f"/datanets/contributions/{a.pk}/").status_code == 404
    client.post(f"/datanets/contributions/{b.pk}/approve/")
    b.refresh_from_db()
    assert b.status == "needs_review"

    client.force_login(cast.owner)
    page = client.get(f"/datanets/{datanet.slug}/review/").content.decode()
    assert "a.jsonl" in page and "b.jsonl" in page
    client.post(f"/datanets/contributions/{a.pk}/approve/")
    client.post(f"/datanets/contributions/{b.pk}/reject/", {"reason": "Duplicates a book."})
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, b.status, b.message) == ("accepted", "rejected", "Duplicates a book.")


def test_versions_page_publish_and_diff(client, cast, datanet):
    services.contribution_approve(contribution=ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA)), curator=cast.owner)
    client.force_login(cast.owner)
    response = client.post(f"/datanets/{datanet.slug}/versions/", {"notes": "First"})
    assert response.status_code == 302
    page = client.get(f"/datanets/{datanet.slug}/versions/1/").content.decode()
    assert "+4</span> rows" in page and datanet.versions.get().manifest_hash in page
    assert "4 rows from 1 contributor, " in page
    again = client.post(f"/datanets/{datanet.slug}/versions/", {"notes": ""})
    assert again.status_code == 400 and "Nothing changed since version 1" in again.content.decode()
    assert client.get(f"/datanets/{datanet.slug}/contributors/").status_code == 200
    csv_body = b"".join(client.get(f"/datanets/{datanet.slug}/export.csv?version=1").streaming_content).decode()
    assert len(csv_body.strip().splitlines()) == 5


def test_detail_page_stats_chart_and_row_search(client, cast, datanet):
    services.contribution_approve(contribution=ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA)), curator=cast.owner)
    page = client.get(f"/datanets/{datanet.slug}/").content.decode()
    assert 'id="share-chart"' in page and '"username": "teammate"' in page
    rows = client.get(f"/datanets/{datanet.slug}/?q=basil", HTTP_HX_REQUEST="true").content.decode()
    assert "How often should I water basil?" in rows and "garlic" not in rows


def test_private_datanet_pages_are_404_for_others(client, cast):
    services.datanet_create(owner=cast.owner, name="Secret", kind="text", summary="s", visibility="private")
    assert client.get("/datanets/secret/").status_code == 404
    client.force_login(cast.outsider)
    assert client.get("/datanets/secret/").status_code == 404
    assert client.get("/datanets/secret/export.csv").status_code == 404
    client.force_login(cast.owner)
    assert client.get("/datanets/secret/").status_code == 200
    assert client.get("/datanets/secret/settings/").status_code == 200


def test_settings_change_flag_actions(client, cast, datanet):
    client.force_login(cast.owner)
    page = client.get(f"/datanets/{datanet.slug}/settings/").content.decode()
    labels = ["Rows with an empty field", "Rows that are very short", "Rows with an e-mail address",
              "Rows that are nearly the same as another row", "Rows that are a copy of another contributor"]  # fmt: skip
    assert all(label in page for label in labels) and "Rows with very short" not in page
    data = {
        "name": datanet.name,
        "summary": datanet.summary,
        "description": "",
        "tags": "gardening",
        "licence": "CC0",
        "visibility": "public",
        "policy": "open",
        "curators": "teammate",
        **{f"flag_{k}": v for k, v in datanet.flag_actions.items()},
        "flag_email": "drop",
    }
    assert client.post(f"/datanets/{datanet.slug}/settings/", data).status_code == 302
    datanet.refresh_from_db()
    assert (datanet.licence, datanet.policy, datanet.flag_actions["email"]) == ("CC0", "open", "drop")
    assert list(datanet.curators.values_list("username", flat=True)) == ["teammate"]


def test_admin_pages_load(client, cast, datanet):
    c = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA))
    services.contribution_approve(contribution=c, curator=cast.owner)
    services.version_publish(datanet=datanet, actor=cast.owner)
    client.force_login(cast.staff)
    for model in ("datanet", "contribution", "record", "datanetversion", "versionrecord", "tag"):
        assert client.get(f"/admin/datanets/{model}/").status_code == 200
    assert client.get(f"/admin/datanets/datanetversion/{datanet.versions.get().pk}/change/").status_code == 200


def test_detail_page_stats_follow_every_change_of_live_rows_while_cached(client, cast, datanet):
    """The stats are cached per datanet; each service that changes which rows are live must move the key."""
    from datanets.selectors import datanet_stats

    def stats():
        datanet.refresh_from_db()
        return {k: v for k, v in datanet_stats(datanet=datanet).items() if k in ("rows", "contributors", "pending")}

    assert stats() == {"rows": 0, "contributors": 0, "pending": 0}
    first = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA))
    assert stats() == {"rows": 0, "contributors": 0, "pending": 4}
    services.contribution_approve(contribution=first, curator=cast.owner)
    assert stats() == {"rows": 4, "contributors": 1, "pending": 0}
    second = ingest(datanet, cast.outsider, "b.jsonl", jsonl([{"instruction": "Rhubarb?", "output": "In spring."}]))
    services.contribution_approve(contribution=second, curator=cast.owner)
    assert stats() == {"rows": 5, "contributors": 2, "pending": 0}
    services.record_drop(record=first.records.first(), curator=cast.owner)
    assert stats() == {"rows": 4, "contributors": 2, "pending": 0}
    services.contribution_reject(contribution=second, curator=cast.owner, reason="Off topic.")
    assert stats() == {"rows": 3, "contributors": 1, "pending": 0}
    page = client.get(f"/datanets/{datanet.slug}/").content.decode()
    assert "<strong>3</strong><br>accepted rows" in page


def test_the_datanet_page_says_rows_no_answer_uses_earn_nothing(client, cast, datanet):
    page = client.get(f"/datanets/{datanet.slug}/").content.decode()
    assert "<header>How each answer's fee is shared</header>" in page
    assert "so rows that no answer uses earn nothing, however many there are." in page
    assert "Settlement rule settle-2, split policy settle-2-2026-1." in page


@pytest.mark.parametrize("kind", ["instruction", "chat", "text"])
def test_the_example_file_of_each_kind_is_accepted_as_it_is(client, cast, kind):
    datanet = services.datanet_create(
        owner=cast.owner, name=f"Ex {kind}", kind=kind, summary="s", visibility="public", policy="open"
    )
    client.force_login(cast.teammate)
    response = client.get(f"/datanets/{datanet.slug}/upload/example.jsonl")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="example-{kind}.jsonl"'
    assert "download>Download an example file</a>" in client.get(f"/datanets/{datanet.slug}/upload/").content.decode()
    contribution = ingest(datanet, cast.teammate, f"example-{kind}.jsonl", response.content)
    assert (contribution.status, contribution.rows_accepted, contribution.report["errors_total"]) == ("accepted", 3, 0)


def test_rows_pasted_as_text_are_uploaded_like_a_file(client, cast, datanet):
    client.force_login(cast.teammate)
    response = client.post(f"/datanets/{datanet.slug}/upload/", {"pasted": jsonl(QA).decode()})
    c = Contribution.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/datanets/contributions/{c.pk}/"
    assert c.original_name == "pasted.jsonl"
    assert services.contribution_ingest(contribution_id=c.pk).rows_total == len(QA)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Choose a file to upload, or paste rows into the box."),
        ({"pasted": "   \n"}, "Choose a file to upload, or paste rows into the box."),
        ({"pasted": '{"instruction": "q", "output": "a"}', "file": "qa"}, "Choose a file or paste rows, not both."),
    ],
)
def test_an_upload_needs_a_file_or_pasted_rows_but_not_both(client, cast, datanet, data, message):
    client.force_login(cast.teammate)
    if "file" in data:
        data = {**data, "file": upload("qa.jsonl", jsonl(QA))}
    response = client.post(f"/datanets/{datanet.slug}/upload/", data)
    assert response.status_code == 400
    assert f'<p class="bad">{message}</p>' in response.content.decode()
    assert Contribution.objects.count() == 0


def test_a_flagged_row_names_its_empty_field_in_words(client, cast, datanet):
    datanet.flag_actions = {**datanet.flag_actions, "empty": "keep"}  # kept for the curator to see, not dropped
    datanet.save(update_fields=["flag_actions"])
    rows = [{"instruction": "How deep do I plant garlic?", "output": "   "}, *QA]
    contribution = ingest(datanet, cast.teammate, "qa.jsonl", jsonl(rows))
    client.force_login(cast.owner)
    page = client.get(f"/datanets/contributions/{contribution.pk}/rows/").content.decode()
    assert "Flagged: an empty field (output)" in page
    report = client.get(f"/datanets/contributions/{contribution.pk}/").content.decode()
    assert "· an empty field (output)" in report and "· empty" not in report  # words, not the flag's code
