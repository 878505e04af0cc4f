"""settlement_post_many: many settlements per call and per commit, each still its own ledger transaction, each
answered on its own. On PostgreSQL the plain items go through ledger_settlement_post_many (migrations/0005) and
are compared with the general path here; on SQLite every item takes the general path in turn, and the tests of
per-item outcomes run there too."""

import random
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from ledger.models import Account, Hold, Posting, Transaction
from ledger.services import (
    GRANT_PERMISSION,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    SettlementRequest,
    account_for_user,
    credit_grant,
    hold_create,
    settlement_post,
    settlement_post_many,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import CREDIT, snapshot, wallet_balance

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the batch function exists on PostgreSQL only (migrations/0005); on SQLite settlement_post_many runs "
    "the general path per item (the other tests here). Run with DATABASE_URL=postgres://... to check it.",
)


def _request(key, payer, owner, contributors, fee=CREDIT, **extra) -> SettlementRequest:
    shares = {contributors[0].pk: 1, contributors[1].pk: Fraction(1, 2)}
    fields = {"payer_user_id": payer.pk, **extra}
    return SettlementRequest(key=key, fee_micro=fee, owner_user_id=owner.pk, contributor_shares=shares, **fields)


def _post_one(request: SettlementRequest) -> Transaction:
    return settlement_post(**{name: getattr(request, name) for name in request.__dataclass_fields__})


def _legs(tx) -> list:
    rows = Posting.objects.filter(transaction=tx).values_list("account__owner_id", "account__role", "amount")
    return sorted(rows, key=lambda row: (row[0] or 0, row[1], row[2]))


def _sql(queries) -> list[str]:
    return [q["sql"].split("(")[0].strip() for q in queries]


@postgres_only
def test_a_batch_is_one_statement_and_posts_what_the_general_path_would(people, settings):
    payer, owner, contributors = people
    hold_create(key="h", payer_user_id=payer.pk, amount_micro=3 * CREDIT)
    requests = [
        _request("b-1", payer, owner, contributors, metadata={"model": "m", "datanets": {"1": "a"}}),
        _request("b-2", payer, payer, contributors, fee=777_777, memo="self-owned"),  # payer = owner: 2 postings
        _request("b-3", payer, owner, contributors, fee=CREDIT // 3, payer_user_id=None, hold_key="h"),
        SettlementRequest(
            key="b-4", fee_micro=5, owner_user_id=owner.pk, contributor_shares={}, payer_user_id=payer.pk
        ),
    ]
    with CaptureQueriesContext(connection) as queries:
        batch = settlement_post_many(requests=requests)
    assert _sql(queries.captured_queries) == ["SELECT * FROM ledger_settlement_post_many"]
    assert all(isinstance(tx, Transaction) for tx in batch)
    # One link per settlement, in batch order.
    assert [tx.seq for tx in batch] == list(range(batch[0].seq, batch[0].seq + 4))
    assert [tx.prev_hash for tx in batch[1:]] == [tx.hash for tx in batch[:-1]]
    for tx in batch:
        stored = Transaction.objects.get(pk=tx.pk)
        assert (stored.seq, stored.prev_hash, stored.hash, stored.metadata) == (
            tx.seq,
            tx.prev_hash,
            tx.hash,
            tx.metadata,
        )
        assert stored.created_at == tx.created_at and stored.memo == tx.memo
    hold = Hold.objects.get(key="h")
    assert (hold.status, hold.close_tx_id) == (Hold.Status.SETTLED, batch[2].pk)
    ledger_verify()  # recomputes every SQL-made hash in Python

    # The same requests through the general path, under other keys: the same postings and metadata.
    settings.MF_LEDGER_FAST_SETTLEMENT = False
    hold_create(key="h2", payer_user_id=payer.pk, amount_micro=3 * CREDIT)
    for request, fast in zip(requests, batch, strict=True):
        general = _post_one(
            SettlementRequest(
                **{
                    **{name: getattr(request, name) for name in request.__dataclass_fields__},
                    "key": "g" + request.key,
                    **({"hold_key": "h2"} if request.hold_key else {}),
                }
            )
        )
        fast_legs, general_legs = _legs(fast), _legs(general)
        assert fast_legs == general_legs and len(fast_legs) >= 2
        settlement = dict(general.metadata["settlement"])
        assert {**fast.metadata["settlement"], "hold_key": settlement["hold_key"]} == settlement
        assert general.memo == fast.memo
    ledger_verify()


def test_replays_inside_and_across_batches_return_the_first_transaction(people):
    payer, owner, contributors = people
    first = settlement_post_many(
        requests=[
            _request("r-1", payer, owner, contributors),
            _request("r-2", payer, owner, contributors),
            _request("r-1", payer, owner, contributors),  # the same key again in the same batch
        ]
    )
    assert first[0].pk == first[2].pk and first[0].hash == first[2].hash and first[1].pk != first[0].pk
    balance = wallet_balance(payer)
    before = snapshot()
    again = settlement_post_many(
        requests=[
            _request("r-2", payer, owner, contributors),
            _request("r-1", payer, owner, contributors),
            _request("r-1", payer, owner, contributors, fee=2 * CREDIT),  # same key, another request
        ]
    )
    assert (again[0].pk, again[1].pk) == (first[1].pk, first[0].pk)
    assert isinstance(again[2], IdempotencyConflict)
    assert snapshot() == before and wallet_balance(payer) == balance == 8 * CREDIT
    # A single settlement replays a batch's key the same way.
    assert _post_one(_request("r-2", payer, owner, contributors)).pk == first[1].pk
    ledger_verify()


def test_a_failing_item_leaves_the_others_posted_and_writes_nothing_of_its_own(people, fund):
    payer, owner, contributors = people
    hold_create(key="open", payer_user_id=payer.pk, amount_micro=CREDIT)
    hold_create(key="small", payer_user_id=payer.pk, amount_micro=1_000)
    outcomes = settlement_post_many(
        requests=[
            _request("f-ok-1", payer, owner, contributors),
            _request("f-broke", payer, owner, contributors, fee=50 * CREDIT),  # lacks funds: recorded, refused
            SettlementRequest(
                key="f-bad", fee_micro=-1, owner_user_id=owner.pk, contributor_shares={}, payer_user_id=1
            ),
            _request("f-hold", payer, owner, contributors, fee=CREDIT // 2, payer_user_id=None, hold_key="open"),
            _request("f-hold-twice", payer, owner, contributors, fee=1, payer_user_id=None, hold_key="open"),
            _request("f-over", payer, owner, contributors, fee=2_000, payer_user_id=None, hold_key="small"),
            _request("f-ok-2", payer, owner, contributors),
        ]
    )
    kinds = [type(outcome) for outcome in outcomes]
    assert kinds == [
        Transaction,
        InsufficientFunds,
        InvalidRequest,
        Transaction,
        HoldNotOpen,
        InvalidRequest,
        Transaction,
    ]
    rejected = Transaction.objects.get(idempotency_key="f-broke")
    assert rejected.status == Transaction.Status.REJECTED and not rejected.postings.exists()
    assert not Transaction.objects.filter(idempotency_key__in=["f-bad", "f-hold-twice", "f-over"]).exists()
    assert Hold.objects.get(key="small").status == Hold.Status.HELD  # untouched
    # 10 credits - 2 settlements of 1 - the held 1 credit (half comes back) - the small hold still held.
    assert wallet_balance(payer) == 10 * CREDIT - 2 * CREDIT - CREDIT // 2 - 1_000
    with pytest.raises(InsufficientFunds):  # the key stays failed, whichever way it is asked again
        _post_one(_request("f-broke", payer, owner, contributors, fee=50 * CREDIT))
    ledger_verify()


def test_funds_are_checked_against_what_the_earlier_items_of_the_batch_left(people, cast, fund):
    payer, owner, contributors = people
    poor = UserFactory(username="poor")
    fund(poor, 3)
    outcomes = settlement_post_many(
        requests=[_request(f"p-{i}", poor, owner, contributors, fee=CREDIT) for i in range(5)]
        + [_request("p-rich", payer, owner, contributors)]
    )
    assert [type(o) for o in outcomes] == [Transaction] * 3 + [InsufficientFunds] * 2 + [Transaction]
    assert wallet_balance(poor) == 0
    assert Transaction.objects.filter(idempotency_key__in=["p-3", "p-4"], status="rejected").count() == 2
    ledger_verify()


def test_first_time_wallets_in_a_batch_are_created_by_the_general_path(people):
    payer, owner, contributors = people
    newcomer = UserFactory(username="newcomer")
    outcomes = settlement_post_many(
        requests=[
            _request("n-1", payer, owner, contributors),
            SettlementRequest(
                key="n-2", fee_micro=CREDIT, owner_user_id=newcomer.pk, contributor_shares={}, payer_user_id=payer.pk
            ),
            _request("n-3", payer, owner, contributors),
        ]
    )
    assert all(isinstance(o, Transaction) for o in outcomes)
    assert wallet_balance(newcomer) == CREDIT - 100_000
    assert wallet_balance(payer) == 7 * CREDIT
    ledger_verify()


def test_an_empty_batch_and_a_batch_of_errors_write_nothing(people):
    payer, owner, contributors = people
    before = snapshot()
    assert settlement_post_many(requests=[]) == []
    outcomes = settlement_post_many(
        requests=[_request("", payer, owner, contributors), _request("x", payer, owner, contributors, hold_key="h")]
    )
    assert [type(o) for o in outcomes] == [InvalidRequest, InvalidRequest]
    assert snapshot() == before


@postgres_only
def test_batches_are_cut_at_the_batch_size(people, monkeypatch):
    from ledger.services import settlement

    payer, owner, contributors = people
    monkeypatch.setattr(settlement, "SETTLEMENT_BATCH_MAX", 2)  # read where settlement_post_many runs
    with CaptureQueriesContext(connection) as queries:
        outcomes = settlement_post_many(requests=[_request(f"c-{i}", payer, owner, contributors) for i in range(5)])
    many, one = "SELECT * FROM ledger_settlement_post_many", "SELECT * FROM ledger_settlement_post"
    assert _sql(queries.captured_queries) == [many, many, one]  # 2 + 2 + 1: one alone takes the single function
    assert [tx.seq for tx in outcomes] == list(range(outcomes[0].seq, outcomes[0].seq + 5))
    ledger_verify()


@postgres_only
def test_the_function_declines_a_malformed_call(people):
    """Called by hand with a leg index array of the wrong length, the function writes nothing."""
    before = snapshot()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM ledger_settlement_post_many(ARRAY['k'], ARRAY[''], ARRAY['{}'], ARRAY[''], "
            "ARRAY[now()], ARRAY[''::bytea], ARRAY[''::bytea], ARRAY[0], ARRAY[1::bigint], ARRAY[NULL::text], "
            "ARRAY[1::bigint], ARRAY[1], ARRAY[]::bigint[], ARRAY[]::bigint[], false)"
        )
        assert cursor.fetchall() == []
    assert snapshot() == before


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_in_its_own_transaction_a_batch_commits_once_and_waits_for_the_flush_once(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_LEDGER_SHARDS = 1
    staff = UserFactory(username="batch-staff", is_staff=True, permissions=[GRANT_PERMISSION])
    payer, owner = UserFactory(username="batch-payer"), UserFactory(username="batch-owner")
    credit_grant(user_id=payer.pk, amount_micro=5 * CREDIT, granted_by=staff)
    account_for_user(user_id=owner.pk)
    settlement_post(key="warm", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={}, payer_user_id=payer.pk)
    requests = [
        SettlementRequest(
            key=f"e-{i}", fee_micro=CREDIT, owner_user_id=owner.pk, contributor_shares={}, payer_user_id=payer.pk
        )
        for i in range(3)
    ]
    with CaptureQueriesContext(connection) as queries:
        outcomes = settlement_post_many(requests=requests)
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) == 2 and "ledger_settlement_post_many" in sql[0] and "pg_logical_emit_message" in sql[1]
    assert sql[0].rstrip().endswith("true)")  # p_early_release
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")  # SET LOCAL ended with the batch's transaction
        assert cursor.fetchone()[0] == "on"
    assert [Transaction.objects.get(idempotency_key=f"e-{i}").hash for i in range(3)] == [o.hash for o in outcomes]
    assert wallet_balance(payer) == CREDIT
    ledger_verify()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_and_single_settlements_conserve_every_micro_unit(settings):
    """8 threads, each posting batches (with replays, holds, first-time wallets and payers running out) beside
    single settlements over the same owners, contributors and payers: no deadlock escapes, nothing is created or
    lost, every key is settled once, and the chain verifies."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MF_LEDGER_CHECKPOINT_EVERY = 0
    settings.MF_LEDGER_SHARDS = 4
    staff = UserFactory(username="cb-staff", is_staff=True, permissions=[GRANT_PERMISSION])
    payers = [UserFactory(username=f"cb-payer{i}") for i in range(4)]
    owners = [UserFactory(username=f"cb-owner{i}") for i in range(2)]
    contributors = [UserFactory(username=f"cb-contrib{i}") for i in range(4)]
    granted = 0
    for payer in payers:
        credit_grant(user_id=payer.pk, amount_micro=20 * CREDIT, granted_by=staff)
        granted += 20 * CREDIT
    for user in (*owners, *contributors[:2]):  # the other contributors' wallets are created on the way
        account_for_user(user_id=user.pk)
    for worker in range(8):
        for n in range(3):
            hold_create(key=f"cb-h{worker}-{n}", payer_user_id=payers[worker % 4].pk, amount_micro=CREDIT)

    def run(worker: int) -> list:
        rng = random.Random(worker)
        results = []
        try:
            for n in range(6):
                requests = []
                for m in range(rng.randint(1, 8)):
                    shares = {c.pk: rng.randint(1, 9) for c in rng.sample(contributors, 2)}
                    requests.append(
                        SettlementRequest(
                            key=f"cb-{worker}-{n}-{m}",
                            fee_micro=rng.randint(1, 2 * CREDIT),
                            owner_user_id=rng.choice(owners).pk,
                            contributor_shares=shares,
                            payer_user_id=rng.choice(payers).pk,
                        )
                    )
                if n < 3:
                    requests.append(
                        SettlementRequest(
                            key=f"cb-hold-{worker}-{n}",
                            fee_micro=CREDIT // 2,
                            owner_user_id=owners[0].pk,
                            contributor_shares={contributors[0].pk: 1},
                            hold_key=f"cb-h{worker}-{n}",
                        )
                    )
                if n:
                    requests.append(requests[0])  # a replay inside the batch
                results += settlement_post_many(requests=requests)
                try:
                    results.append(
                        settlement_post(
                            key=f"cb-single-{worker}-{n}",
                            fee_micro=CREDIT // 4,
                            owner_user_id=owners[1].pk,
                            contributor_shares={contributors[3].pk: 1},
                            payer_user_id=payers[worker % 4].pk,
                        )
                    )
                except InsufficientFunds as exc:
                    results.append(exc)
            return results
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [outcome for part in pool.map(run, range(8)) for outcome in part]
    assert all(isinstance(o, Transaction | InsufficientFunds) for o in results), results
    assert sum(isinstance(o, Transaction) for o in results) > 100
    posted = {o.idempotency_key: o.pk for o in results if isinstance(o, Transaction)}
    assert Transaction.objects.filter(idempotency_key__startswith="cb-", status="posted").count() == len(posted)
    assert not Hold.objects.filter(status=Hold.Status.HELD).exists()
    report = ledger_verify()
    assert report.transactions == Transaction.objects.count()
    assert Account.objects.aggregate(t=Sum("balance"))["t"] == 0
    assert Account.objects.exclude(role=Account.Role.ISSUANCE).aggregate(t=Sum("balance"))["t"] == granted
    assert not Account.objects.filter(role=Account.Role.USER, balance__lt=0).exists()
    call_command("ledger_verify")
