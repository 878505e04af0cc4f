"""The interfaces fine-tuning and attribution call, and the visibility rule, with the fixed cast."""

import pytest
from django.contrib.auth.models import AnonymousUser

from datanets import selectors, services
from tests.datanets.conftest import QA, ingest, jsonl

pytestmark = pytest.mark.django_db


@pytest.fixture
def private_version(cast):
    net = services.datanet_create(
        owner=cast.owner, name="Private", kind="instruction", summary="s", visibility="private"
    )
    services.datanet_update(datanet=net, actor=cast.owner, curators=["teammate"])
    c = ingest(net, cast.owner, "a.jsonl", jsonl(QA))
    services.contribution_approve(contribution=c, curator=cast.owner)
    return services.version_publish(datanet=net, actor=cast.owner)


def test_visibility(cast, datanet, private_version):
    def slugs(user):
        return sorted(d.slug for d in selectors.datanet_list_visible(user=user))

    assert slugs(AnonymousUser()) == ["home-gardening"]
    assert slugs(cast.outsider) == ["home-gardening"]
    assert slugs(cast.owner) == ["home-gardening", "private"]
    assert slugs(cast.teammate) == ["home-gardening", "private"]  # a curator
    assert slugs(cast.staff) == ["home-gardening", "private"]
    assert selectors.datanet_list_visible(user=cast.owner, tag="vegetables").get().slug == "home-gardening"
    with pytest.raises(type(datanet).DoesNotExist):
        selectors.datanet_get_visible(user=cast.outsider, slug="private")


def test_version_get_usable(cast, private_version):
    assert selectors.version_get_usable(user=cast.owner, version_id=private_version.pk) == private_version
    assert selectors.version_get_usable(user=cast.teammate, version_id=private_version.pk) == private_version
    with pytest.raises(selectors.VersionNotUsable) as exc:
        selectors.version_get_usable(user=cast.outsider, version_id=private_version.pk)
    # Told exactly as a version that does not exist: no "private", no datanet name.
    assert str(exc.value) == f"There is no datanet version {private_version.pk}."
    assert selectors.version_get_usable(user=cast.staff, version_id=private_version.pk) == private_version
    with pytest.raises(selectors.VersionNotUsable) as exc:
        selectors.version_get_usable(user=cast.owner, version_id=999999)
    assert str(exc.value) == "There is no datanet version 999999."


def test_contributors_see_only_their_own_contributions(cast, datanet):
    mine = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA[:2]))
    theirs = ingest(datanet, cast.outsider, "b.jsonl", jsonl(QA[2:]))
    assert list(selectors.contribution_list(datanet=datanet, user=cast.teammate)) == [mine]
    assert set(selectors.contribution_list(datanet=datanet, user=cast.owner)) == {mine, theirs}
    assert selectors.contribution_get_visible(user=cast.teammate, contribution_id=mine.pk) == mine
    with pytest.raises(type(mine).DoesNotExist):
        selectors.contribution_get_visible(user=cast.teammate, contribution_id=theirs.pk)


def test_only_curators_review_and_publish(cast, datanet):
    c = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA))
    with pytest.raises(services.NotAllowed):
        services.contribution_approve(contribution=c, curator=cast.teammate)
    with pytest.raises(services.NotAllowed):
        services.version_publish(datanet=datanet, actor=cast.outsider)
    with pytest.raises(services.NotAllowed):
        services.datanet_update(datanet=datanet, actor=cast.outsider, summary="x")
    c.refresh_from_db()
    assert c.status == "needs_review"
    assert not datanet.versions.exists()


def test_stats_and_contributor_shares(cast, datanet):
    services.contribution_approve(
        contribution=ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA[:3])), curator=cast.owner
    )
    services.contribution_approve(
        contribution=ingest(datanet, cast.outsider, "b.jsonl", jsonl(QA[3:])), curator=cast.owner
    )
    stats = selectors.datanet_stats(datanet=datanet)
    assert (stats["rows"], stats["contributors"], stats["tokens_estimated"]) == (4, 2, True)
    assert stats["shares"] == [
        {"username": "teammate", "rows": 3, "share": 0.75},
        {"username": "outsider", "rows": 1, "share": 0.25},
    ]
    services.version_publish(datanet=datanet, actor=cast.owner)
    assert selectors.contributor_stats(datanet=datanet) == [
        {"username": "teammate", "rows_accepted": 3, "rows_in_latest": 3, "share": 0.75},
        {"username": "outsider", "rows_accepted": 1, "rows_in_latest": 1, "share": 0.25},
    ]


def test_token_counts_use_the_default_base_models_tokenizer(cast, datanet, tmp_path, settings):
    from tests.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    settings.MF_TOKEN_COUNT_MODEL_DIR = tmp_path
    c = ingest(datanet, cast.teammate, "a.jsonl", jsonl(QA[:1]))
    record = c.records.get()
    expected = len(tokenizer(record.text, add_special_tokens=False)["input_ids"])
    assert (c.tokens_estimated, record.token_count, c.tokens) == (False, expected, expected)
