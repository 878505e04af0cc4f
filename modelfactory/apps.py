from django.apps import AppConfig


class ModelFactoryConfig(AppConfig):
    name = "modelfactory"
    verbose_name = "Model factory"

    def ready(self) -> None:
        # Imported here: core.heartbeat loads core.models, which needs the app registry ready.
        from core.heartbeat import register_hardware_probe

        register_hardware_probe("gpu", "modelfactory.training.devices.capabilities_report")

        from celery.signals import worker_ready

        worker_ready.connect(calibrate_on_start, weak=False, dispatch_uid="modelfactory-calibrate-on-start")


def calibrate_on_start(sender=None, **kwargs) -> bool:
    """A gpu worker that starts queues the measurement of its hardware (tasks.finetune_calibrate_task); True when
    it did. MF_CALIBRATE_ON_START=false turns it off (the tests' workers do)."""
    from django.conf import settings

    queues = {queue.name for queue in sender.task_consumer.queues} if sender is not None else set()
    if "gpu" not in queues or not settings.MF_CALIBRATE_ON_START:
        return False
    from modelfactory.tasks import finetune_calibrate_task

    finetune_calibrate_task.delay()
    return True
