"""Extension points, so that apps "above" modelfactory (attribution) can plug in without modelfactory importing
them (see DESIGN.md: datanets <- modelfactory <- attribution -> ledger).

- Post-training stages run inside the training job, after the adapter is saved and before the job is marked
  succeeded, with their own progress phase on the job page (e.g. building the attribution index). A job cancelled
  during or after a stage calls the stage's `discard` (nothing of a cancelled job is kept); `on_progress` may raise
  to stop a stage when the job is cancelled: let it through.
- Inference-completed handlers run inside the transaction that completes an inference; they should only enqueue
  work with transaction.on_commit.
- The model-quality provider answers what a model version's page and API detail show about how well its answers
  are traced (attribution registers its selector).

Apps register in their AppConfig.ready()."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PostTrainingStage:
    name: str  # shown as the job's phase, e.g. "indexing"
    label: str  # plain words for the job page
    run: Callable[..., Any]  # run(*, job, result, on_progress: Callable[[int, int], None]) -> None
    discard: Callable[..., Any] | None = None  # discard(*, job) -> None: undo what run wrote, when the job is cancelled


post_training_stages: list[PostTrainingStage] = []
inference_completed_handlers: list[Callable[..., None]] = []  # handler(*, inference) -> None


def register_post_training_stage(stage: PostTrainingStage) -> None:
    if all(existing.name != stage.name for existing in post_training_stages):
        post_training_stages.append(stage)


def register_inference_completed(handler: Callable[..., None]) -> None:
    if handler not in inference_completed_handlers:
        inference_completed_handlers.append(handler)


model_quality_providers: list[Callable[..., dict]] = []


def register_model_quality(provider: Callable[..., dict]) -> None:
    if provider not in model_quality_providers:
        model_quality_providers.append(provider)


def model_quality(*, version) -> dict | None:
    """How well a model version's answers are traced to its training rows (attribution.selectors.model_quality: the
    method's measured figures and its answers' traced share), from the registered provider, or None."""
    return model_quality_providers[0](version=version) if model_quality_providers else None
