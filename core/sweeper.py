"""The one sweeper: every "find stale work and finish it" job is listed in `settings.MF_SWEEPS` and run here, on the
workers' schedule (core/heartbeat.py, every MF_WORKER_SWEEP_SECONDS) or once by `manage.py sweep`. Never from a
page or API read: a GET writes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    name: str
    path: str
    finished: list  # the ids of the work it finished
    error: str = ""


def run_sweeps() -> list[SweepResult]:
    """Runs every registered sweep; one that fails (a database restarting) never stops the others."""
    results = []
    for name, path in settings.MF_SWEEPS.items():
        try:
            finished = list(import_string(path)() or [])
        except Exception as exc:
            logger.warning("recovery sweep %s failed (%s: %s)", path, exc.__class__.__name__, exc)
            results.append(SweepResult(name, path, [], f"{exc.__class__.__name__}: {exc}"))
            continue
        if finished:
            logger.info("recovery sweep %s finished %s", path, finished)
        results.append(SweepResult(name, path, finished))
    return results
