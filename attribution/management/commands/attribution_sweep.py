from django.core.management.base import BaseCommand

from attribution.services import attribution_sweep_pending


class Command(BaseCommand):
    help = "Re-enqueues completed answers whose attribution or settlement has not finished (run it from cron)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", type=int, default=None, help="Minutes (default MF_ATTRIBUTION_SWEEP_MINUTES)."
        )

    def handle(self, *args, older_than=None, **options):
        ids = attribution_sweep_pending(older_than_minutes=older_than)
        self.stdout.write(f"Re-enqueued {len(ids)} answer(s) for attribution." + (f" Ids: {ids}" if ids else ""))
