"""Read-only checks of the platform's parts, used by /healthz.

Each check has a `detail` for operators (exception text, hosts, worker names) and a `plain` line safe for anyone:
/healthz is public, and exception text can carry a broker's user name and host or a database's address."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import connection
from django.utils import timezone

from core.models import WorkerHeartbeat


@dataclass
class Check:
    ok: bool
    detail: str
    extra: dict = field(default_factory=dict)
    plain: str = ""

    def public(self) -> dict:
        return {"ok": self.ok, "detail": self.plain or ("answers" if self.ok else "not working")}


def health_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        detail = f"database unreachable: {exc.__class__.__name__}: {exc}".strip()
        return Check(False, detail, plain="the database cannot be reached")
    return Check(True, f"{connection.vendor} answers", plain="the database answers")


def health_broker() -> Check:
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
            transport = conn.transport_cls
    except Exception as exc:
        detail = f"broker unreachable: {exc.__class__.__name__}: {exc}".strip()
        return Check(False, detail, plain="the job queue cannot be reached")
    return Check(True, f"{transport} broker answers", plain="the job queue answers")


def health_workers() -> Check:
    try:
        fresh_after = timezone.now() - timedelta(seconds=settings.MF_WORKER_STALE_SECONDS)
        workers = list(WorkerHeartbeat.objects.filter(last_seen__gte=fresh_after))
    except Exception as exc:
        return Check(
            False, f"cannot read worker heartbeats: {exc.__class__.__name__}", plain="worker heartbeats cannot be read"
        )
    served = sorted({q for w in workers for q in w.queues})
    missing = [q.name for q in current_app.conf.task_queues if q.name not in served]
    extra = {"workers": [{"hostname": w.hostname, "queues": w.queues} for w in workers], "queues": served}
    if not workers:
        return Check(
            False,
            "no Celery worker has reported in the last "
            f"{settings.MF_WORKER_STALE_SECONDS} s; start one with `make run` or `celery -A config worker`",
            extra,
            plain="no worker is running",
        )
    if missing:
        return Check(
            False,
            f"no live worker listens on the queue(s): {', '.join(missing)}",
            extra,
            plain="some kinds of work have no worker running",
        )
    return Check(True, f"{len(workers)} worker(s) alive on {', '.join(served)}", extra, plain="workers are running")


def health_report(*, full: bool) -> dict:
    """The overall status and which parts fail, for anyone; with `full` (staff only), each check's operator detail:
    exception text, worker host names and queues."""
    checks = {"database": health_database(), "broker": health_broker()}
    checks["worker"] = (
        health_workers()
        if checks["database"].ok
        else Check(False, "unknown: the database is down", plain="unknown while the database is down")
    )
    failing = [name for name, check in checks.items() if not check.ok]
    return {
        "status": "ok" if not failing else "fail",
        "failing": failing,
        "checks": {
            name: {"ok": c.ok, "detail": c.detail, **c.extra} if full else c.public() for name, c in checks.items()
        },
    }
