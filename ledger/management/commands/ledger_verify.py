from django.core.management.base import BaseCommand, CommandError

from ledger.services import checkpoint_create
from ledger.verification import LedgerBreach, ledger_verify


class Command(BaseCommand):
    help = (
        "Recomputes every ledger invariant (postings sum to zero, balances equal their postings, no user below "
        "zero, the hash chain, the Merkle checkpoints, open holds and withdrawals) and exits non-zero naming the "
        "first breach. When all is well, checkpoints the transactions since the last checkpoint."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-checkpoint", action="store_true", help="Only verify; write nothing.")

    def handle(self, *args, no_checkpoint: bool = False, **options):
        try:
            report = ledger_verify()
        except LedgerBreach as breach:
            raise CommandError(f"Ledger breach: {breach}") from None
        self.stdout.write(
            f"Ledger OK: {report.transactions} transactions, {report.postings} postings, {report.accounts} accounts, "
            f"{report.checkpoints} checkpoints; chain head seq {report.last_seq} hash {report.head_hash}"
        )
        if not no_checkpoint:
            checkpoint = checkpoint_create()
            if checkpoint:
                self.stdout.write(
                    f"Checkpoint {checkpoint.pk}: seq {checkpoint.first_seq}..{checkpoint.last_seq}, "
                    f"Merkle root {checkpoint.merkle_root}"
                )
