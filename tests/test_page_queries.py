"""Query budgets of the pages the load benchmark (bench/bench_load.py) measures: a fixed number of queries however
many rows, contributors and postings there are (no N+1), and the wallet's running balances without a window over
the whole history."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ledger import selectors as ledger_selectors
from ledger.services import credit_grant, settlement_post
from tests.factories import UserFactory
from tests.world import build_world


@pytest.fixture
def world(cast, tmp_path, monkeypatch, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return build_world(cast, tmp_path, monkeypatch)


def queries(client, path: str) -> int:
    client.get(path)  # content types, session: as in a warm server
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200
    return len(captured)


def grow(world, cast, n: int = 30) -> None:
    """More contributors, rows and earnings: what an N+1 would multiply."""
    for i in range(n):
        other = UserFactory(username=f"grower{i}")
        credit_grant(user_id=other.pk, amount_micro=5_000_000, granted_by=cast.staff, memo="grow")
        settlement_post(
            key=f"grow-{i}", fee_micro=1_000_000, owner_user_id=cast.owner.pk, contributor_shares={other.pk: 1},
            payer_user_id=other.pk, metadata={"model": f"Model {i % 4}", "datanet": "Zorb facts"},
        )  # fmt: skip
    from datanets.models import Record

    template = world.datanet.records.first()
    Record.objects.bulk_create(
        [
            Record(
                datanet=world.datanet,
                contribution=template.contribution,
                contributor=UserFactory(username=f"c{i}"),
                line=i,
                content={"instruction": f"q{i}", "output": "a"},
                text=f"q{i} a",
                content_hash=f"{i:064x}",
                status=Record.Status.ACCEPTED,
            )  # fmt: skip
            for i in range(n)
        ]
    )


@pytest.mark.parametrize(
    ("path", "budget"),
    [("/", 8), ("/datanets/{slug}/", 10), ("/wallet/", 11)],  # wallet: 10 once its earnings are cached
)
def test_page_query_budget_does_not_grow_with_data(client, cast, world, path, budget, django_assert_max_num_queries):
    client.force_login(cast.owner)
    path = path.format(slug=world.datanet.slug)
    before = queries(client, path)
    grow(world, cast)
    with django_assert_max_num_queries(budget):
        client.get(path)
    assert queries(client, path) == before


def test_running_balances_match_a_window_over_all_postings_on_every_page_and_filter(cast, world):
    grow(world, cast, n=12)
    from django.core.paginator import Paginator

    exact = {
        p.pk: p.running_balance
        for p in ledger_selectors.statement_with_running_balances(ledger_selectors.statement(user=cast.owner))
    }
    assert len(exact) > 12
    for kind in (None, "settlement", "grant"):
        rows = ledger_selectors.statement(user=cast.owner, kind=kind)
        paginator = Paginator(rows, 5)
        for number in paginator.page_range:
            page = ledger_selectors.statement_running_balances(paginator.page(number).object_list)
            assert [(p.pk, p.running_balance) for p in page] == [(p.pk, exact[p.pk]) for p in page]
    newest = ledger_selectors.statement_running_balances(ledger_selectors.statement(user=cast.owner)[:1])[0]
    assert newest.running_balance == ledger_selectors.wallet_summary(user=cast.owner)["available"]


def test_earnings_are_recomputed_after_a_new_posting(cast, world):
    before = ledger_selectors.earnings(user=cast.owner)
    payer = UserFactory(username="late-payer")
    credit_grant(user_id=payer.pk, amount_micro=5_000_000, granted_by=cast.staff, memo="late")
    settlement_post(
        key="late", fee_micro=1_000_000, owner_user_id=cast.owner.pk, contributor_shares={},
        payer_user_id=payer.pk, metadata={"model": "Late model", "datanet": "Zorb facts"},
    )  # fmt: skip
    after = ledger_selectors.earnings(user=cast.owner)
    assert "Late model" not in before["by_model"]
    assert after["by_model"]["Late model"] == 900_000  # owner's 20% plus the contributors' 70% (none given)
