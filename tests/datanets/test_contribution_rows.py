"""A contribution's rows: the page its contributor and curators read, and GET /api/v1/contributions/{id}/rows/."""

import pytest
from rest_framework.test import APIClient

from datanets import services
from datanets.models import Record
from tests.datanets.conftest import QA, ingest, jsonl

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def uploaded(cast, datanet):
    """The teammate's upload of the four garden rows, waiting for review."""
    contribution = ingest(datanet, cast.teammate, "garden.jsonl", jsonl(QA))
    assert contribution.status == "needs_review"
    return contribution


def test_the_curator_reads_every_row_before_deciding_and_drops_one_there(client, cast, uploaded):
    client.force_login(cast.owner)
    report = client.get(f"/datanets/contributions/{uploaded.pk}/").content.decode()
    assert (
        f'href="/datanets/contributions/{uploaded.pk}/rows/" id="see-rows">Read the 4 rows before you decide' in report
    )

    page = client.get(f"/datanets/contributions/{uploaded.pk}/rows/").content.decode()
    for row in QA:
        assert row["instruction"] in page
    assert page.count('row-status status-pending">Waiting for review</span>') == 4
    assert page.count("not in a published version yet") == 4
    assert page.count("Drop this row") == 4
    assert "Accept or reject this upload" in page

    first = Record.objects.get(contribution=uploaded, line=1)
    response = client.post(f"/datanets/rows/{first.pk}/drop/", {"back": "rows"})
    assert response.status_code == 302
    assert response["Location"] == f"/datanets/contributions/{uploaded.pk}/rows/"
    first.refresh_from_db()
    assert first.status == "dropped"

    dropped = client.get(f"/datanets/contributions/{uploaded.pk}/rows/?status=dropped").content.decode()
    assert QA[0]["instruction"] in dropped and QA[1]["instruction"] not in dropped
    assert 'row-status status-dropped">Dropped by a curator</span>' in dropped and "Drop this row" not in dropped


def test_the_contributor_sees_state_and_versions_but_cannot_drop(client, cast, datanet, uploaded):
    services.contribution_approve(contribution=uploaded, curator=cast.owner)
    services.version_publish(datanet=datanet, actor=cast.owner)
    client.force_login(cast.teammate)
    page = client.get(f"/datanets/contributions/{uploaded.pk}/rows/").content.decode()
    assert page.count('row-status status-accepted">Accepted</span>') == 4
    assert page.count("in version 1\n") == 4
    assert page.count('<span class="row-earned">earned nothing yet</span></small>') == 4  # no answer paid yet
    assert "Drop this row" not in page
    assert "answers those models give that draw on your rows earn you a share of their fee" in page


def test_rows_page_is_hidden_from_outsiders_and_asks_anonymous_to_log_in(client, cast, uploaded):
    client.force_login(cast.outsider)
    assert client.get(f"/datanets/contributions/{uploaded.pk}/rows/").status_code == 404
    client.logout()
    assert client.get(f"/datanets/contributions/{uploaded.pk}/rows/").status_code == 302


def test_rows_page_pages_25_rows_at_a_time(client, cast, datanet):
    rows = [
        {"instruction": f"Question number {i} about beans?", "output": f"Answer {i}: water beans."} for i in range(30)
    ]
    contribution = ingest(datanet, cast.teammate, "beans.jsonl", jsonl(rows))
    client.force_login(cast.teammate)
    first = client.get(f"/datanets/contributions/{contribution.pk}/rows/").content.decode()
    assert "Page 1 of 2 (30 rows)" in first and "Question number 24 " in first and "Question number 25 " not in first
    second = client.get(f"/datanets/contributions/{contribution.pk}/rows/?page=2").content.decode()
    assert "Question number 25 " in second and "Question number 24 " not in second


def test_api_rows_for_contributor_and_curators_only(cast, datanet, uploaded):
    services.contribution_approve(contribution=uploaded, curator=cast.owner)
    services.version_publish(datanet=datanet, actor=cast.owner)
    first = Record.objects.get(contribution=uploaded, line=1)
    services.record_drop(record=first, curator=cast.owner, reason="off topic")

    for user in (cast.teammate, cast.owner):
        response = _api(user).get(f"/api/v1/contributions/{uploaded.pk}/rows/")
        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 4
        assert [(r["line"], r["status"], r["versions"]) for r in body["results"]] == [
            (1, "dropped", [1]),
            (2, "accepted", [1]),
            (3, "accepted", [1]),
            (4, "accepted", [1]),
        ]
        assert body["results"][0]["drop_reason"] == "off topic"
        assert body["results"][0]["status_label"] == "Dropped by a curator"
        assert body["results"][1]["content"] == QA[1]
        assert body["results"][1]["copy_of"] is None

    accepted = _api(cast.teammate).get(f"/api/v1/contributions/{uploaded.pk}/rows/?status=accepted").json()
    assert [r["line"] for r in accepted["results"]] == [2, 3, 4]

    assert _api(cast.outsider).get(f"/api/v1/contributions/{uploaded.pk}/rows/").status_code == 404
    assert APIClient().get(f"/api/v1/contributions/{uploaded.pk}/rows/").status_code == 401


def test_api_rows_refuses_an_unknown_state_by_name(cast, uploaded):
    response = _api(cast.teammate).get(f"/api/v1/contributions/{uploaded.pk}/rows/?status=staged")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"] == {"status": ["“staged” is not one of: pending, accepted, rejected, dropped."]}
