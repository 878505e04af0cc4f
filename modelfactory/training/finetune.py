"""The one entry point the fine-tuning task calls: rows + settings in, adapter + metrics + samples out."""

from __future__ import annotations

import gc
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfactory.training import memory
from modelfactory.training.data import BuildReport, Example, build_examples
from modelfactory.training.failures import is_out_of_memory, out_of_memory_message
from modelfactory.training.loop import (
    Cancelled,
    ControlCallback,
    EventCallback,
    TrainingError,
    load_model_for_training,
    release_memory,
    train,
)
from modelfactory.training.presets import DEFAULT_PRESET, validate_hyperparameters
from modelfactory.training.verdict import judge

ADAPTER_DIR = "adapter"
ZIP_NAME = "adapter.zip"
CHECKPOINT_DIR = "checkpoints"
AGREEMENT_KEYS = ("answers_scored", "base_exact_match", "exact_match", "base_token_f1", "token_f1")


@dataclass
class FinetuneSpec:
    base_model_dir: Path
    rows: list[dict[str, Any]]
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # overrides on top of the preset
    preset: str = DEFAULT_PRESET
    base_model_name: str = "base-model"  # written into adapter_config.json and the model card
    model_name: str = "Fine-tuned model"
    datanet_versions: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "version", "manifest_hash"}]
    contributors: int = 0
    max_answers: int = 64  # held-out rows answered by base and tuned and scored (exact match, token F1), at most
    max_new_tokens: int = 96
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    checkpoint_every: int = 50  # optimizer steps; 0 = never
    processes: int = 0  # data-parallel processes: 0 = one per GPU of the worker (1 on a CPU); N = exactly N
    init_adapter_dir: Path | None = None  # continue training this adapter (same base model) instead of a fresh one
    test_rows: list[dict[str, Any]] = field(default_factory=list)  # a test set the user chose, scored like held-out
    memory_budget_fraction: float = memory.DEFAULT_BUDGET_FRACTION  # of the memory free when training starts
    memory_limit_bytes: int = 0  # the memory the job may hold (0: what the machine has)


@dataclass
class FinetuneResult:
    adapter_dir: Path
    zip_path: Path
    artifact_hash: str
    metrics: dict[str, Any]
    samples: list[dict[str, Any]]
    hyperparameters: dict[str, Any]
    rows_used: int
    rows_dropped: int
    train_row_ids: list[int]
    eval_row_ids: list[int]
    report: dict[str, Any]
    stopped_early: bool
    model_card: str
    resumed_from: int = 0  # the checkpoint step training continued from (0: it ran from the start)


def split_rows(row_ids: list[int], *, eval_split: float, seed: int) -> tuple[set[int], set[int]]:
    """(train ids, eval ids): a seeded shuffle of the sorted row ids; at least one row on each side when the split
    is above zero and there are two rows or more."""
    ids = sorted(set(row_ids))
    random.Random(seed).shuffle(ids)
    n_eval = 0
    if eval_split > 0 and len(ids) >= 2:
        n_eval = min(len(ids) - 1, max(1, round(len(ids) * eval_split)))
    return set(ids[n_eval:]), set(ids[:n_eval])


def no_examples_message(report: BuildReport, max_length: int) -> str:
    if report.rows_total == 0:
        return "The chosen datanet versions have no rows to train on."
    parts = [f"None of the {report.rows_total} rows can be trained on:"]
    if report.too_long:
        parts.append(
            f"{len(report.too_long)} are longer than the maximum length of {max_length} tokens (raise it, or "
            f"shorten those rows)"
        )
    if report.no_answer:
        parts.append(f"{len(report.no_answer)} have no answer to learn")
    if report.invalid:
        parts.append(f"{len(report.invalid)} could not be read ({next(iter(report.invalid.values()))})")
    return parts[0] + " " + "; ".join(parts[1:]) + "."


def row_fingerprint(row: dict[str, Any]) -> str:
    """The content of a row, whatever its id: the same question and answer in two datanets are the same row."""
    import json

    return json.dumps([row.get("kind"), row.get("content")], sort_keys=True, ensure_ascii=False)


def _test_set_comparison(
    spec, model, tokenizer, train_ids, *, hp, device, on_batch=None, memory_budget=None, memory_free=None
) -> dict[str, Any] | None:
    """Base vs tuned on the test set the user chose, without the rows the model trained on (counted in
    "overlap"): the same measures and per-row samples as on the held-out rows, plus "rows" (all of the test set)
    and "overlap". None without a test set."""
    from modelfactory.training.evaluate import compare_base_and_tuned

    if not spec.test_rows:
        return None
    trained = {row_fingerprint(r) for r in spec.rows if int(r["id"]) in train_ids}
    kept = [r for r in spec.test_rows if row_fingerprint(r) not in trained]
    test_examples, _ = build_examples(tokenizer, kept, max_length=int(hp["max_length"]))
    usable = {e.row_id for e in test_examples}
    rows = sorted((r for r in kept if int(r["id"]) in usable), key=lambda r: int(r["id"]))
    result = compare_base_and_tuned(
        model, tokenizer, test_examples, rows, device=device, max_answers=spec.max_answers,
        max_new_tokens=spec.max_new_tokens, batch_size=int(hp["batch_size"]), memory_budget=memory_budget,
        memory_free=memory_free, phase="evaluating_again", on_batch=on_batch,
    )  # fmt: skip
    result["rows"] = len(spec.test_rows)
    result["overlap"] = len(spec.test_rows) - len(kept)
    return result


def run_finetune(
    spec: FinetuneSpec,
    *,
    workdir: Path,
    on_event: EventCallback | None = None,
    control: ControlCallback | None = None,
    resume: bool = False,
    capabilities=None,
) -> FinetuneResult:
    """Validates the settings, builds examples, splits off the held-out rows, trains, evaluates base vs tuned and
    writes `workdir/adapter/` (adapter files + README.md model card) and `workdir/adapter.zip`.

    Raises TrainingError (plain-language message: bad settings, no usable rows, missing model files, out of
    memory, diverged loss) or Cancelled (nothing kept: the workdir's adapter and checkpoints are removed). With
    `resume=True` training continues from `workdir/checkpoints/` when a checkpoint is there.

    With several GPUs (or `spec.processes` > 1) the same steps run data-parallel in one process per device
    (distributed.py); `on_event` and `control` are still called here, in the caller's thread. `capabilities`
    (devices.Capabilities) replaces the detected hardware, for tests."""
    from modelfactory.training import distributed
    from modelfactory.training.devices import HardwareError, detect_capabilities, plan_hardware

    hp, errors = validate_hyperparameters(spec.hyperparameters, preset=spec.preset)
    if errors:
        raise TrainingError("Some settings are not valid: " + "; ".join(f"{k} {v}" for k, v in errors.items()) + ".")
    try:
        plan = plan_hardware(
            capabilities or detect_capabilities(),
            preference=spec.device,
            quantization=hp["quantization"],
            processes=spec.processes,
        )
    except HardwareError as exc:
        raise TrainingError(str(exc)) from None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not plan.distributed:
        import torch

        device = torch.device(plan.device_type, plan.device_index) if plan.device_index is not None else None
        return _finetune(
            spec, hp, workdir=workdir, device=device or torch.device(plan.device_type), on_event=on_event,
            control=control, resume=resume, rank=None,
        )  # fmt: skip
    try:
        return distributed.launch(
            "modelfactory.training.finetune:finetune_rank",
            {"spec": spec, "hp": hp, "workdir": workdir, "resume": resume},
            world_size=plan.world_size,
            device_type=plan.device_type,
            on_event=on_event,
            control=control,
        )
    except Cancelled:
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
        shutil.rmtree(workdir / ADAPTER_DIR, ignore_errors=True)
        raise


def finetune_rank(*, rank, payload: dict[str, Any], on_event=None, control=None) -> FinetuneResult | None:
    """One process of a data-parallel run (called by distributed.launch): rank 0 returns the result."""
    return _finetune(
        payload["spec"], payload["hp"], workdir=payload["workdir"], device=rank.device(), on_event=on_event,
        control=control, resume=payload["resume"], rank=rank,
    )  # fmt: skip


def _finetune(spec, hp, *, workdir: Path, device, on_event, control, resume: bool, rank) -> FinetuneResult | None:
    from modelfactory.training.artifacts import artifact_hash, build_zip, model_card, save_adapter, write_model_card
    from modelfactory.training.evaluate import compare_base_and_tuned
    from modelfactory.training.model_files import ModelFilesError

    stage = {"phase": "loading"}  # where an out-of-memory error happened, for its message

    def emit(event: dict[str, Any]) -> None:
        if event.get("type") == "phase":
            stage["phase"] = event["phase"]
        if on_event is not None:
            on_event(event)

    def cancel_check() -> None:  # a "cancel" is honoured after training too: between evaluation batches
        if control is not None and control() == "cancel":
            raise Cancelled("The run was cancelled.")

    started = time.perf_counter()
    model = None
    try:
        emit({"type": "phase", "phase": "loading"})
        try:
            model, tokenizer = load_model_for_training(
                Path(spec.base_model_dir), hp, device=device, init_adapter=spec.init_adapter_dir
            )
        except ModelFilesError as exc:
            raise TrainingError(f"The base model cannot be loaded: {exc}") from None
        examples, report = build_examples(tokenizer, spec.rows, max_length=int(hp["max_length"]))
        if not examples:
            raise TrainingError(no_examples_message(report, int(hp["max_length"])))
        train_ids, eval_ids = split_rows(
            [e.row_id for e in examples], eval_split=float(hp["eval_split"]), seed=int(hp["seed"])
        )
        train_examples: list[Example] = [e for e in examples if e.row_id in train_ids]
        eval_examples = [e for e in examples if e.row_id in eval_ids]
        eval_rows = sorted((r for r in spec.rows if int(r["id"]) in eval_ids), key=lambda r: int(r["id"]))
        emit({"type": "phase", "phase": "training", "rows_used": report.rows_used, "rows_dropped": report.dropped})
        result = train(
            model,
            train_examples,
            hp,
            device=device,
            pad_id=tokenizer.pad_token_id,
            eval_examples=eval_examples,
            on_event=on_event,
            control=control,
            checkpoint_dir=workdir / CHECKPOINT_DIR,
            checkpoint_every=spec.checkpoint_every,
            resume=resume,
            rank=rank,
            memory_budget=memory.budget_bytes(
                fraction=spec.memory_budget_fraction, device=device, simulated=spec.memory_limit_bytes
            ),
        )
        if rank is not None and not rank.is_main:
            return None  # rank 0 evaluates and saves
        emit({"type": "phase", "phase": "evaluating"})
        release_memory(device)  # what training freed goes back to the system before the next stage
        cancel_check()
        evaluating = time.perf_counter()
        free = memory.free_bytes(device=device, simulated=spec.memory_limit_bytes)  # what the stage could add
        bounds = {"memory_budget": int(spec.memory_budget_fraction * free), "memory_free": free}
        comparison = compare_base_and_tuned(
            model,
            tokenizer,
            eval_examples,
            eval_rows,
            device=device,
            max_answers=spec.max_answers,
            max_new_tokens=spec.max_new_tokens,
            batch_size=int(hp["batch_size"]),
            on_batch=cancel_check,
            **bounds,
        )
        test = _test_set_comparison(
            spec, model, tokenizer, train_ids, hp=hp, device=device, on_batch=cancel_check, **bounds
        )
        evaluation_seconds = time.perf_counter() - evaluating
        release_memory(device)
        cancel_check()
        emit({"type": "phase", "phase": "saving"})
        adapter_dir = save_adapter(model, workdir / ADAPTER_DIR, base_model_name=spec.base_model_name)
        digest = artifact_hash(adapter_dir)
        metrics = {
            "base_eval_loss": comparison["base_eval_loss"],
            "eval_loss": comparison["eval_loss"],
            "base_perplexity": comparison["base_perplexity"],
            "perplexity": comparison["perplexity"],
            "eval_tokens": comparison["eval_tokens"],
            **{key: comparison[key] for key in AGREEMENT_KEYS},
            "train_loss": result.train_loss if math.isfinite(result.train_loss) else None,
            "tokens": result.tokens,
            "steps": result.steps,
            "total_steps": result.total_steps,
            "steps_per_epoch": result.steps_per_epoch,
            "passes": result.passes,
            "train_seconds": result.seconds,
            "seconds": time.perf_counter() - started,
            "evaluation_seconds": evaluation_seconds,
        }
        metrics["verdict"] = judge(metrics, preset=spec.preset)
        if test is not None:
            metrics["test"] = test
        card = model_card(
            name=spec.model_name,
            base_model=spec.base_model_name,
            datanet_versions=spec.datanet_versions,
            hyperparameters=hp,
            metrics=metrics,
            contributors=spec.contributors,
            artifact_sha256=digest,
            rows_used=len(train_examples) + len(eval_examples),
            rows_dropped=report.dropped,
        )
        write_model_card(adapter_dir, card)
        zip_path = build_zip(adapter_dir, workdir / ZIP_NAME)
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
        return FinetuneResult(
            adapter_dir=adapter_dir,
            zip_path=zip_path,
            artifact_hash=digest,
            metrics=metrics,
            samples=comparison["samples"],
            hyperparameters=hp,
            rows_used=report.rows_used,
            rows_dropped=report.dropped,
            train_row_ids=sorted(train_ids),
            eval_row_ids=sorted(eval_ids),
            report=report.as_dict(),
            stopped_early=result.stopped_early,
            model_card=card,
            resumed_from=result.resumed_from,
        )
    except Cancelled:
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
        shutil.rmtree(workdir / ADAPTER_DIR, ignore_errors=True)
        raise
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        del exc
        if stage["phase"] != "training":  # the loop says which batch; elsewhere, which stage
            raise TrainingError(memory.out_of_memory_message(phase=stage["phase"], hp=hp)) from None
        raise TrainingError(
            out_of_memory_message(hp, rows=int(hp["batch_size"]), width=int(hp["max_length"]), device=device)
        ) from None
    finally:
        del model
        gc.collect()
        release_memory(device)
