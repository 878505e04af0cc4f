"""The worker killed during settlement: a real Celery worker on the `default` queue runs an answer's attribution task
(attribution, then settlement of the held fee on the ledger) and is SIGKILLed at an exact point, held there by row
locks the test takes from its own PostgreSQL connections:

- "mid-settlement": the attribution is stored, the ledger transaction is open but not committed (the test holds the
  inference's hold row, which settlement locks first);
- "after the ledger commit": the ledger transaction is committed, but the attribution is not yet marked settled (the
  test then holds the attribution row, which is written last).

Recovery is the operator's sweep (`manage.py attribution_sweep --older-than 0`; the worker also runs it once a
minute) and a restarted worker. The fee is then settled exactly once, `ledger_verify` passes and the credit is
conserved. The attribution itself falls back to row shares here (the model has no attribution index and the worker
runs with MF_ATTRIBUTION_MAX_RETRIES=0): the settlement path is the one every answer takes.

PostgreSQL only: SQLite has no row locks, so a worker cannot be stopped between two of its statements."""

import json

import psycopg
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from attribution.models import Attribution, AttributionShare
from datanets import services as datanet_services
from datanets.models import Datanet
from ledger import services as ledger
from ledger.models import Account, Hold, Transaction
from modelfactory import hooks
from modelfactory import services as mf_services
from modelfactory.models import FineTuneJob, Inference, ModelVersion, TrainedModel
from tests.factories import UserFactory
from tests.faults.conftest import needs_postgresql, wait_for
from tests.tiny import build_tiny_model_dir

pytestmark = needs_postgresql("SQLite has no row locks to stop the worker between two of its statements")

CREDIT = 1_000_000
GRANT = 5 * CREDIT
RESERVED = 2 * CREDIT
FEE = 1_234_567


@pytest.fixture
def answer(shared_db, fault_settings, tmp_path, monkeypatch):
    """A completed answer of a trained model whose fee is held, not yet handed to the attribution queue; returns
    complete() which completes it the way the serving code does (inference-completed hooks, enqueue after commit)."""
    owner, alice, bob = (UserFactory(username=name) for name in ("owner", "alice", "bob"))
    caller, staff = (
        UserFactory(username="caller"),
        UserFactory(username="staff", is_staff=True, permissions=["ledger.grant_credit"]),
    )
    datanet = datanet_services.datanet_create(
        owner=owner, name="Zorb facts", kind="instruction", summary="Made-up facts.", policy=Datanet.Policy.OPEN
    )
    for user, rows in ((alice, range(0, 6)), (bob, range(6, 10))):
        data = "\n".join(json.dumps({"instruction": f"Fact {i}?", "output": f"Zorb fact number {i}."}) for i in rows)
        c = datanet_services.contribution_create(
            datanet=datanet, contributor=user, upload=SimpleUploadedFile("f.jsonl", data.encode()), enqueue=False
        )
        datanet_services.contribution_ingest(contribution_id=c.pk)
    version = datanet_services.version_publish(datanet=datanet, actor=owner)
    base = mf_services.base_model_register(path=build_tiny_model_dir(tmp_path / "tiny"), name="Tiny", slug="tiny")
    with monkeypatch.context() as m:
        # no training: the job "ran" already
        m.setattr(mf_services.finetune_jobs, "_enqueue", lambda job_id, resume=False: None)
        job, _ = mf_services.finetune_launch(
            user=owner, base_model_slug=base.slug, version_ids=[version.pk], preset="quick", idempotency_key="k"
        )
    FineTuneJob.objects.filter(pk=job.pk).update(status=FineTuneJob.Status.SUCCEEDED, finished_at=timezone.now())
    model = TrainedModel.objects.create(owner=owner, slug="zorb", name="Zorb", base_model=base)
    model_version = ModelVersion.objects.create(
        model=model, number=1, job=job, adapter_path=str(tmp_path / "adapter"), zip_path=str(tmp_path / "a.zip"),
        artifact_hash="0" * 64, model_card="# Zorb",
    )  # fmt: skip
    ledger.credit_grant(user_id=caller.pk, amount_micro=GRANT, granted_by=staff, memo="test")
    inference = Inference.objects.create(
        caller=caller, model=model, model_version=model_version, source=Inference.Source.API,
        messages=[{"role": "user", "content": "Fact 3?"}], prompt_token_ids=[1, 2, 3], price_per_1k_tokens=0,
        fee_reserved_micro=RESERVED,
    )  # fmt: skip
    hold_key = f"inference:{inference.pk}"
    ledger.hold_create(key=hold_key, payer_user_id=caller.pk, amount_micro=RESERVED)

    def complete() -> Inference:
        with transaction.atomic():
            Inference.objects.filter(pk=inference.pk).update(
                status=Inference.Status.COMPLETED, output="Zorb fact number 3.", output_token_ids=[4, 5, 6],
                prompt_tokens=3, completion_tokens=3, finish_reason="stop", fee_micro=FEE, hold_key=hold_key,
                completed_at=timezone.now(),
            )  # fmt: skip
            inference.refresh_from_db()
            for handler in hooks.inference_completed_handlers:
                handler(inference=inference)
        return inference

    complete.inference = inference
    complete.hold_key = hold_key
    complete.users = {"owner": owner, "alice": alice, "bob": bob, "caller": caller}
    complete.url = shared_db.url
    return complete


def _waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _balance(user) -> int:
    return Account.objects.filter(owner=user).values_list("balance", flat=True).first() or 0


@pytest.mark.parametrize("point", ["mid-settlement", "after-ledger-commit"])
def test_worker_killed_during_settlement_settles_the_fee_exactly_once(answer, start_worker, point):
    inference, key = answer.inference, f"settle:inference:{answer.inference.pk}"
    attribution = Attribution.objects.filter(inference_id=inference.pk)
    env = {"MF_ATTRIBUTION_MAX_RETRIES": "0"}
    hold_lock = psycopg.connect(answer.url)
    row_lock = psycopg.connect(answer.url)
    try:
        hold_lock.execute("SELECT id FROM ledger_hold WHERE key = %s FOR UPDATE", [answer.hold_key])
        answer()  # completed: the attribution task is on the queue
        worker = start_worker("default", **env)
        wait_for(
            lambda: attribution.filter(status=Attribution.Status.FALLBACK).exists() and _waiting_on_a_lock() == 1,
            timeout=60,
            what="the worker to store the attribution and wait inside the settlement",
        )
        if point == "after-ledger-commit":
            row_lock.execute(
                "SELECT id FROM attribution_attribution WHERE inference_id = %s FOR UPDATE", [inference.pk]
            )
            hold_lock.commit()  # the settlement goes on, commits, then waits to mark the attribution settled
            wait_for(
                lambda: Transaction.objects.filter(idempotency_key=key).exists() and _waiting_on_a_lock() == 1,
                timeout=30,
                what="the ledger transaction to commit and the worker to wait on the attribution row",
            )
        worker.kill()
    finally:
        hold_lock.rollback()
        row_lock.rollback()
        hold_lock.close()
        row_lock.close()
    wait_for(lambda: _waiting_on_a_lock() == 0, timeout=30, what="PostgreSQL to end the dead worker's session")

    # The state the kill left: not settled as far as the attribution knows; the ledger has it once or not at all.
    assert attribution.get().settlement_status == Attribution.Settlement.PENDING
    committed = point == "after-ledger-commit"
    assert Transaction.objects.filter(idempotency_key=key).count() == (1 if committed else 0)
    assert Hold.objects.get(key=answer.hold_key).status == (Hold.Status.SETTLED if committed else Hold.Status.HELD)

    # Recovery: the sweep re-enqueues the unfinished answer and a restarted worker finishes it.
    call_command("attribution_sweep", "--older-than", "0")
    start_worker("default", **env)
    done = wait_for(
        lambda: attribution.filter(settlement_status=Attribution.Settlement.SETTLED).first(),
        timeout=60,
        what="the swept answer to be settled",
        every=0.25,
    )

    settlements = Transaction.objects.filter(idempotency_key=key)
    assert settlements.count() == 1
    tx = settlements.get()
    assert done.settlement_tx_id == tx.pk
    assert done.settlement_note == "1.234567 credits settled."
    assert Hold.objects.get(key=answer.hold_key).status == Hold.Status.SETTLED
    assert Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT).count() == 1
    users = answer.users
    assert _balance(users["caller"]) == GRANT - FEE
    split = tx.metadata["settlement"]["split"]
    paid = {str(users[n].pk): _balance(users[n]) for n in ("alice", "bob")}
    # rule settle-2: a contributor no part of the answer was traced to is paid nothing and is not in the split
    assert {uid: amount for uid, amount in paid.items() if amount} == split["contributors"]
    assert _balance(users["owner"]) == split["owner"]
    assert split["owner"] + sum(split["contributors"].values()) + split["platform"] == FEE
    shares = dict(AttributionShare.objects.filter(attribution=done).values_list("contributor_id", "amount_micro"))
    assert {str(uid): amount for uid, amount in shares.items()} == {str(uid): paid[str(uid)] for uid in shares}
    # Conserved: every micro-credit is somewhere, and the ledger's own check agrees.
    assert Account.objects.aggregate(total=Sum("balance"))["total"] == 0
    call_command("ledger_verify", "--no-checkpoint")
