from django.core.management.base import BaseCommand

from attribution.demo import demo_run


class Command(BaseCommand):
    help = (
        "Run the whole chain in the terminal: three contributors upload to a datanet (one with bad rows), the curator "
        "publishes a version, a model is fine-tuned (SmolLM2-135M-Instruct, or --tiny), published and asked "
        "questions; each answer's contributors, the wallets, and ledger_verify are printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tiny", action="store_true", help="Use a tiny random model: fast, but it babbles.")
        parser.add_argument(
            "--farmer",
            action="store_true",
            help="A fourth contributor uploads 200 rows nobody asks about; compare what the old and the new "
            "settlement rule pay each contributor.",
        )

    def handle(self, *args, tiny=False, farmer=False, **options):
        demo_run(tiny=tiny, farmer=farmer, say=lambda line: self.stdout.write(line))
        self.stdout.write(self.style.SUCCESS("Done. Open http://127.0.0.1:8000/attribution/ and /wallet/ to see it."))
