"""Counts read as words: "1 row", "1 duplicate", never "1 rows"."""

import pytest

from tests.datanets.conftest import QA, ingest, jsonl

pytestmark = pytest.mark.django_db


def test_one_row_and_one_duplicate_are_singular(client, cast, datanet):
    contribution = ingest(datanet, cast.teammate, "one.jsonl", jsonl([QA[0], QA[0]]))
    assert (contribution.rows_accepted, contribution.duplicates) == (1, 1)
    client.force_login(cast.owner)
    review = client.get(f"/datanets/{datanet.slug}/review/").content.decode()
    assert "1 row to add · 0 rows with errors · 1 duplicate\n" in review
    page = client.get(f"/datanets/contributions/{contribution.pk}/").content.decode()
    assert "Accept 1 row</button>" in page
    assert "<br>row read (" not in page and "<br>rows read (" in page  # two lines read
    assert "<br>row kept<" in page and "<br>duplicate<" in page
    assert "1 rows" not in review + page and "1 duplicates" not in review + page
