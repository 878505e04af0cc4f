"""Calibration of a training worker's hardware at start: a short timed forward/backward of each offered base model
with the default preset's adapter (estimate.measure_tokens_per_s), kept on the base model per hardware. Before any
run of a base model on this hardware, the review step's time estimate starts from this measured rate instead of a
FLOP-rate guess; after the first run, the finished runs calibrate it (selectors.past_runs)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from modelfactory import selectors
from modelfactory.models import BaseModel

logger = logging.getLogger(__name__)

CALIBRATION_MAX_AGE = timedelta(days=7)  # a worker that starts again within this keeps the measurement


def finetune_calibrate(*, force: bool = False) -> dict[str, float]:
    """Measures, on this worker, the training throughput of each active base model not measured on this hardware in
    the last CALIBRATION_MAX_AGE (all of them with `force`), and keeps it. {slug: tokens/s measured now}. A model
    that cannot be loaded is logged and skipped: its estimate stays the rough guess."""
    from modelfactory.training.devices import HardwareError, describe_hardware, detect_capabilities

    try:  # this worker's own hardware (the web's view of it is the weakest live worker's)
        plan, caps = selectors.training_plan(caps=detect_capabilities())
    except HardwareError as exc:
        logger.warning("no calibration: %s", exc)
        return {}
    hardware = describe_hardware(plan, caps)
    fresh_after = timezone.now() - CALIBRATION_MAX_AGE
    measured: dict[str, float] = {}
    for base in BaseModel.objects.filter(is_active=True).order_by("pk"):
        known = (base.calibration or {}).get(hardware) or {}
        if not force and known.get("measured_at", "") >= fresh_after.isoformat():
            continue
        try:
            rate = _measure(base, plan)
        except Exception:
            logger.exception("calibrating %s on %s failed", base.slug, hardware)
            continue
        with transaction.atomic():  # another worker may be writing another hardware's figure
            locked = BaseModel.objects.select_for_update().get(pk=base.pk)
            figure = {"tokens_per_s": rate, "measured_at": timezone.now().isoformat()}
            locked.calibration = {**(locked.calibration or {}), hardware: figure}
            locked.save(update_fields=["calibration"])
        measured[base.slug] = rate
        logger.info("calibrated %s on %s: %.1f training tokens/s", base.slug, hardware, rate)
    return measured


def _measure(base: BaseModel, plan) -> float:
    import torch

    from modelfactory.training.estimate import measure_base_throughput

    device = torch.device(plan.device_type, plan.device_index) if plan.device_index is not None else None
    return measure_base_throughput(Path(base.path), device=device or torch.device(plan.device_type))
