import datetime

from django.core.management.base import BaseCommand, CommandError

from attribution.models import Attribution
from attribution.services import attribution_verify


class Command(BaseCommand):
    help = (
        "Recomputes answers' attribution from the stored index and checks it against what was stored and paid "
        "(index files unchanged, shares, unattributed part, top rows, spans, settlement). Exits 1 if any differs."
    )

    def add_arguments(self, parser):
        parser.add_argument("inference_ids", nargs="*", type=int, metavar="INFERENCE_ID")
        parser.add_argument("--all", action="store_true", help="Every finished attribution (with --since: from then).")
        parser.add_argument("--since", type=datetime.date.fromisoformat, help="YYYY-MM-DD, with --all.")

    def handle(self, *args, inference_ids, all=False, since=None, **options):
        if all == bool(inference_ids):
            raise CommandError("Give one or more INFERENCE_IDs, or --all (optionally with --since YYYY-MM-DD).")
        if since is not None and not all:
            raise CommandError("--since goes with --all.")
        if all:
            finished = Attribution.objects.filter(status__in=Attribution.FINISHED)
            if since is not None:
                finished = finished.filter(created_at__date__gte=since)
            inference_ids = list(finished.order_by("inference_id").values_list("inference_id", flat=True))
        failed = []
        for inference_id in inference_ids:
            result = attribution_verify(inference_id=inference_id)
            self.stdout.write(f"Answer {inference_id}: {'verified' if result.ok else 'DIFFERS'}")
            for check in result.checks:
                self.stdout.write(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
            if not result.ok:
                failed.append(inference_id)
        self.stdout.write(f"{len(inference_ids) - len(failed)} of {len(inference_ids)} answer(s) verified.")
        if failed:
            raise CommandError(f"Attribution differs for answer(s) {', '.join(map(str, failed))}.", returncode=1)
