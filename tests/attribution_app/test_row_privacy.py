"""A row's text on the answer page and in the attribution API only for those who may see the row's datanet.

A builds a model on their private datanet and publishes it for everyone; B, an outsider, asks it. B learns who
shaped the answer (contributors, shares, scores, row ids) but never a private row's text; A, staff and the row's own
contributor still read it. Rows of a public datanet stay readable by everyone who sees the answer."""

import json

import pytest
from django.urls import reverse
from django.utils.html import escape

from attribution import selectors
from attribution.tasks import inference_attribute_task
from datanets.models import Record
from modelfactory import services as mf_services
from tests.attribution_app.conftest import LONG_ANSWER, LONG_QUESTION

pytestmark = pytest.mark.django_db
HIDDEN_NOTE = "Text hidden: this row belongs to a private datanet."


def _answer(planted, make_inference, cast):
    """B (the outsider) asks A's published model the question whose answer copies alice's long row."""
    mf_services.trained_model_publish(
        user=cast.owner, slug=planted.model_version.model.slug, price_per_1k_tokens=0, visibility="public"
    )
    inference = make_inference(planted, LONG_QUESTION, caller=cast.outsider)
    inference_attribute_task.apply(args=[inference.pk])
    return inference


def _seen(client, user, inference):
    client.force_login(user)
    api = client.get(f"/api/v1/inferences/{inference.pk}/attribution/")
    page = client.get(reverse("attribution:inference", args=[inference.pk]))
    assert (api.status_code, page.status_code) == (200, 200)
    return api.json(), api.content.decode(), page.content.decode()


def _texts(body) -> dict[int, str]:
    return dict(Record.objects.filter(pk__in=[r["record_id"] for r in body["rows"]]).values_list("pk", "text"))


@pytest.fixture
def private_answer(planted_factory, make_inference, cast):
    planted = planted_factory(private=True)
    return planted, _answer(planted, make_inference, cast)


def test_an_outsider_sees_who_shaped_the_answer_but_no_private_row_text(private_answer, cast, client):
    planted, inference = private_answer
    body, raw, page = _seen(client, cast.outsider, inference)
    assert body["status"] == "done" and body["rows"] and body["spans"]
    texts = _texts(body)
    long_row = Record.objects.get(datanet=planted.datanet, content__output=LONG_ANSWER)
    assert long_row.pk in texts and long_row.pk in {s["record_id"] for s in body["spans"]}
    assert len(texts) == len(body["rows"])
    for text in texts.values():
        assert text not in raw and json.dumps(text)[1:-1] not in raw
        assert text not in page and escape(text) not in page
    # Who, how much and which row stay; the text goes, in the API (null) and on the page (a plain note).
    assert [c["username"] for c in body["contributors"]][0] == "alice"
    for row in body["rows"]:
        assert (row["text"], row["text_hidden"]) == (None, True)
        assert row["contributor"] in ("alice", "bob", "carol") and isinstance(row["score"], float)
    assert LONG_QUESTION not in page and escape(LONG_QUESTION) not in page  # the long row's question part
    assert page.count(HIDDEN_NOTE) == len(body["rows"])
    assert f"row {long_row.pk} by alice" in page
    assert LONG_ANSWER in page  # the answer itself is B's: it stays, highlighted
    assert f'<mark title="Found in row {long_row.pk}">' in page


@pytest.mark.parametrize("who", ["owner", "staff"])
def test_the_datanets_owner_and_staff_read_the_private_rows(private_answer, cast, client, who):
    _, inference = private_answer
    body, _, page = _seen(client, getattr(cast, who), inference)
    texts = _texts(body)
    assert body["rows"] and [(r["text"], r["text_hidden"]) for r in body["rows"]] == [
        (texts[r["record_id"]], False) for r in body["rows"]
    ]
    for text in texts.values():
        assert escape(text) in page
    assert HIDDEN_NOTE not in page


def test_rows_of_a_public_datanet_stay_readable_by_the_outsider(planted, make_inference, cast, client):
    inference = _answer(planted, make_inference, cast)
    body, _, page = _seen(client, cast.outsider, inference)
    texts = _texts(body)
    assert body["rows"] and [(r["text"], r["text_hidden"]) for r in body["rows"]] == [
        (texts[r["record_id"]], False) for r in body["rows"]
    ]
    for text in texts.values():
        assert escape(text) in page
    assert HIDDEN_NOTE not in page


def test_a_contributor_reads_their_own_rows_of_the_private_datanet(private_answer, cast):
    planted, inference = private_answer
    attribution = selectors.attribution_get_for(user=cast.outsider, inference_id=inference.pk)
    alice = planted.people["alice"]
    rows = selectors.attribution_detail(attribution=attribution, user=alice)["rows"]
    owners = dict(Record.objects.filter(pk__in=[r["record_id"] for r in rows]).values_list("pk", "contributor"))
    assert {owners[r["record_id"]] == alice.pk for r in rows} == {True, False}  # hers and others' among them
    for row in rows:
        mine = owners[row["record_id"]] == alice.pk
        assert row["text_hidden"] is not mine and (row["text"] is None) is not mine
