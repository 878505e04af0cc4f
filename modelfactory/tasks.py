import socket

from celery import shared_task


@shared_task(name="modelfactory.tasks.finetune_run_task", acks_late=True, reject_on_worker_lost=True)
def finetune_run_task(job_id: int, resume: bool = False) -> str:
    """Runs on the `gpu` queue, one job at a time per worker process. Safe to deliver twice: the job is claimed
    with a conditional update, and a redelivery after a worker died resumes from the last checkpoint."""
    from modelfactory.services import finetune_run

    job = finetune_run(job_id=job_id, hostname=socket.gethostname(), resume=resume)
    return job.status if job is not None else "not-claimed"


@shared_task(name="modelfactory.tasks.finetune_calibrate_task")
def finetune_calibrate_task() -> dict:
    """Sent by each gpu worker as it starts (modelfactory.signals), so it runs on the gpu queue after any job already
    waiting, one at a time: the throughput of each base model on this hardware, for the first time estimate."""
    from modelfactory.services import finetune_calibrate

    return finetune_calibrate()


@shared_task(name="modelfactory.tasks.inference_generate_task")
def inference_generate_task(inference_id: int) -> str:
    """Runs on the `inference` queue (thread pool: concurrent requests share the process's batcher; Celery's time
    limits do not apply to threads, so the wait is bounded by MF_INFERENCE_TIMEOUT_SECONDS in the service). Not
    retried: the web process fails the inference and releases its hold when no answer comes."""
    from modelfactory.services import inference_generate

    return inference_generate(inference_id=inference_id)


@shared_task(name="modelfactory.tasks.inference_base_task")
def inference_base_task(**job) -> None:
    """The playground's free base-model comparison."""
    from modelfactory.services import base_generate

    base_generate(**job)


@shared_task(name="modelfactory.tasks.export_run_task", acks_late=True, reject_on_worker_lost=True)
def export_run_task(export_id: int) -> str:
    """Runs on the `gpu` queue (it loads and merges a whole model). Safe to deliver twice: the export is claimed with
    a conditional update; one whose worker died is failed by the sweep and made again when asked for."""
    from modelfactory.services import export_run

    export = export_run(export_id=export_id)
    return export.status if export is not None else "not-claimed"


@shared_task(name="modelfactory.tasks.evaluation_run_task", acks_late=True, reject_on_worker_lost=True)
def evaluation_run_task(evaluation_id: int) -> str:
    """Runs on the `gpu` queue, as the evaluation at the end of training does. Safe to deliver twice: the evaluation
    is claimed with a conditional update; one whose worker died is failed by the sweep."""
    from modelfactory.services import evaluation_run

    evaluation = evaluation_run(evaluation_id=evaluation_id)
    return evaluation.status if evaluation is not None else "not-claimed"
