from django.core.management.base import BaseCommand

from ledger.services import checkpoint_create


class Command(BaseCommand):
    help = "Writes a Merkle checkpoint over the transactions since the last one (nothing if there are none)."

    def handle(self, *args, **options):
        checkpoint = checkpoint_create()
        if checkpoint is None:
            self.stdout.write("Nothing new to checkpoint.")
            return
        self.stdout.write(
            f"Checkpoint {checkpoint.pk}: seq {checkpoint.first_seq}..{checkpoint.last_seq} "
            f"({checkpoint.tx_count} transactions), Merkle root {checkpoint.merkle_root}"
        )
