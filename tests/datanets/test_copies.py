"""No pay for copying: rows that copy another contributor's earlier rows (the same text once case, spacing and
punctuation are ignored, or nearly the same by MinHash) are flagged "copied" at ingest with the original row; the
curator sees the pair; the credit of an accepted copy goes to the original's contributor."""

import pytest

from datanets import selectors, services
from datanets.ingest.dedup import CopySources, normalised_text
from datanets.models import Contribution, Record
from tests.datanets.conftest import QA, ingest, jsonl
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LONG = [
    {
        "instruction": f"What does the gardener {name} grow along the south wall of the old orchard?",
        "output": f"{name} grows tall {crop} along the south wall, where the afternoon sun keeps the bricks warm.",
    }
    for name, crop in [("Mira", "beans"), ("Tomas", "peas"), ("Ilse", "sunflowers"), ("Ravi", "gourds")]
]


def light_edit(row: dict, n: int) -> dict:
    """Case, spacing and punctuation changed (n even), or one word changed (n odd)."""
    if n % 2 == 0:
        return {"instruction": "  " + row["instruction"].upper().replace("?", " ?"), "output": row["output"] + "!!"}
    return {"instruction": row["instruction"], "output": row["output"].replace("tall", "very tall")}


def test_normalised_text_ignores_case_spacing_and_punctuation():
    assert normalised_text("  Hello,   WORLD!! It's  me.") == "hello world it s me"
    assert normalised_text("ﬁne") == "fine"  # compatibility forms


def test_copy_sources_name_only_other_contributors_rows():
    sources = CopySources()
    sources.add(7, 1, "Plant garlic in autumn.")
    sources.add(9, 2, LONG[0]["instruction"] + " " + LONG[0]["output"], LONG[0]["output"])
    assert sources.find("plant GARLIC in autumn", 2) == {
        "record_id": 7, "contributor_id": 1, "how": "same text", "similarity": 1.0,
    }  # fmt: skip
    assert sources.find("plant GARLIC in autumn", 1) is None  # one's own row is no copy
    edited = light_edit(LONG[0], 1)
    found = sources.find(edited["instruction"] + " " + edited["output"], 1)
    assert (found["record_id"], found["contributor_id"], found["how"]) == (9, 2, "nearly the same")
    assert 0.7 <= found["similarity"] < 1.0
    assert sources.find(edited["instruction"] + " " + edited["output"], 2) is None
    assert sources.find(LONG[1]["instruction"] + " " + LONG[1]["output"], 1) is None  # same template, other facts
    # The same question with another answer contradicts the row; it does not copy it.
    question = LONG[0]["instruction"]
    assert sources.find(question + " " + "Nothing grows there.", 1, "Nothing grows there.") is None
    assert sources.find(edited["instruction"] + " " + edited["output"], 1, edited["output"])["record_id"] == 9


def test_a_copier_s_lightly_edited_rows_are_flagged_with_the_original(datanet, cast, client):
    original = ingest(datanet, cast.teammate, "mine.jsonl", jsonl(LONG + QA))
    services.contribution_approve(contribution=original, curator=cast.owner)
    copier = UserFactory(username="copier")
    rows = [light_edit(row, n) for n, row in enumerate(LONG)]
    own = {"instruction": "How do I keep slugs off lettuce?", "output": "Ring each lettuce with crushed shells."}
    copied = ingest(datanet, copier, "copy.jsonl", jsonl([*rows, own]))

    assert copied.status == Contribution.Status.NEEDS_REVIEW and copied.rows_accepted == 5
    assert copied.report["flags"]["copied"] == 4
    by_line = {r.line: r for r in Record.objects.filter(contribution=copied)}
    originals = {r.content["instruction"]: r for r in Record.objects.filter(contribution=original)}
    for n, row in enumerate(LONG):
        record, source = by_line[n + 1], originals[row["instruction"]]
        assert record.copy_of_id == source.pk and "copied" in record.flags
        details = record.flag_details["copied"]
        assert (details["record_id"], details["contributor_id"]) == (source.pk, cast.teammate.pk)
        assert details["how"] == ("same text" if n % 2 == 0 else "nearly the same")
        if n % 2 == 0:
            assert details["similarity"] == 1.0
        else:
            assert 0.7 <= details["similarity"] < 1.0
    assert by_line[5].copy_of_id is None and "copied" not in by_line[5].flags

    client.force_login(cast.owner)
    page = client.get(f"/datanets/contributions/{copied.pk}/").content.decode()
    first = originals[LONG[0]["instruction"]]
    assert f"Copied from row {first.pk} by teammate</strong> (the same text once case, spacing" in page
    assert "nearly the same text, similarity" in page
    assert page.count("goes to teammate, not to this upload.") == 4
    assert LONG[1]["output"] in page  # the curator sees the original beside the copy
    client.force_login(copier)
    page = client.get(f"/datanets/contributions/{copied.pk}/").content.decode()
    assert f"Copied from row {first.pk} by teammate" in page and LONG[1]["output"] not in page


def test_one_s_own_similar_rows_are_no_copies(datanet, cast):
    first = ingest(datanet, cast.teammate, "a.jsonl", jsonl(LONG[:2]))
    services.contribution_approve(contribution=first, curator=cast.owner)
    again = ingest(datanet, cast.teammate, "b.jsonl", jsonl([light_edit(LONG[0], 0)]))
    record = Record.objects.get(contribution=again)
    assert record.copy_of_id is None and "copied" not in record.flags
    assert "copied" not in again.report["flags"]


def test_the_credit_of_accepted_copies_goes_back_to_the_first_row_of_the_chain(datanet, cast):
    original = ingest(datanet, cast.teammate, "mine.jsonl", jsonl(LONG))
    services.contribution_approve(contribution=original, curator=cast.owner)
    copier, second = UserFactory(username="copier"), UserFactory(username="second")
    copy = ingest(datanet, copier, "copy.jsonl", jsonl([light_edit(LONG[1], 1)]))
    services.contribution_approve(contribution=copy, curator=cast.owner)
    copy_of_copy = ingest(datanet, second, "again.jsonl", jsonl([light_edit(light_edit(LONG[1], 1), 0)]))
    services.contribution_approve(contribution=copy_of_copy, curator=cast.owner)
    version = services.version_publish(datanet=datanet, actor=cast.owner)

    source = Record.objects.get(contribution=original, line=2)
    copy_row, copy_of_copy_row = Record.objects.get(contribution=copy), Record.objects.get(contribution=copy_of_copy)
    assert copy_row.copy_of_id == source.pk
    assert copy_of_copy_row.copy_of_id in (source.pk, copy_row.pk)
    assert selectors.version_copy_credit(version_id=version.pk) == {
        copy_row.pk: (cast.teammate.pk, original.pk),
        copy_of_copy_row.pk: (cast.teammate.pk, original.pk),
    }


def test_a_datanet_can_drop_copies_at_ingest(datanet, cast):
    original = ingest(datanet, cast.teammate, "mine.jsonl", jsonl(LONG))
    services.contribution_approve(contribution=original, curator=cast.owner)
    services.datanet_update(datanet=datanet, actor=cast.owner, flag_actions={"copied": "drop"})
    copier = UserFactory(username="copier")
    copied = ingest(datanet, copier, "copy.jsonl", jsonl([light_edit(row, n) for n, row in enumerate(LONG)]))
    assert copied.rows_accepted == 0 and copied.report["dropped_total"] == 4
    assert copied.report["dropped"][0]["reason"] == (
        "dropped: a copy of another contributor's earlier row (its credit goes to them)"
    )
    assert not Record.objects.filter(contribution=copied).exists()


def test_the_admin_shows_the_original_of_a_copy_read_only(datanet, cast, client):
    original = ingest(datanet, cast.teammate, "mine.jsonl", jsonl(LONG))
    services.contribution_approve(contribution=original, curator=cast.owner)
    copy = ingest(datanet, UserFactory(username="copier"), "copy.jsonl", jsonl([light_edit(LONG[0], 0)]))
    record = Record.objects.get(contribution=copy)
    client.force_login(cast.staff)
    page = client.get(f"/admin/datanets/record/{record.pk}/change/").content.decode()
    assert str(record.copy_of) in page and 'name="copy_of"' not in page


def test_the_same_questions_with_other_answers_are_no_copies(datanet, cast):
    facts = [{"instruction": f"what is the code of the gate number {n}?", "output": f"k{n}q{n}"} for n in range(4)]
    original = ingest(datanet, cast.teammate, "mine.jsonl", jsonl(facts))
    services.contribution_approve(contribution=original, curator=cast.owner)
    other = [{**row, "output": f"z{n}z{n}"} for n, row in enumerate(facts)]
    contradicting = ingest(datanet, UserFactory(username="mallory"), "other.jsonl", jsonl(other))
    assert "copied" not in contradicting.report["flags"]
    assert not Record.objects.filter(contribution=contradicting, copy_of__isnull=False).exists()
