from django.apps import AppConfig


class ModelFactoryConfig(AppConfig):
    name = "modelfactory"
    verbose_name = "Model factory"

    def ready(self) -> None:
        # Imported here: core.heartbeat loads core.models, which needs the app registry ready.
        from core.heartbeat import register_hardware_probe

        register_hardware_probe("gpu", "modelfactory.training.devices.capabilities_report")
