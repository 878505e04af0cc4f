"""Signed anchors of the chain, outside the database (ledger/calc/anchors.py has the format): each checkpoint
appends one, signed with the key at MF_LEDGER_ANCHOR_KEY, to the file at MF_LEDGER_ANCHORS_PATH."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from ledger.calc.anchors import anchor_append, anchor_hash, anchor_sign, load_or_create_key
from ledger.calc.canonical import GENESIS_HASH
from ledger.models import Checkpoint, Transaction


def anchor_checkpoint(*, checkpoint: Checkpoint) -> dict:
    """Appends a signed anchor of the chain up to the checkpoint's last transaction and returns it. Called inside
    the checkpoint's database transaction: if the file cannot be written, the checkpoint is not written either."""
    key = load_or_create_key(settings.MF_LEDGER_ANCHOR_KEY)
    last_tx_id = Transaction.objects.filter(seq=checkpoint.last_seq).values_list("id", flat=True).get()

    def make(previous: dict | None) -> dict:
        fields = {
            "sequence": previous["sequence"] + 1 if previous else 1,
            "prev_anchor": anchor_hash(previous) if previous else GENESIS_HASH,
            "checkpoint_first_seq": checkpoint.first_seq,
            "last_seq": checkpoint.last_seq,
            "last_tx_id": last_tx_id,
            "tx_count": checkpoint.last_seq,
            "root": checkpoint.last_hash,
            "merkle_root": checkpoint.merkle_root,
            "created_at": timezone.now().isoformat(),
        }
        return anchor_sign(fields, key)

    return anchor_append(settings.MF_LEDGER_ANCHORS_PATH, make)
