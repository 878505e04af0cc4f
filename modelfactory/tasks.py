import socket

from celery import shared_task


@shared_task(name="modelfactory.tasks.finetune_run_task", acks_late=True, reject_on_worker_lost=True)
def finetune_run_task(job_id: int, resume: bool = False) -> str:
    """Runs on the `gpu` queue, one job at a time per worker process. Safe to deliver twice: the job is claimed
    with a conditional update, and a redelivery after a worker died resumes from the last checkpoint."""
    from modelfactory.services import finetune_run

    job = finetune_run(job_id=job_id, hostname=socket.gethostname(), resume=resume)
    return job.status if job is not None else "not-claimed"
