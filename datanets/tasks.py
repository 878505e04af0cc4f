from celery import shared_task
from django.conf import settings

from datanets import services


@shared_task(
    name="datanets.tasks.contribution_ingest_task",
    bind=True,
    time_limit=settings.MF_INGEST_TIME_LIMIT_SECONDS + 60,
    soft_time_limit=settings.MF_INGEST_TIME_LIMIT_SECONDS,
)
def contribution_ingest_task(self, contribution_id: int) -> str:
    """Checks one uploaded file (idempotent: a second run finds it already claimed and does nothing). Ingests
    abandoned by dead workers are failed by the workers' recovery sweep (settings.MF_SWEEPS)."""
    contribution = services.contribution_ingest(
        contribution_id=contribution_id, worker_hostname=self.request.hostname or ""
    )
    return contribution.status if contribution is not None else "skipped"


@shared_task(name="datanets.tasks.version_search_index_task", time_limit=1800, soft_time_limit=1740)
def version_search_index_task(version_id: int) -> int:
    """Puts a newly published version's new rows into the retrieval index (idempotent; a version that was not
    indexed here is indexed by the first question that searches it)."""
    return services.version_search_index(version_id=version_id)
