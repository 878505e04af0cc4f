from django.apps import AppConfig


class AttributionConfig(AppConfig):
    name = "attribution"
    verbose_name = "Attribution"

    def ready(self) -> None:
        # imported once the app registry is ready: the services import models of this and other apps
        from attribution import services
        from core.heartbeat import register_sweep
        from modelfactory.hooks import PostTrainingStage, register_inference_completed, register_post_training_stage

        register_post_training_stage(
            PostTrainingStage(
                name="indexing",
                label="Building the attribution index over the training rows",
                run=services.index_stage_run,
            )
        )
        register_inference_completed(services.inference_completed)
        register_sweep("attribution.services.attribution_sweep_pending")
