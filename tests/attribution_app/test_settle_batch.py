"""Settlements batch when they queue up: an answer's settlement takes along the other finished answers waiting for
theirs, in one ledger call (ledger.settlement_post_many), each still its own ledger transaction and answered on its
own. PostgreSQL only for the batching (claims are advisory locks); a batch of one everywhere else."""

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from attribution.models import Attribution
from attribution.services import answer, settlement
from attribution.tasks import inference_attribute_task
from ledger.models import Hold, Transaction
from ledger.verification import ledger_verify
from tests.attribution_app.conftest import LONG_QUESTION

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="settlements are batched on PostgreSQL only (advisory-lock claims, the batch function of ledger "
    "migration 0005); elsewhere each answer settles alone (test_a_batch_of_one_settles_only_its_own_answer).",
)


@pytest.fixture
def waiting(planted, make_inference, cast, enqueued, monkeypatch):
    """waiting(n): n answers attributed and stored whose worker died before settling (their settlement is
    pending), returned in order."""

    def _make(n: int) -> list:
        answers = [make_inference(planted, LONG_QUESTION, caller=cast.teammate) for _ in range(n)]
        with monkeypatch.context() as m:
            m.setattr(answer, "attribution_settle", lambda *, attribution_id: None)  # the worker dies here
            for inference in answers:
                inference_attribute_task.apply(args=[inference.pk])
        for inference in answers:
            attribution = Attribution.objects.get(inference=inference)
            assert attribution.is_finished and attribution.settlement_status == Attribution.Settlement.PENDING
        return answers

    return _make


def _settled(inference) -> Attribution:
    attribution = Attribution.objects.get(inference=inference)
    assert attribution.settlement_status == Attribution.Settlement.SETTLED, attribution.settlement_note
    tx = attribution.settlement_tx
    assert tx.idempotency_key == f"settle:inference:{inference.pk}"
    assert tx.metadata["inference_id"] == inference.pk
    assert Hold.objects.get(key=inference.hold_key).close_tx_id == tx.pk
    return attribution


@postgres_only
def test_waiting_answers_are_settled_in_the_next_answers_ledger_call(waiting, planted, make_inference, cast):
    earlier = waiting(3)
    latest = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    with CaptureQueriesContext(connection) as queries:
        inference_attribute_task.apply(args=[latest.pk])
    ledger_calls = [q["sql"] for q in queries.captured_queries if "ledger_settlement_post" in q["sql"]]
    assert len(ledger_calls) == 1 and "ledger_settlement_post_many" in ledger_calls[0]
    txs = [_settled(inference).settlement_tx for inference in [latest, *earlier]]
    assert len({tx.pk for tx in txs}) == 4  # one ledger transaction each
    assert sorted(tx.seq for tx in txs) == list(range(min(tx.seq for tx in txs), min(tx.seq for tx in txs) + 4))
    assert Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT).count() == 4
    # Replaying any of them changes nothing.
    before = Transaction.objects.count()
    for inference in earlier:
        inference_attribute_task.apply(args=[inference.pk])
    assert Transaction.objects.count() == before
    ledger_verify()


@postgres_only
def test_claimed_answers_are_left_to_their_claimer_and_a_refused_one_does_not_stop_the_others(
    waiting, planted, make_inference, cast, settings
):
    from ledger.services import hold_release

    claimed, refused, free = waiting(3)
    hold_release(hold_key=refused.hold_key)  # someone closed this hold first: the ledger refuses that one only
    other_worker = psycopg.connect(_dsn(), autocommit=True)
    try:
        claim = Attribution.objects.get(inference=claimed).pk
        other_worker.execute("SELECT pg_advisory_lock(%s, %s)", [settlement._CLAIM_LOCK_SPACE, claim])
        latest = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
        inference_attribute_task.apply(args=[latest.pk])
        _settled(latest)
        _settled(free)
        assert Attribution.objects.get(inference=claimed).settlement_status == Attribution.Settlement.PENDING
        failed = Attribution.objects.get(inference=refused)
        assert failed.settlement_status == Attribution.Settlement.FAILED
        assert (
            failed.settlement_note
            == f"The ledger refused the settlement: The hold '{refused.hold_key}' is already released."
        )
        # Its own task settles a claimed answer all the same (a second settlement of it would be a replay).
        inference_attribute_task.apply(args=[claimed.pk])
        _settled(claimed)
    finally:
        other_worker.close()
    # This worker's claims were released: another connection can take them.
    with psycopg.connect(_dsn(), autocommit=True) as probe:
        ids = list(Attribution.objects.values_list("pk", flat=True))
        taken = probe.execute(
            "SELECT bool_and(pg_try_advisory_lock(%s, id)) FROM unnest(%s::integer[]) AS id",
            [settlement._CLAIM_LOCK_SPACE, ids],
        ).fetchone()[0]
        assert taken
    ledger_verify()


def test_a_batch_of_one_settles_only_its_own_answer(waiting, planted, make_inference, cast, settings):
    settings.MF_ATTRIBUTION_SETTLE_BATCH = 1
    earlier = waiting(2)
    latest = make_inference(planted, LONG_QUESTION, caller=cast.teammate)
    inference_attribute_task.apply(args=[latest.pk])
    _settled(latest)
    assert all(
        Attribution.objects.get(inference=i).settlement_status == Attribution.Settlement.PENDING for i in earlier
    )
    ledger_verify()


def _dsn() -> str:
    params = connection.get_connection_params()
    return psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in ("host", "port", "user", "password", "dbname")}
    )
