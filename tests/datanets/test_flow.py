"""The "done when" scenario: three contributors, one with bad rows and duplicates; review; version 1; stable hash."""

import pytest

from datanets import selectors, services
from datanets.ingest.manifest import merkle_root
from datanets.models import Contribution, Datanet, Record
from tests.datanets.conftest import QA, ingest, jsonl
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_three_contributors_review_and_publish_version_one(cast, datanet):
    alice, bob, carol = UserFactory(username="alice"), UserFactory(username="bob"), UserFactory(username="carol")
    a = ingest(datanet, alice, "alice.jsonl", jsonl(QA[:2]))
    b = ingest(datanet, bob, "bob.jsonl", jsonl(QA[2:]))
    carol_rows = [
        {"instruction": "Can I compost citrus peel?", "output": "Yes, in small amounts; it breaks down slowly."},
        {"instruction": "Can I compost citrus peel?", "output": "Yes, in small amounts; it breaks down slowly."},
        QA[0],
        {"question": "missing output"},
        ["not", "an", "object"],
    ]
    data = jsonl(carol_rows) + b"{not json}\n"
    c = ingest(datanet, carol, "carol.jsonl", data)

    assert [a.status, b.status, c.status] == ["needs_review"] * 3
    assert (c.rows_total, c.rows_accepted, c.rows_invalid, c.duplicates) == (6, 1, 3, 2)
    assert c.report["errors"] == [
        {"line": 4, "reason": "the field 'output' is missing"},
        {"line": 5, "reason": "each row should be an object with instruction, input, output, but this one is a list"},
        {
            "line": 6,
            "reason": "this line could not be read: check its quotes, commas and brackets (technical detail: Expecting "
            "property name enclosed in double quotes at column 2)",
        },
    ]
    assert c.report["duplicates"] == [
        {"line": 2, "kind": "exact", "of_line": 1},
        {"line": 3, "kind": "exact", "in_datanet": True},
    ]

    for contribution in (a, b, c):
        services.contribution_approve(contribution=contribution, curator=cast.owner)
    dropped = Record.objects.get(contribution=b, line=2)
    services.record_drop(record=dropped, curator=cast.owner, reason="too vague")

    version = services.version_publish(datanet=datanet, actor=cast.owner, notes="First release")
    assert (version.number, version.row_count, version.contributor_count) == (1, 4, 3)
    frozen = Record.objects.filter(versions=version)
    assert version.manifest_hash == merkle_root(frozen.values_list("content_hash", flat=True))
    assert services.version_manifest_recompute(version=version) == version.manifest_hash
    # Stable: later changes to the datanet do not touch the frozen set or its hash.
    services.record_drop(record=Record.objects.get(contribution=a, line=1), curator=cast.owner)
    assert services.version_manifest_recompute(version=version) == version.manifest_hash

    counts = selectors.version_contributor_row_counts(version_id=version.pk)
    assert counts == {alice.pk: 2, bob.pk: 1, carol.pk: 1}
    rows = list(selectors.version_records(version_id=version.pk))
    assert [r.contributor_id for r in rows] == [alice.pk, alice.pk, bob.pk, carol.pk]
    assert rows[0].kind == "instruction" and rows[0].content == QA[0]
    assert {r.contribution_id for r in rows} == {a.pk, b.pk, c.pk}

    v2 = services.version_publish(datanet=datanet, actor=cast.owner)
    diff = selectors.version_diff(version=v2)
    assert diff["contributors"] == [{"username": "alice", "added": 0, "removed": 1}]
    assert Contribution.objects.filter(status="accepted").count() == 3


def test_demo_seed_runs_once_through_the_real_pipeline(cast):
    from datanets.demo_data import CONTRIBUTORS

    datanet = services.demo_datanet_seed(owner=cast.owner)
    version = datanet.versions.get()
    assert (version.number, version.row_count, version.contributor_count) == (1, 36, 3)
    assert sorted(selectors.datanet_stats(datanet=datanet)["shares"], key=lambda s: s["username"]) == [
        {"username": name, "rows": len(rows), "share": len(rows) / 36} for name, rows in sorted(CONTRIBUTORS.items())
    ]
    assert services.demo_datanet_seed(owner=cast.owner) is None


def test_bootstrap_command_seeds_the_demo_datanet(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("bootstrap", stdout=out)
    assert "Created the demo datanet" in out.getvalue()
    call_command("bootstrap", stdout=StringIO())
    assert Datanet.objects.count() == 1
