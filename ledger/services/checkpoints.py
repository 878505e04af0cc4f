"""Checkpoints: a Merkle root over the hashes of the transactions since the last one, so a later change to the chain
shows against a root that was published; the posting engine schedules one every MF_LEDGER_CHECKPOINT_EVERY
transactions. Each checkpoint also appends a signed anchor outside the database (services/anchors.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection, transaction

from common.merkle import merkle_root
from ledger.models import Checkpoint, Transaction
from ledger.services.anchors import anchor_checkpoint


def checkpoint_create() -> Checkpoint | None:
    """A Merkle root over the hashes of every transaction since the last checkpoint (None if there are none).

    seq is assigned under the chain-head lock held until commit, so every seq up to the current maximum is
    committed: the range is final."""
    with transaction.atomic(durable=not connection.in_atomic_block):
        last = Checkpoint.objects.select_for_update().order_by("-last_seq").first()
        first_seq = (last.last_seq if last else 0) + 1
        rows = list(Transaction.objects.filter(seq__gte=first_seq).order_by("seq").values_list("seq", "hash"))
        if not rows:
            return None
        checkpoint = Checkpoint.objects.create(
            first_seq=first_seq,
            last_seq=rows[-1][0],
            tx_count=len(rows),
            merkle_root=merkle_root([digest for _, digest in rows]),
            last_hash=rows[-1][1],
        )
        anchor_checkpoint(checkpoint=checkpoint)
        return checkpoint


def _maybe_schedule_checkpoint(seq: int) -> None:
    every = settings.MF_LEDGER_CHECKPOINT_EVERY
    if every and seq % every == 0:
        from ledger.tasks import checkpoint_create_task  # here: ledger.tasks imports this package (a cycle)

        transaction.on_commit(checkpoint_create_task.delay)
