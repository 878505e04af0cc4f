"""Before launch: optimizer steps, tokens, time and peak memory of a run, for the wizard's review step.

Time comes from a training throughput in tokens/s. Best is `measure_tokens_per_s`: a short timed
forward/backward of the actual model with its LoRA adapter on the worker (method "measured"). Without it we use
FLOP rates (method "constant"): LoRA training costs about 4 x parameters FLOPs per token (forward 2N, backward
through the frozen weights 2N; no weight gradients). CPU_FLOPS was measured on our 2-core AMD EPYC CPU worker with
SmolLM2-135M (bench/bench_training.py, our loop: 23.8 tokens/s x 4 x 135M, with the 2 cores shared by other
jobs, so it is pessimistic); CUDA_FLOPS is an assumption (an
H100-class GPU at ~25% of its bf16 peak for these small models), not a measurement.

With several devices (data-parallel, distributed.py) the time is divided by the device count: linear scaling is
an assumption, not a measurement (the all-reduce of the LoRA gradients is small, untested on several GPUs).
Memory is per device: each device's micro-batches hold at most `batch_size` rows, as on one device.

Memory starts as a formula: weights + adapter, its gradients and AdamW state + activations of the
largest micro-batch (per token and layer about 34 x hidden x bytes/2, Korthikanti et al. 2022, with fused
attention) + output logits on answer tokens + a fixed framework overhead. The peak is the largest of the job's
stages: training, the held-out comparison and the attribution index (memory.py's per-token costs; the index also
holds every row's features). bench/bench_memory.py measures each stage. Each finished job measures its stages'
peaks (memory.StagePeaks); `memory_range` scales each stage's formula by what the last runs on this machine
measured against it, as `run_time_range` calibrates the time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from modelfactory.training.memory import (
    activation_bytes_per_token,
    index_bytes_per_token,
    lora_layer_shapes,
    training_bytes_per_token,
)

CPU_FLOPS = 1.3e10
CUDA_FLOPS = 2.0e14
CPU_OVERHEAD_BYTES = 450 * 2**20  # torch + transformers in a worker process
CUDA_OVERHEAD_BYTES = 600 * 2**20  # CUDA context and allocator slack


@dataclass(frozen=True)
class Estimate:
    steps: int
    tokens: int  # tokens processed over all epochs (no padding)
    seconds: float
    peak_memory_bytes: int
    tokens_per_s: float
    method: str  # "measured" | "constant"
    devices: int = 1  # data-parallel devices the time assumes
    # peak_memory_bytes is the largest of the job's stages: training, the held-out comparison, the attribution index
    training_memory_bytes: int = 0
    evaluation_memory_bytes: int = 0
    index_memory_bytes: int = 0
    memory_stage: str = "training"  # the stage that needs peak_memory_bytes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lora_parameters(config: dict[str, Any], *, rank: int, targets: list[str]) -> int:
    """LoRA parameter count for a Llama-style config, Phi-3's fused layers too (A: in x r, B: r x out per layer)."""
    shapes = lora_layer_shapes(config)
    per_layer = sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)
    return per_layer * int(config.get("num_hidden_layers", 0))


def estimate_run(
    token_counts: list[int],
    hp: dict[str, Any],
    *,
    device_type: str,
    parameters: int,
    model_config: dict[str, Any],
    answer_tokens: int | None = None,
    tokens_per_s: float | None = None,
    devices: int = 1,
    index_k: int = 4096,
) -> Estimate:
    """`token_counts`: tokens of each training example; `hp`: clean hyperparameters; `parameters`: base model size;
    `model_config`: its config.json as a dict; `tokens_per_s`: a measured throughput of one device when there is
    one; `devices`: data-parallel devices (time / devices; memory is per device)."""
    from modelfactory.training.presets import resolve_target_modules
    from modelfactory.training.schedule import plan_passes

    per_epoch, passes = plan_passes(len(token_counts), hp)
    steps = per_epoch * passes
    tokens = sum(token_counts) * passes
    if tokens_per_s:
        method, rate = "measured", float(tokens_per_s)
    else:
        flops = CUDA_FLOPS if device_type == "cuda" else CPU_FLOPS
        method, rate = "constant", flops / (4.0 * max(1, parameters))
    rate *= max(1, int(devices))
    cuda = device_type == "cuda"
    weight_bytes = 0.55 if hp.get("quantization") == "4bit" else (2 if cuda else 4)
    act_bytes = 2 if cuda else 4
    targets = resolve_target_modules(hp["target_modules"], (model_config.get("architectures") or [None])[0])
    lora = lora_parameters(model_config, rank=int(hp["rank"]), targets=targets)
    longest = max(token_counts, default=0)
    batch_tokens = int(hp["batch_size"]) * longest
    answer_share = (answer_tokens / max(1, sum(token_counts))) if answer_tokens is not None else 1.0
    overhead = CUDA_OVERHEAD_BYTES if cuda else CPU_OVERHEAD_BYTES
    per_token = training_bytes_per_token(
        model_config,
        rank=int(hp["rank"]),
        targets=targets,
        dropout=float(hp.get("dropout", 0.0)),
        act_bytes=act_bytes,
        answer_share=answer_share,
    )  # activations, the adapter's own, the answer tokens' logits, softmax and their gradient
    memory = (
        parameters * weight_bytes
        + lora * 4 * 4  # weights, gradients, AdamW's two moments, fp32
        + batch_tokens * per_token
        + overhead
    )
    # The comparison: the same model and batches, no gradients and no optimizer state (a conservative bound: the
    # activations of a training pass).
    evaluation = parameters * weight_bytes + lora * 4 + batch_tokens * activation_bytes_per_token(
        model_config, act_bytes=act_bytes, answer_share=answer_share
    ) + overhead  # fmt: skip
    # The index: the model reloaded in fp32 on the CPU, passes of at most one training micro-batch with every LoRA
    # output's gradient held at once (memory.index_bytes_per_token), and the features of every row (fp16 stored,
    # fp32 while scoring). Its passes are also held within MF_MEMORY_BUDGET_FRACTION of the worker's free memory.
    k = max(int(index_k), lora_matrices(model_config, targets=targets) * int(hp["rank"]))
    index = (
        parameters * 4
        + lora * 4
        + batch_tokens * index_bytes_per_token(model_config, rank=int(hp["rank"]), targets=targets)
        + len(token_counts) * k * (2 + 4)
        + CPU_OVERHEAD_BYTES
    )
    stages = {"training": memory, "evaluation": evaluation, "index": index}
    stage = max(stages, key=lambda name: stages[name])
    return Estimate(
        steps=steps,
        tokens=tokens,
        seconds=tokens / rate,
        peak_memory_bytes=int(math.ceil(stages[stage])),
        tokens_per_s=rate,
        method=method,
        devices=max(1, int(devices)),
        training_memory_bytes=int(math.ceil(memory)),
        evaluation_memory_bytes=int(math.ceil(evaluation)),
        index_memory_bytes=int(math.ceil(index)),
        memory_stage=stage,
    )


def lora_matrices(config: dict[str, Any], *, targets: list[str]) -> int:
    """How many LoRA matrices (A and B of each adapted layer): each one gets at least `rank` index features."""
    known = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"}
    return 2 * sum(1 for t in targets if t in known) * int(config.get("num_hidden_layers", 0))


def measure_tokens_per_s(
    model, *, device, seq_len: int, batch_size: int, repeats: int = 2, best: bool = False
) -> float:
    """Training tokens/s of `model` (with its LoRA adapter) from timed forward/backward passes on random tokens: over
    all `repeats` passes, or, with `best`, the fastest one (what the machine does when nothing else holds its cores
    for a moment: a start-up measurement should not depend on what else was starting then).

    One untimed warm-up pass first; gradients are discarded. Half the positions count as answer tokens."""
    import torch

    from modelfactory.training.data import IGNORE_INDEX
    from modelfactory.training.loop import answer_loss_sum, autocast

    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)
    labels = ids.clone()
    labels[:, : seq_len // 2] = IGNORE_INDEX
    was_training = model.training
    model.train()
    elapsed, fastest = 0.0, float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device):
            loss, count = answer_loss_sum(model, ids, labels)
        (loss / count).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        if i:
            elapsed, fastest = elapsed + took, min(fastest, took)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return batch_size * seq_len / fastest if best else batch_size * seq_len * repeats / elapsed


CALIBRATION_SEQ_LEN = 64  # tokens per row of the start-up measurement: short instruction rows, as most datanets hold


def measure_base_throughput(model_dir, *, device) -> float:
    """What a training worker measures when it starts (services/calibration.py): training tokens/s of the base model
    in `model_dir` with the default preset's fresh adapter, over CALIBRATION_SEQ_LEN-token rows."""
    from modelfactory.training.loop import load_model_for_training
    from modelfactory.training.memory import release_freed
    from modelfactory.training.presets import DEFAULT_PRESET, validate_hyperparameters

    hp, _ = validate_hyperparameters({}, preset=DEFAULT_PRESET)
    model, _tokenizer = load_model_for_training(model_dir, hp, device=device)
    try:
        batch = int(hp["batch_size"])
        return measure_tokens_per_s(
            model, device=device, seq_len=CALIBRATION_SEQ_LEN, batch_size=batch, repeats=5, best=True
        )
    finally:  # the worker's next job starts from what it held before, not from this model (1.3 GB -> 0.4 GB)
        del model
        release_freed()


MIN_TEACHING_STEPS = 30  # fewer optimizer steps than this do not teach a model facts (bench/bench_learning.py)
MIN_TEACHING_WORK = 0.01  # learning rate x steps below this barely moves a LoRA adapter (the old default: 0.0016)


def teaching_warnings(n_train: int, n_eval: int, hp: dict[str, Any]) -> list[str]:
    """Plain-words warnings for the review step when the planned run cannot teach the data, or cannot be checked."""
    from modelfactory.training.schedule import plan_steps

    warnings = []
    _, steps = plan_steps(max(1, n_train), hp)
    if steps < MIN_TEACHING_STEPS:
        warnings.append(
            f"Only {steps} learning step{'s' if steps != 1 else ''} are planned: too few for the model to learn your "
            f"facts. Choose \u201cLearns your facts\u201d, or raise the epochs or the minimum of learning steps "
            f"(Advanced settings) to {MIN_TEACHING_STEPS} or more."
        )
    elif float(hp["learning_rate"]) * steps < MIN_TEACHING_WORK:
        warnings.append(
            f"The learning rate ({float(hp['learning_rate']):g}) is too low for {steps} steps: the model will barely "
            f"change. Raise it or train for more steps."
        )
    if n_train < 10:
        warnings.append(
            f"Only {n_train} row{'s' if n_train != 1 else ''} to train on: add more rows, each fact said a few "
            f"different ways, for the model to learn it."
        )
    if n_eval == 0:
        warnings.append("No row is held out, so the result cannot be checked: raise the held-out share or add rows.")
    return warnings


@dataclass(frozen=True)
class PastRun:
    """What one finished run on the same base model and hardware measured (the calibration of this machine)."""

    tokens_per_s: float  # training tokens / training seconds
    seconds_per_answer: float  # the base-vs-tuned comparison's seconds per held-out row answered
    overhead_seconds: float  # everything else from start to finish: loading, saving, indexing
    # measured peak / estimated memory of each stage it measured ("training", "evaluation", "index")
    memory_ratios: dict[str, float] = field(default_factory=dict)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


ROUGH_FACTOR = 3.0  # no run on this machine yet: the FLOP-rate guess may be off by this much either way
CALIBRATED_FACTOR = 1.35  # calibrated: the machine is shared, a run may be this much slower or faster


MEASURED_FACTOR = 2.0  # no run yet, but the training rate was measured on this machine (services/calibration.py)


def run_time_range(
    *, tokens: int, answers: int, past: list[PastRun], rough_seconds: float, measured: bool = False
) -> dict[str, Any]:
    """The whole run's time (training + comparison + the rest) as a range, from the medians of up to the last 10
    runs on this base model and hardware; the range is widened to cover every one of those runs' rates, and at
    least x/÷ CALIBRATED_FACTOR. Without a past run: `rough_seconds` x/÷ MEASURED_FACTOR when its training rate was
    `measured` on this machine (method "measured"), else x/÷ ROUGH_FACTOR (the FLOP-rate guess, "rough").
    {"seconds", "low", "high", "method": "calibrated" | "measured" | "rough", "runs"}"""
    past = [run for run in past if run.tokens_per_s > 0][:10]
    if not past:
        seconds = max(1.0, rough_seconds)
        factor = MEASURED_FACTOR if measured else ROUGH_FACTOR
        return {"seconds": seconds, "low": seconds / factor, "high": seconds * factor,
                "method": "measured" if measured else "rough", "runs": 0}  # fmt: skip
    rate = _median([run.tokens_per_s for run in past])
    per_answer = _median([run.seconds_per_answer for run in past])
    overhead = _median([run.overhead_seconds for run in past])
    seconds = tokens / rate + answers * per_answer + overhead
    slowest = max(rate / run.tokens_per_s for run in past)
    fastest = max(run.tokens_per_s / rate for run in past)
    return {
        "seconds": seconds,
        "low": seconds / max(CALIBRATED_FACTOR, fastest * 1.1),
        "high": seconds * max(CALIBRATED_FACTOR, slowest * 1.1),
        "method": "calibrated",
        "runs": len(past),
    }


MEMORY_STAGES = ("training", "evaluation", "index")  # Estimate.<stage>_memory_bytes
ROUGH_MEMORY_LOW, ROUGH_MEMORY_HIGH = 0.75, 2.0  # no run yet: the formula is off by this much (1.43x under measured)
CALIBRATED_MEMORY_FACTOR = 1.15  # calibrated: memory varies far less than time from run to run


def memory_ratios(measured: dict[str, int], estimated: dict[str, Any], stages=MEMORY_STAGES) -> dict[str, float]:
    """PastRun.memory_ratios of one run: each stage's measured peak (`measured`, as memory.StagePeaks.finish gives
    it) over its estimate (`estimated["<stage>_memory_bytes"]`, as Estimate.as_dict gives it), where both are known."""
    return {
        stage: measured[stage] / estimated[f"{stage}_memory_bytes"]
        for stage in stages
        if (measured.get(stage) or 0) > 0 and (estimated.get(f"{stage}_memory_bytes") or 0) > 0
    }


def memory_range(stages: dict[str, int], *, past: list[PastRun]) -> dict[str, Any]:
    """The job's peak memory as a range. Each stage's formula (`stages`: {stage: estimated bytes}) is scaled by the
    median of what the last runs on this base model and hardware measured against their own estimate of that stage
    (PastRun.memory_ratios), its range widened to cover each of those ratios and at least x/÷
    CALIBRATED_MEMORY_FACTOR; a stage no run measured yet is its formula from ROUGH_MEMORY_LOW to ROUGH_MEMORY_HIGH
    times. The job's peak is the largest stage's. {"bytes", "low", "high", "method": "calibrated" | "rough",
    "runs", "stage"}; method is "calibrated" only when every stage is."""
    ranges: dict[str, tuple[float, float, float]] = {}
    runs, rough = 0, False
    for stage, estimated in stages.items():
        ratios = [run.memory_ratios[stage] for run in past[:10] if run.memory_ratios.get(stage, 0) > 0]
        if not ratios:
            rough = True
            ranges[stage] = (estimated, estimated * ROUGH_MEMORY_LOW, estimated * ROUGH_MEMORY_HIGH)
            continue
        runs = max(runs, len(ratios))
        ratio = _median(ratios)
        expected = estimated * ratio
        below = max(CALIBRATED_MEMORY_FACTOR, max(ratio / r for r in ratios) * 1.05)
        above = max(CALIBRATED_MEMORY_FACTOR, max(r / ratio for r in ratios) * 1.05)
        ranges[stage] = (expected, expected / below, expected * above)
    if not ranges:
        return {"bytes": 0, "low": 0, "high": 0, "method": "rough", "runs": 0, "stage": ""}
    stage = max(ranges, key=lambda name: ranges[name][0])
    return {
        "bytes": int(ranges[stage][0]),
        "low": int(max(low for _, low, _ in ranges.values())),
        "high": int(max(high for _, _, high in ranges.values())),
        "method": "rough" if rough else "calibrated",
        "runs": runs,
        "stage": stage,
    }


ROUGH_OVERHEAD_SECONDS = 20.0  # loading the model, saving the adapter, building the attribution index (CPU)
ROUGH_ANSWER_TOKENS = 80  # tokens generated per held-out row: base and tuned answers of about 40 tokens


def rough_run_seconds(estimate: Estimate, *, answers: int, parameters: int) -> float:
    """Without a past run: training at the estimate's rate (measured on this machine, or the FLOP-rate guess), plus
    the comparison (2N FLOPs per generated token at the same FLOP rate) and a fixed overhead."""
    flops_per_s = estimate.tokens_per_s * 4.0 * max(1, parameters) / max(1, estimate.devices)
    generation = answers * ROUGH_ANSWER_TOKENS * 2.0 * max(1, parameters) / flops_per_s
    return estimate.seconds + generation + ROUGH_OVERHEAD_SECONDS
