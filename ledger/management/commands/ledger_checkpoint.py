from django.conf import settings
from django.core.management.base import BaseCommand

from ledger.calc.anchors import load_or_create_key, public_key_pem
from ledger.services import checkpoint_create


class Command(BaseCommand):
    help = (
        "Writes a Merkle checkpoint over the transactions since the last one, with its signed anchor (nothing if "
        "there are none). --print-public-key prints the anchors' public key (PEM) for `ledger_verify --public-key`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--print-public-key", action="store_true", help="Print the public key; write nothing.")

    def handle(self, *args, print_public_key: bool = False, **options):
        if print_public_key:
            self.stdout.write(public_key_pem(load_or_create_key(settings.MF_LEDGER_ANCHOR_KEY).public_key()), ending="")
            return
        checkpoint = checkpoint_create()
        if checkpoint is None:
            self.stdout.write("Nothing new to checkpoint.")
            return
        self.stdout.write(
            f"Checkpoint {checkpoint.pk}: seq {checkpoint.first_seq}..{checkpoint.last_seq} "
            f"({checkpoint.tx_count} transactions), Merkle root {checkpoint.merkle_root}, signed anchor appended"
        )
