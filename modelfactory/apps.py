from django.apps import AppConfig


class ModelFactoryConfig(AppConfig):
    name = "modelfactory"
    verbose_name = "Model factory"

    def ready(self) -> None:
        import modelfactory.celery  # noqa: F401  the Celery app, so that every process's shared tasks use its settings
        from core.heartbeat import register_hardware_probe, register_sweep

        register_sweep("modelfactory.services.finetune_reap_stale")
        register_hardware_probe("gpu", "modelfactory.training.devices.capabilities_report")
