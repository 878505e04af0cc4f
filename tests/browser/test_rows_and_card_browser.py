"""Pages a person reads, in Chromium at 1280 and 390 px: an upload's rows (as its contributor and as a curator
waiting to decide), the model page's rendered card, and the friendly refusal of a file that cannot be read."""

import re
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from attribution.models import Attribution, AttributionRow, AttributionShare
from datanets import services as datanet_services
from modelfactory.models import Inference, ModelVersion
from modelfactory.training.artifacts import model_card
from tests.browser.conftest import keep_screenshots, log_in
from tests.datanets.conftest import upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_uploads_rows_for_its_contributor_then_a_curator_drops_one(page, cast, world, live_server):
    contribution = world.contribution
    # One answer paid the teammate 0.0112 credits, 0.0084 of it for their first row (the rest not tied to a row).
    first = contribution.records.order_by("line").first()
    inference = Inference.objects.create(
        caller=cast.outsider, model=world.model, model_version=world.model.versions.get(), source="api",
        status="completed", messages=[{"role": "user", "content": "?"}], output="Quells eat blue moss.",
        price_per_1k_tokens=0,
    )  # fmt: skip
    attribution = Attribution.objects.create(inference=inference, status="done", settlement_status="settled")
    AttributionShare.objects.create(
        attribution=attribution, contributor=cast.teammate, model=world.model, share=1.0, settled_share=1.0,
        amount_micro=11_200, created_at=timezone.now(),
    )  # fmt: skip
    AttributionRow.objects.create(
        attribution=attribution, record=first, contributor=cast.teammate, share=0.75, settled_share=0.75,
        amount_micro=8_400,
    )  # fmt: skip
    log_in(page, live_server, cast.teammate)
    page.goto(f"/datanets/contributions/{contribution.pk}/")
    page.locator("#see-rows").click()
    expect(page.get_by_role("heading", name=re.compile(r"Rows of upload #"))).to_be_visible()
    expect(page.get_by_text("in version 1").first).to_be_visible()
    expect(page.locator("#row-earnings")).to_contain_text("The rows of this upload earned you 0.0084 credits in all.")
    expect(page.locator("#row-earnings")).to_contain_text("0.0028 credits are not tied to a single row")
    expect(page.locator(f"#row-{first.pk} .row-earned")).to_have_text("earned you 0.0084 credits")
    expect(page.locator(".row-earned", has_text="earned nothing yet")).to_have_count(1)
    keep_screenshots(page, "contribution-rows-contributor")
    page.goto("/attribution/")  # the overview names the row that earned
    expect(page.locator("#top-rows + p + .table-wrap tbody tr")).to_have_count(1)
    expect(page.locator("#top-rows + p + .table-wrap tbody tr")).to_contain_text(f"line {first.line}")
    keep_screenshots(page, "attribution-top-rows")
    page.goto(f"/datanets/contributions/{contribution.pk}/")  # the file's fingerprint, folded away
    expect(page.locator("details.fingerprint code")).to_be_hidden()
    keep_screenshots(page, "contribution-report")
    page.goto(f"/datanets/{contribution.datanet.slug}/versions/1/")
    expect(page.get_by_text(world.version.manifest_hash)).to_be_hidden()
    page.get_by_text("How to check this version").click()
    expect(page.get_by_text(world.version.manifest_hash)).to_be_visible()
    keep_screenshots(page, "version")

    # The outsider uploads to the public datanet; its curator (the owner) reads the rows before deciding.
    uploaded = datanet_services.contribution_create(
        datanet=world.public_datanet, contributor=cast.outsider,
        upload=upload(
            "garden.jsonl", b'{"instruction": "When to sow peas?", "output": "Early in spring."}\n'
            b'{"instruction": "When to sow beans?", "output": "After the last frost."}\n'),
    )  # fmt: skip
    datanet_services.contribution_ingest(contribution_id=uploaded.pk)
    page.context.clear_cookies()
    log_in(page, live_server, cast.owner)
    page.goto(f"/datanets/contributions/{uploaded.pk}/")
    page.get_by_role("link", name="Read the 2 rows before you decide").click()
    expect(page.get_by_text("When to sow peas?")).to_be_visible()
    keep_screenshots(page, "contribution-rows-curator")
    page.get_by_role("button", name="Drop this row").first.click()
    expect(page.get_by_text(re.compile(r"Row \d+ dropped\."))).to_be_visible()
    expect(page.locator(".row-status.status-dropped")).to_have_count(1)


def test_the_model_page_shows_its_card_rendered(page, cast, world, live_server):
    card = model_card(
        name="Zorb model", base_model="Tiny base",
        datanet_versions=[{"name": "Zorb facts", "version": 1, "manifest_hash": world.version.manifest_hash}],
        hyperparameters={"epochs": 3, "rank": 8}, metrics={"base_eval_loss": 3.1, "eval_loss": 2.7},
        contributors=2, artifact_sha256="0" * 64, rows_used=4, rows_dropped=0,
    )  # fmt: skip
    ModelVersion.objects.filter(model=world.model).update(model_card=card)
    log_in(page, live_server, cast.owner)
    page.goto(f"/models/{world.model.slug}/")
    expect(page.locator("#model-card h2", has_text="Training data")).to_be_visible()
    expect(page.locator("#model-card td", has_text="Zorb facts")).to_be_visible()
    expect(page.get_by_text("| datanet | version")).to_be_hidden()  # the Markdown source only behind its toggle
    fingerprint = page.locator("#model-card td details.fingerprint")  # the version's hash, folded away
    expect(fingerprint.locator("code")).to_be_hidden()
    fingerprint.locator("summary").click()
    expect(fingerprint.locator("code")).to_have_text(world.version.manifest_hash)
    page.locator("#model-card").scroll_into_view_if_needed()
    keep_screenshots(page, "model-card")


def test_an_image_is_refused_at_once_naming_the_accepted_types(page, cast, world, live_server, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 256)
    log_in(page, live_server, cast.teammate)
    page.goto(f"/datanets/{world.datanet.slug}/upload/")
    page.get_by_label("File").set_input_files(str(image))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "This file is a PNG image, which cannot be read as rows. Upload JSONL, JSON, CSV, TSV, Parquet, TXT, "
        "Markdown, PDF or DOCX."
    )
    keep_screenshots(page, "upload-refused")


def test_rows_pasted_into_the_upload_page_are_checked_like_a_file(page, cast, world, live_server):
    from datanets.models import Contribution

    log_in(page, live_server, cast.teammate)
    page.goto(f"/datanets/{world.datanet.slug}/upload/")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download an example file").click()
    example = Path(download.value.path()).read_text()
    assert len(example.splitlines()) == 3
    page.get_by_label("Or paste rows").fill(example)
    keep_screenshots(page, "upload-paste")
    page.get_by_role("button", name="Upload and check").click()
    expect(page).to_have_url(re.compile(r"/datanets/contributions/\d+/$"))
    assert Contribution.objects.get(contributor=cast.teammate, original_name="pasted.jsonl").size == len(
        example.replace("\n", "\r\n").encode()
    )  # a form sends a text box's line ends as CRLF
