"""The schedule of a run: optimizer steps per pass, how many passes, the learning-rate curve. No torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_PASSES = 50  # min_steps never makes training read the data more often than this


def plan_steps(n_examples: int, hp: dict[str, Any]) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_epoch, epochs = plan_passes(n_examples, hp)
    return per_epoch, per_epoch * epochs


def plan_passes(n_examples: int, hp: dict[str, Any]) -> tuple[int, int]:
    """(optimizer steps per epoch, passes over the data): `epochs` passes, or more when that is fewer than
    `min_steps` optimizer steps (a small datanet gets enough steps to learn its facts), at most MAX_PASSES."""
    batches = math.ceil(n_examples / int(hp["batch_size"]))
    per_epoch = max(1, math.ceil(batches / int(hp["grad_accum"])))
    needed = math.ceil(int(hp.get("min_steps") or 0) / per_epoch)
    return per_epoch, max(int(hp["epochs"]), min(MAX_PASSES, needed))


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
