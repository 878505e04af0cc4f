from django.apps import AppConfig


class AttributionConfig(AppConfig):
    name = "attribution"
    verbose_name = "Attribution"

    def ready(self) -> None:
        # Imported here: models and services can only load once the app registry is ready.
        from attribution import services
        from modelfactory.hooks import (
            PostTrainingStage,
            register_inference_completed,
            register_model_quality,
            register_post_training_stage,
        )

        register_post_training_stage(
            PostTrainingStage(
                name="indexing",
                label="Building the attribution index over the training rows",
                run=services.index_stage_run,
                discard=services.index_stage_discard,
            )
        )
        register_inference_completed(services.inference_completed)
        from attribution.selectors import model_quality

        register_model_quality(model_quality)

        from attribution.reputation import datanet_reputation_scores
        from attribution.selectors import row_earnings
        from datanets.hooks import (
            register_bonds,
            register_decided,
            register_reputation,
            register_row_earnings,
            register_upload,
        )

        register_upload(services.bond_on_upload)
        register_decided(services.bond_on_decided)
        register_reputation(datanet_reputation_scores)
        register_bonds(services.bonds_held)
        register_row_earnings(row_earnings)
