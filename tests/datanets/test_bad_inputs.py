"""Every bad input from the issue: the clear error, and nothing half-written."""

import io
import json
import zipfile
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import WorkerHeartbeat
from datanets import selectors, services
from datanets.ingest import pipeline
from datanets.models import Contribution, Datanet, Record
from tests.datanets.conftest import QA, ingest, jsonl, upload

pytestmark = pytest.mark.django_db


def stored_files(settings):
    root = settings.MEDIA_ROOT
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_nothing_visible(datanet):
    assert not Record.objects.filter(datanet=datanet).exists()
    assert selectors.datanet_stats(datanet=datanet)["rows"] == 0


def test_empty_file_is_refused_before_storing(cast, datanet, settings):
    with pytest.raises(services.DatanetError) as exc:
        services.contribution_create(datanet=datanet, contributor=cast.teammate, upload=upload("e.jsonl", b""))
    assert exc.value.message == "The file is empty."
    assert not Contribution.objects.exists()
    assert stored_files(settings) == []


def test_wrong_extension_is_read_by_content_with_a_notice(cast, datanet):
    c = ingest(datanet, cast.teammate, "rows.csv", jsonl(QA))
    assert c.status == "needs_review" and c.detected_format == "jsonl"
    assert c.report["notices"] == ["The file is named '.csv' but its content is JSON lines; it was read as JSON lines."]
    assert c.rows_accepted == 4


def refused_at_upload(datanet, user, name: str, data: bytes, settings, code="unknown_format") -> str:
    """Uploads `data`; asserts it is refused at once with nothing stored, and returns the message."""
    with pytest.raises(services.DatanetError) as exc:
        services.contribution_create(datanet=datanet, contributor=user, upload=upload(name, data))
    assert exc.value.code == code and exc.value.status == 400
    assert not Contribution.objects.exists()
    assert stored_files(settings) == []
    assert_nothing_visible(datanet)
    return exc.value.message


ACCEPTED = "JSONL, JSON, CSV, TSV, Parquet, TXT, Markdown, PDF or DOCX"


def test_binary_content_under_a_text_extension_is_refused_at_upload(cast, datanet, settings):
    message = refused_at_upload(datanet, cast.teammate, "rows.jsonl", b"\x00\x01\x02\x03 binary", settings)
    assert message == f"This file is not in a format that can be read as rows. Upload {ACCEPTED}."


def _zip(names) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "<x/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
         f"This file is a PNG image, which cannot be read as rows. Upload {ACCEPTED}."),
        ("notes.txt", b"\xff\xd8\xff\xe0" + b"\x00" * 64,
         f"This file is a JPEG image, which cannot be read as rows. Upload {ACCEPTED}."),
        ("sheet.xlsx", _zip(["[Content_Types].xml", "xl/workbook.xml"]),
         f"This file is an Excel workbook (XLSX), which cannot be read as rows. Save the sheet as CSV and upload "
         f"that. Accepted: {ACCEPTED}."),
        ("fake.docx", _zip(["xl/workbook.xml"]),
         f"This file is an Excel workbook (XLSX), which cannot be read as rows. Save the sheet as CSV and upload "
         f"that. Accepted: {ACCEPTED}."),
        ("bundle.zip", _zip(["a.txt"]), f"This file is a zip archive, not a Word document. Upload {ACCEPTED}."),
        ("broken.docx", b"PK\x03\x04 not really a zip",
         f"This file looks like a zip archive or Word document, but it is damaged. Upload {ACCEPTED}."),
        ("old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64,
         f"This file is an old Microsoft Office file (DOC, XLS or PPT), which cannot be read as rows. Upload "
         f"{ACCEPTED}."),
    ],
)  # fmt: skip
def test_a_file_that_cannot_be_read_is_refused_at_once_naming_what_it_is(cast, datanet, settings, name, data, message):
    assert refused_at_upload(datanet, cast.teammate, name, data, settings) == message


def test_a_real_word_document_is_taken(cast, datanet):
    contribution = services.contribution_create(
        datanet=datanet, contributor=cast.teammate, upload=upload("doc.docx", _zip(["word/document.xml"]))
    )
    assert contribution.status == "uploaded"


def test_non_utf8_text_names_the_encoding_and_keeps_nothing(cast, datanet, settings):
    data = "\n".join(
        json.dumps(
            {"instruction": f"Quand planter l'ail n°{i} ?", "output": "En automne, à l'abri du gel."},
            ensure_ascii=False,
        )
        for i in range(20)
    ).encode("cp1252")
    message = refused_at_upload(datanet, cast.teammate, "fr.jsonl", data, settings, code="encoding")
    assert message.startswith("The file is not UTF-8 text. It looks like ")
    assert message.endswith("(French). Open it in a text editor, save it as UTF-8, and upload it again.")


def test_non_utf8_late_in_a_large_file_keeps_none_of_the_rows_before_it(cast, datanet):
    good = jsonl(
        {"instruction": f"How do I grow variety {i}?", "output": f"Give variety {i} sun and water."}
        for i in range(3000)
    )
    data = good + '{"instruction": "Caf\u00e9 plants?", "output": "Yes."}\n'.encode("latin-1")
    c = ingest(datanet, cast.teammate, "big.jsonl", data)
    assert c.status == "failed"
    assert "(the first bad byte is after line" in c.message
    assert_nothing_visible(datanet)


def test_bom_is_ignored(cast, datanet):
    c = ingest(datanet, cast.teammate, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(QA[:1]))
    assert c.report["notices"] == ["The file starts with a byte-order mark (BOM); it was ignored."]
    assert Record.objects.get(contribution=c).content == QA[0]


def test_jsonl_line_not_json_and_wrong_shape(cast, datanet):
    data = jsonl(QA[:1]) + b'{"instruction": "x", "output": \n' + b'{"instruction": 5.5, "output": {"a": 1}}\n'
    c = ingest(datanet, cast.teammate, "mixed.jsonl", data)
    assert c.report["errors"] == [
        {
            "line": 2,
            "reason": "this line could not be read: check its quotes, commas and brackets (technical detail: Expecting value "
            "at column 33)",
        },
        {"line": 3, "reason": "'output' should be text but is an object"},
    ]
    assert c.rows_accepted == 1


def test_single_json_object_is_refused_at_upload_with_advice(cast, datanet, settings):
    data = json.dumps(QA[0], indent=2).encode()
    message = refused_at_upload(datanet, cast.teammate, "one.json", data, settings, code="wrong_shape")
    assert message.startswith("The file holds one JSON object.")


def test_missing_csv_columns_then_mapping_on_retry(cast, datanet, _no_broker, django_capture_on_commit_callbacks):
    c = ingest(datanet, cast.teammate, "qa.csv", b"ask_text,reply_text\nWhen to sow peas?,Early spring.\n")
    assert c.status == "failed" and c.report["code"] == "columns"
    assert c.report["columns"] == ["ask_text", "reply_text"]
    assert_nothing_visible(datanet)
    with django_capture_on_commit_callbacks(execute=True):
        services.contribution_retry(
            contribution=c, actor=cast.teammate, column_mapping={"instruction": "ask_text", "output": "reply_text"}
        )
    assert _no_broker == [c.pk]
    c = services.contribution_ingest(contribution_id=c.pk)
    assert c.status == "needs_review" and c.rows_accepted == 1


def test_extra_csv_values_are_row_errors(cast, datanet):
    c = ingest(datanet, cast.teammate, "qa.csv", b"instruction,output\nWhen to sow peas?,Early spring.\nq,a,surplus\n")
    assert c.report["errors"] == [
        {"line": 3, "reason": "this row has 3 values but the header has 2 columns (extra values)"}
    ]


def test_row_over_the_size_cap(cast, datanet, settings):
    settings.MF_INGEST_ROW_MAX_CHARS = 1000
    c = ingest(
        datanet, cast.teammate, "big.jsonl", jsonl([QA[0], {"instruction": "long", "output": "x " * 1000}, QA[1]])
    )
    assert c.report["errors"] == [
        {"line": 2, "reason": "the line is 2,038 characters long; the limit per row is 1,000 characters"}
    ]
    assert c.rows_accepted == 2


def test_file_over_the_upload_limit_via_the_page(client, cast, datanet, settings):
    settings.MF_UPLOAD_MAX_BYTES = 2048
    client.force_login(cast.teammate)
    response = client.post(f"/datanets/{datanet.slug}/upload/", {"file": upload("big.jsonl", b"x" * 100_000)})
    assert response.status_code == 400
    assert "The file is larger than the upload limit of 2.0\xa0KB." in response.content.decode()
    assert not Contribution.objects.exists()
    assert stored_files(settings) == []


def test_upload_limit_handler_stops_the_stream():
    from django.core.files.uploadhandler import StopUpload
    from django.test import RequestFactory

    from datanets.uploads import UploadLimitHandler

    request = RequestFactory().post("/")
    handler = UploadLimitHandler(request, max_bytes=100)
    handler.new_file("file", "x.jsonl", "application/json", 1000)
    assert handler.receive_data_chunk(b"a" * 60, 0) == b"a" * 60
    with pytest.raises(StopUpload):
        handler.receive_data_chunk(b"a" * 60, 60)
    assert request.upload_too_large is True


def test_docx_bomb_fails_and_keeps_nothing(cast, settings):
    settings.MF_INGEST_MAX_UNPACKED_BYTES = 1024 * 1024
    text_net = services.datanet_create(owner=cast.owner, name="Garden notes", kind="text", summary="Notes.")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", "<w:document>" + " " * (4 * 1024 * 1024) + "</w:document>")
    c = ingest(text_net, cast.teammate, "notes.docx", out.getvalue())
    assert c.status == "failed"
    assert c.message == "The Word document unpacks to more than 1 MB, which looks like a zip bomb; it was not opened."
    assert_nothing_visible(text_net)


def test_pdf_that_fails_to_parse(cast):
    text_net = services.datanet_create(owner=cast.owner, name="Garden notes", kind="text", summary="Notes.")
    c = ingest(text_net, cast.teammate, "broken.pdf", b"%PDF-1.4\nthis is not really a pdf")
    assert c.status == "failed"
    assert c.message.startswith("The PDF could not be read (")
    assert_nothing_visible(text_net)


def test_html_and_js_in_rows_are_shown_escaped(client, cast, datanet):
    evil = {"instruction": "<script>alert('x')</script> Why?", "output": '<img src=x onerror="alert(1)"> Because.'}
    c = ingest(datanet, cast.teammate, "evil.jsonl", jsonl([evil]))
    assert Record.objects.get(contribution=c).content == evil  # stored as given; escaping is the page's job
    services.contribution_approve(contribution=c, curator=cast.owner)
    client.force_login(cast.owner)
    for url in (f"/datanets/{datanet.slug}/", f"/datanets/contributions/{c.pk}/"):
        page = client.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page
    page = client.get(f"/datanets/{datanet.slug}/").content.decode()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; Why?" in page


def test_markdown_description_is_sanitised(client, cast):
    services.datanet_create(
        owner=cast.owner,
        name="Herbs",
        kind="instruction",
        summary="Herbs.",
        description="**Bold** <script>alert(1)</script> [x](javascript:alert(1))",
    )
    page = client.get("/datanets/herbs/").content.decode()
    assert "<strong>Bold</strong>" in page
    assert "<script>alert(1)</script>" not in page and "javascript:alert" not in page


def test_csv_export_neutralises_formulas(client, cast, datanet):
    rows = [
        {"instruction": '=HYPERLINK("http://evil") how?', "output": "+1 cup of compost"},
        {"instruction": "@SUM(A1) what?", "output": "-2 degrees is too cold"},
    ]
    services.contribution_approve(
        contribution=ingest(datanet, cast.teammate, "f.jsonl", jsonl(rows)), curator=cast.owner
    )
    body = b"".join(client.get(f"/datanets/{datanet.slug}/export.csv").streaming_content).decode()
    lines = body.splitlines()
    assert lines[0] == "record_id,contributor,instruction,input,output,content_hash,tokens"
    assert lines[1].split(",", 2)[2].startswith('"\'=HYPERLINK(""http://evil"") how?",,\'+1 cup of compost,')
    assert ",'@SUM(A1) what?,,'-2 degrees is too cold," in lines[2]


def test_path_in_the_filename_is_stripped(cast, datanet, settings):
    c = services.contribution_create(
        datanet=datanet, contributor=cast.teammate, upload=upload("../../etc/passwd.jsonl", jsonl(QA))
    )
    assert c.original_name == "passwd.jsonl"
    assert c.file.name == f"contributions/{datanet.pk}/{c.sha256[:2]}/{c.sha256}.upload"
    assert services.clean_filename("..\\..\\win\\evil.csv") == "evil.csv"
    assert services.clean_filename("/") == "upload"


def test_same_file_twice_is_recognised_by_hash(cast, datanet, settings):
    first = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA))
    with pytest.raises(services.DatanetError) as exc:
        services.contribution_create(
            datanet=datanet, contributor=cast.outsider, upload=upload("renamed.jsonl", jsonl(QA))
        )
    assert exc.value.code == "duplicate_file"
    assert exc.value.message.startswith("Someone already uploaded this exact file to this datanet on ")
    assert f"(upload #{first.pk}); it was recognised by its fingerprint (SHA-256)." in exc.value.message
    assert Contribution.objects.count() == 1
    assert len(stored_files(settings)) == 1


def test_worker_killed_mid_ingest_is_detected_and_leaves_no_rows(cast, datanet):
    c = services.contribution_create(datanet=datanet, contributor=cast.teammate, upload=upload("a.jsonl", jsonl(QA)))
    now = timezone.now()
    Contribution.objects.filter(pk=c.pk).update(
        status="validating", worker_hostname="celery@dead", started_at=now, heartbeat_at=now
    )
    Record.objects.create(
        datanet=datanet,
        contribution=c,
        contributor=cast.teammate,
        line=1,
        content=QA[0],
        text="x",
        content_hash="a" * 64,
        status=Record.Status.STAGED,
    )
    assert selectors.record_list(datanet=datanet).count() == 0  # staged rows are invisible
    WorkerHeartbeat.objects.create(hostname="celery@alive", queues=["default"], pid=1, started_at=now, last_seen=now)

    assert services.contribution_fail_stale() == [c.pk]
    c.refresh_from_db()
    assert c.status == "failed"
    assert c.message.startswith("The worker checking this file stopped before it finished")
    assert not Record.objects.filter(contribution=c).exists()
    # A retry checks it again and succeeds.
    services.contribution_retry(contribution=c, actor=cast.teammate)
    assert services.contribution_ingest(contribution_id=c.pk).status == "needs_review"


def test_ingest_with_a_live_worker_is_not_failed_but_a_silent_one_is(cast, datanet, settings):
    c = services.contribution_create(datanet=datanet, contributor=cast.teammate, upload=upload("a.jsonl", jsonl(QA)))
    now = timezone.now()
    WorkerHeartbeat.objects.create(hostname="celery@alive", queues=["default"], pid=1, started_at=now, last_seen=now)
    Contribution.objects.filter(pk=c.pk).update(
        status="validating", worker_hostname="celery@alive", started_at=now, heartbeat_at=now
    )
    assert services.contribution_fail_stale() == []
    later = now + timedelta(seconds=settings.MF_INGEST_STALE_SECONDS + 1)
    WorkerHeartbeat.objects.update(last_seen=later)
    assert services.contribution_fail_stale(now=later) == [c.pk]


def test_crash_mid_ingest_marks_failed_and_discards_staged_rows(cast, datanet, monkeypatch):
    rows = [
        {"instruction": f"How tall does sunflower {i} grow?", "output": f"About {i} cm in a season."}
        for i in range(2500)
    ]
    original = pipeline.RowProcessor.process

    def explode(self, line, raw, error=None):
        if line == 2200:
            raise RuntimeError("worker lost its database connection")
        return original(self, line, raw, error)

    monkeypatch.setattr(pipeline.RowProcessor, "process", explode)
    c = ingest(datanet, cast.teammate, "many.jsonl", jsonl(rows))
    assert c.status == "failed"
    assert c.message == "Something went wrong on our side while reading the file; it has been logged."
    assert not Record.objects.exists()


def test_a_second_task_run_does_nothing(cast, datanet):
    c = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA))
    assert services.contribution_ingest(contribution_id=c.pk) is None
    assert Record.objects.filter(contribution=c).count() == 4


def test_task_calls_the_service(cast, datanet):
    from datanets.tasks import contribution_ingest_task

    c = services.contribution_create(datanet=datanet, contributor=cast.teammate, upload=upload("a.jsonl", jsonl(QA)))
    assert contribution_ingest_task.apply(args=[c.pk]).get() == "needs_review"


def test_open_datanet_auto_accepts_clean_contributions_only(cast):
    net = services.datanet_create(
        owner=cast.owner, name="Open", kind="instruction", summary="s", policy=Datanet.Policy.OPEN
    )
    clean = ingest(net, cast.teammate, "a.jsonl", jsonl(QA[:2]))
    assert clean.status == "accepted"
    messy = ingest(net, cast.teammate, "b.jsonl", jsonl(QA[2:]) + b"oops\n")
    assert messy.status == "needs_review"
    assert selectors.datanet_stats(datanet=net)["rows"] == 2


def test_reading_an_abandoned_upload_writes_nothing_and_the_sweep_fails_it(cast, datanet, client, settings):
    from rest_framework.test import APIClient

    from core.sweeper import run_sweeps

    c = services.contribution_create(datanet=datanet, contributor=cast.teammate, upload=upload("a.jsonl", jsonl(QA)))
    old = timezone.now() - timedelta(seconds=settings.MF_INGEST_STALE_SECONDS + 5)
    Contribution.objects.filter(pk=c.pk).update(status="validating", started_at=old, heartbeat_at=old)
    client.force_login(cast.teammate)
    page = client.get(f"/datanets/contributions/{c.pk}/").content.decode()
    assert "The worker checking this file has not reported for a while." in page
    api = APIClient()
    api.force_authenticate(cast.teammate)
    assert api.get(f"/api/v1/contributions/{c.pk}/").json()["status"] == "validating"
    c.refresh_from_db()
    assert (c.status, c.message, c.finished_at) == ("validating", "", None)

    swept = {result.path: result.finished for result in run_sweeps()}
    assert swept["datanets.services.contribution_fail_stale"] == [c.pk]
    c.refresh_from_db()
    assert c.status == "failed" and c.message.startswith("The worker checking this file stopped before it finished")


def test_try_again_is_offered_only_when_checking_again_can_help(client, cast, datanet):
    bad_rows = ingest(datanet, cast.teammate, "qa.json", b'[{"instruction": "x", "output": "y"}')
    assert bad_rows.status == "failed" and bad_rows.report["code"]
    client.force_login(cast.teammate)
    page = client.get(f"/datanets/contributions/{bad_rows.pk}/").content.decode()
    assert "Try again" not in page
    assert "Checking this file again would fail the same way. Fix the file and" in page
    assert f'<a href="/datanets/{datanet.slug}/upload/">upload it again</a>' in page

    Contribution.objects.filter(pk=bad_rows.pk).update(report={}, message="The worker stopped.")  # no file fault
    page = client.get(f"/datanets/contributions/{bad_rows.pk}/").content.decode()
    assert ">Try again</button>" in page


def test_an_image_is_refused_on_the_upload_page_and_by_the_api(client, cast, datanet, settings):
    from rest_framework.test import APIClient

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    client.force_login(cast.teammate)
    response = client.post(f"/datanets/{datanet.slug}/upload/", {"file": upload("photo.png", png)})
    assert f"This file is a PNG image, which cannot be read as rows. Upload {ACCEPTED}." in response.content.decode()
    api = APIClient()
    api.force_authenticate(cast.teammate)
    response = api.post(
        f"/api/v1/datanets/{datanet.slug}/contributions/", {"file": upload("photo.png", png)}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_format"
    assert not Contribution.objects.exists() and stored_files(settings) == []
