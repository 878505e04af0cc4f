"""Publishing a trained model: its price within the operators' bounds (ServingPolicy), its visibility, and the
fee rule every call is charged by."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from ledger.calc.money import format_credits_exact as _credits
from modelfactory.models import ServingPolicy, TrainedModel
from modelfactory.services.errors import ServingRefused
from modelfactory.services.retrieval import (
    retrieval_index_build,
    retrieval_settings_apply,
    retrieval_settings_clean,
)


def fee_for_tokens(*, price_per_1k_tokens: int, tokens: int) -> int:
    """Micro-credits for `tokens` tokens, rounded up to the micro-credit."""
    return -(-price_per_1k_tokens * tokens // 1000)


def _owned_model(*, user, slug: str) -> TrainedModel:
    model = TrainedModel.objects.filter(slug=slug).first()
    if model is None or not (model.owner_id == user.pk or user.is_staff):
        raise ServingRefused(f"You have no model called “{slug}”.", code="not_found", status=404)
    return model


def trained_model_publish(
    *,
    user,
    slug: str,
    price_per_1k_tokens: int,
    visibility: str,
    allow_exports: bool | None = None,
    retrieval: dict | None = None,
) -> TrainedModel:
    """Publishes the model's latest version at a price (micro-credits per 1,000 tokens) within the operators'
    bounds. Publishing again changes price and visibility; calls already made keep the price they were made at.
    `allow_exports` (None: unchanged) lets others download its files while it is public.
    `retrieval` ({enabled, top_k?, datanet_versions?, live?}, see services.retrieval) sets how answers draw on the
    data; left out, the settings stay as they were. The versions searched are indexed before this returns."""
    model = _owned_model(user=user, slug=slug)
    if model.latest_version is None:
        raise ServingRefused("This model has no trained version yet, so it cannot be published.", code="no_version")
    policy = ServingPolicy.current()
    if not policy.min_price_per_1k_tokens <= price_per_1k_tokens <= policy.max_price_per_1k_tokens:
        raise ServingRefused(
            f"The price must be between {_credits(policy.min_price_per_1k_tokens)} and "
            f"{_credits(policy.max_price_per_1k_tokens)} credits per 1,000 tokens "
            f"(you asked for {_credits(price_per_1k_tokens)}).",
            code="price_out_of_bounds",
            param="price_per_1k_tokens",
        )
    if visibility not in TrainedModel.Visibility.values:
        raise ServingRefused(
            f"Visibility must be one of {', '.join(TrainedModel.Visibility.values)} (got “{visibility}”).",
            code="invalid_visibility",
            param="visibility",
        )
    clean = retrieval_settings_clean(model=model, retrieval=retrieval)
    with transaction.atomic(durable=True):
        model = TrainedModel.objects.select_for_update().get(pk=model.pk)
        model.price_per_1k_tokens = price_per_1k_tokens
        model.visibility = visibility
        if allow_exports is not None:
            model.allow_exports = allow_exports
        if model.status != TrainedModel.Status.PUBLISHED:
            model.status = TrainedModel.Status.PUBLISHED
            model.published_at = timezone.now()
        model.save(update_fields=["price_per_1k_tokens", "visibility", "allow_exports", "status", "published_at"])
        if clean is not None:
            retrieval_settings_apply(model=model, clean=clean)
    if model.retrieval_enabled:
        retrieval_index_build(model=model)
    return model


def trained_model_unpublish(*, user, slug: str) -> TrainedModel:
    """Back to draft: only the owner can call it now. Past inferences are kept."""
    model = _owned_model(user=user, slug=slug)
    with transaction.atomic(durable=True):
        TrainedModel.objects.filter(pk=model.pk).update(status=TrainedModel.Status.DRAFT)
    model.refresh_from_db()
    return model
