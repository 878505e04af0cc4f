from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ledger.services import checkpoint_create
from ledger.verification import LedgerBreach, anchors_verify, ledger_verify


class Command(BaseCommand):
    help = (
        "Recomputes every ledger invariant (postings sum to zero, balances equal their postings, no user below "
        "zero, the hash chain, the Merkle checkpoints, open holds and withdrawals) and exits non-zero naming the "
        "first breach. With --anchors, also checks the signed anchors file (every signature, and that the chain "
        "still gives each signed root). When all is well, checkpoints the transactions since the last checkpoint "
        "(and appends its signed anchor)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-checkpoint", action="store_true", help="Only verify; write nothing.")
        parser.add_argument(
            "--anchors",
            nargs="?",
            const=str(settings.MF_LEDGER_ANCHORS_PATH),
            default=None,
            metavar="PATH",
            help="Check the signed anchors in PATH (default: MF_LEDGER_ANCHORS_PATH).",
        )
        parser.add_argument(
            "--public-key",
            default=None,
            metavar="PATH",
            help="PEM public key the anchors must be signed with (default: this machine's MF_LEDGER_ANCHOR_KEY).",
        )

    def handle(self, *args, no_checkpoint: bool = False, anchors=None, public_key=None, **options):
        try:
            report = ledger_verify()
            anchored = None
            if anchors is not None:
                anchored = anchors_verify(path=Path(anchors), public_key_path=Path(public_key) if public_key else None)
        except LedgerBreach as breach:
            raise CommandError(f"Ledger breach: {breach}") from None
        self.stdout.write(
            f"Ledger OK: {report.transactions} transactions, {report.postings} postings, {report.accounts} accounts, "
            f"{report.checkpoints} checkpoints; chain head seq {report.last_seq} hash {report.head_hash}"
        )
        if anchored is not None:
            self.stdout.write(f"Anchors OK: {anchored} signed anchors in {anchors} match the chain")
        if not no_checkpoint:
            checkpoint = checkpoint_create()
            if checkpoint:
                self.stdout.write(
                    f"Checkpoint {checkpoint.pk}: seq {checkpoint.first_seq}..{checkpoint.last_seq}, "
                    f"Merkle root {checkpoint.merkle_root} (signed anchor appended)"
                )
