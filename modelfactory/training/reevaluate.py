"""Evaluate again: a trained adapter answers a test set chosen after training, base and tuned side by side, with the
same measures as the held-out rows at the end of training (evaluate.compare_base_and_tuned). Rows the model was
trained on (the training split of every job in its lineage, recomputed exactly as training split them) are left out
of the score and counted. Plain data in, plain data out; no Django."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfactory.training.data import build_examples
from modelfactory.training.finetune import row_fingerprint, split_rows
from modelfactory.training.memory import DEFAULT_BUDGET_FRACTION, free_bytes


@dataclass
class TrainedData:
    """The rows one job of the lineage read and the settings it split them with (eval_split, seed, max_length)."""

    rows: list[dict[str, Any]]
    hyperparameters: dict[str, Any]


@dataclass
class EvaluationSpec:
    base_model_dir: Path
    adapter_dir: Path
    hyperparameters: dict[str, Any]  # the model's own (max_length, batch_size, quantization)
    test_rows: list[dict[str, Any]]
    trained: list[TrainedData] = field(default_factory=list)
    max_answers: int = 64
    max_new_tokens: int = 96
    device: str = "auto"
    memory_budget_fraction: float = DEFAULT_BUDGET_FRACTION  # of the memory free once the model is loaded
    memory_limit_bytes: int = 0  # the memory the evaluation may hold (0: what the machine has)


def trained_fingerprints(tokenizer, trained: list[TrainedData]) -> set[str]:
    """The content of every row a job of the lineage trained on (not the rows it held out)."""
    seen: set[str] = set()
    for data in trained:
        hp = data.hyperparameters
        examples, _ = build_examples(tokenizer, data.rows, max_length=int(hp["max_length"]))
        train_ids, _ = split_rows(
            [e.row_id for e in examples], eval_split=float(hp["eval_split"]), seed=int(hp["seed"])
        )
        seen.update(row_fingerprint(r) for r in data.rows if int(r["id"]) in train_ids)
    return seen


def _device(preference: str, quantization: str):
    import torch

    from modelfactory.training.devices import detect_capabilities, plan_hardware

    plan = plan_hardware(detect_capabilities(), preference=preference, quantization=quantization, processes=1)
    if plan.device_index is not None:
        return torch.device(plan.device_type, plan.device_index)
    return torch.device(plan.device_type)


def evaluate_adapter(
    spec: EvaluationSpec, *, on_progress: Callable[[float], None] | None = None, device=None
) -> dict[str, Any]:
    """{"rows", "overlap", "answers_scored", "base_exact_match", "exact_match", "base_token_f1", "token_f1",
    "base_eval_loss", "eval_loss", "base_perplexity", "perplexity", "eval_tokens", "samples", "seconds"}.
    `on_progress(fraction)` runs before each pass of either side (the caller's cancel check: it may raise). Each
    pass fits in `memory_budget_fraction` of the memory free once the model is loaded (evaluate.pass_limits).
    Raises loop.TrainingError when the files cannot be loaded, or when a row cannot fit even alone in that free
    memory (nothing is evaluated then)."""
    import time

    from modelfactory.training.evaluate import compare_base_and_tuned
    from modelfactory.training.loop import TrainingError, load_model_for_training, release_memory
    from modelfactory.training.model_files import ModelFilesError

    started = time.perf_counter()
    hp = spec.hyperparameters
    device = device or _device(spec.device, hp.get("quantization", "none"))
    try:
        model, tokenizer = load_model_for_training(
            Path(spec.base_model_dir), hp, device=device, init_adapter=Path(spec.adapter_dir)
        )
    except ModelFilesError as exc:
        raise TrainingError(f"The model cannot be loaded: {exc}") from None
    try:
        trained = trained_fingerprints(tokenizer, spec.trained)
        kept = [r for r in spec.test_rows if row_fingerprint(r) not in trained]
        examples, _ = build_examples(tokenizer, kept, max_length=int(hp["max_length"]))
        usable = {e.row_id for e in examples}
        rows = sorted((r for r in kept if int(r["id"]) in usable), key=lambda r: int(r["id"]))
        passes, done = [1], [0]  # how many passes both sides take (compare_base_and_tuned plans them), how many ran

        def on_plan(planned: int) -> None:
            passes[0] = planned

        def on_batch() -> None:
            if on_progress is not None:
                on_progress(min(done[0] / max(1, passes[0]), 1.0))
            done[0] += 1

        free = free_bytes(device=device, simulated=spec.memory_limit_bytes)
        result = compare_base_and_tuned(
            model, tokenizer, examples, rows, device=device, max_answers=spec.max_answers,
            max_new_tokens=spec.max_new_tokens, batch_size=int(hp["batch_size"]),
            memory_budget=int(spec.memory_budget_fraction * free), memory_free=free, phase="evaluating_again",
            on_batch=on_batch, on_plan=on_plan,
        )  # fmt: skip
    finally:
        del model
        release_memory(device)
    result["rows"] = len(spec.test_rows)
    result["overlap"] = len(spec.test_rows) - len(kept)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
