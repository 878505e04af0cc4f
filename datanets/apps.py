from django.apps import AppConfig


class DatanetsConfig(AppConfig):
    name = "datanets"
    verbose_name = "Datanets"

    def ready(self) -> None:
        from core.heartbeat import register_sweep

        register_sweep("datanets.services.contribution_fail_stale")
