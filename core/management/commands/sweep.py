from django.core.management.base import BaseCommand

from core.sweeper import run_sweeps


class Command(BaseCommand):
    help = "Runs every recovery sweep once (the workers run them every MF_WORKER_SWEEP_SECONDS); exits 1 if one failed."

    def handle(self, *args, **options):
        results = run_sweeps()
        for result in results:
            if result.error:
                self.stderr.write(f"{result.name}: failed ({result.error})")
            else:
                self.stdout.write(f"{result.name}: {len(result.finished)} finished {result.finished or ''}".rstrip())
        if any(result.error for result in results):
            raise SystemExit(1)
