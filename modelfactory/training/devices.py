"""What the training hardware can do, and the decisions that follow from it, as pure functions.

`detect_capabilities()` is the only function here that looks at the machine; every decision takes a
`Capabilities` value, so the rules are tested on fakes of any hardware (tests/training/test_devices.py).

- precision: bf16 autocast on CUDA GPUs that support it (Ampere and later), full fp32 otherwise (CPU, older GPUs:
  fp16 would need loss scaling, which this loop does not do).
- 4-bit QLoRA: only with a CUDA GPU and the bitsandbytes package. bitsandbytes is not in requirements.txt (it is a
  CUDA package) and is never imported here: `detect_capabilities` only asks whether it could be imported.
- device count: a job uses every CUDA GPU of the worker ("auto"), one process per GPU, or one named GPU
  ("cuda:N"); on a CPU, one process (several CPU processes are possible, for tests, but are not faster).

CI runs the CUDA, bf16 and bitsandbytes branches against fake capabilities only; on a real GPU (one H100, 2026-11-23)
bench/gpu_check.py ran them: capabilities detected, bf16 chosen, a 4-bit (nf4) fine-tune, cuda vs CPU losses.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Capabilities:
    cuda: bool = False
    device_count: int = 0  # CUDA devices; 0 without CUDA
    bf16: bool = False  # every CUDA device supports bf16
    bitsandbytes: bool = False  # the bitsandbytes package can be imported
    device_names: tuple[str, ...] = ()


CPU_ONLY = Capabilities()


@dataclass(frozen=True)
class HardwarePlan:
    device_type: str  # "cpu" | "cuda"
    device_index: int | None  # a named GPU ("cuda:1"), else None
    world_size: int  # training processes, one per device
    precision: str  # "bf16" | "fp32"
    quantization: str  # "none" | "4bit"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class HardwareError(ValueError):
    """The settings ask for something this hardware cannot do; the message is for the user as it is."""


def detect_capabilities() -> Capabilities:
    """The machine this runs on (imports torch; does not import bitsandbytes)."""
    import torch

    cuda = bool(torch.cuda.is_available())
    count = int(torch.cuda.device_count()) if cuda else 0
    return Capabilities(
        cuda=cuda and count > 0,
        device_count=count,
        bf16=bool(cuda and count and torch.cuda.is_bf16_supported()),
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
        device_names=tuple(torch.cuda.get_device_name(i) for i in range(count)) if cuda else (),
    )


def capabilities_report() -> dict:
    """detect_capabilities() as JSON, for a training worker's heartbeat row."""
    report = asdict(detect_capabilities())
    report["device_names"] = list(report["device_names"])
    return report


def capabilities_from_report(report: dict) -> Capabilities:
    """The inverse of capabilities_report (unknown keys ignored, so that older or newer workers still read)."""
    fields = {k: v for k, v in report.items() if k in Capabilities.__dataclass_fields__}
    if "device_names" in fields:
        fields["device_names"] = tuple(fields["device_names"])
    return Capabilities(**fields)


def weakest(caps: list[Capabilities]) -> Capabilities:
    """Of several training workers, the one a job can always run on: a job goes to whichever worker is free, so the
    wizard offers only what every one of them can do (fewest devices, no 4-bit unless all have it)."""
    return min(caps, key=lambda c: (c.cuda, c.bitsandbytes, c.bf16, c.device_count))


def choose_precision(caps: Capabilities, device_type: str) -> str:
    return "bf16" if device_type == "cuda" and caps.cuda and caps.bf16 else "fp32"


def quantization_problem(caps: Capabilities, quantization: str) -> str | None:
    """None when the quantization setting can run on this hardware, else why not and what to choose instead."""
    if quantization != "4bit":
        return None
    if not caps.cuda:
        return (
            "4-bit training (QLoRA) needs a CUDA GPU and this worker has none: choose 'none' for the 4-bit "
            "setting, or run the job on a GPU worker."
        )
    if not caps.bitsandbytes:
        return (
            "4-bit training (QLoRA) needs the bitsandbytes package, which this worker does not have: choose "
            "'none' for the 4-bit setting, or install bitsandbytes on the GPU worker."
        )
    return None


def offered_quantizations(caps: Capabilities) -> tuple[str, ...]:
    """The 4-bit choices the wizard shows: 4-bit only where it can run."""
    return ("none", "4bit") if quantization_problem(caps, "4bit") is None else ("none",)


def plan_hardware(
    caps: Capabilities, *, preference: str = "auto", quantization: str = "none", processes: int = 0
) -> HardwarePlan:
    """Where and how a job trains. `preference`: "auto" | "cpu" | "cuda" | "cuda:N" (MF_TRAINING_DEVICE);
    `processes`: 0 = one per CUDA GPU ("auto"/"cuda") or 1 (CPU, "cuda:N"); a number asks for exactly that many
    (on a CPU: several CPU processes, used by tests). Raises HardwareError."""
    if preference not in ("auto", "cpu", "cuda") and not preference.startswith("cuda:"):
        raise HardwareError(f"Unknown training device {preference!r}: use auto, cpu, cuda or cuda:N.")
    wants_cuda = preference.startswith("cuda") or (preference == "auto" and caps.cuda)
    if wants_cuda and not caps.cuda:
        raise HardwareError("A CUDA GPU was requested but none is available on this worker.")
    index = None
    if preference.startswith("cuda:"):
        try:
            index = int(preference.split(":", 1)[1])
        except ValueError:
            raise HardwareError(f"Unknown training device {preference!r}: use auto, cpu, cuda or cuda:N.") from None
        if not 0 <= index < caps.device_count:
            raise HardwareError(f"This worker has no GPU number {index} (it has {caps.device_count}).")
    device_type = "cuda" if wants_cuda else "cpu"
    available = caps.device_count if device_type == "cuda" and index is None else 1
    if processes < 0:
        raise HardwareError("The number of training processes cannot be negative.")
    if processes == 0:
        world = available
    elif device_type == "cuda" and processes > available:
        raise HardwareError(f"{processes} training processes need {processes} GPUs; this worker has {available}.")
    else:
        world = processes
    problem = quantization_problem(caps if device_type == "cuda" else CPU_ONLY, quantization)
    if problem:
        raise HardwareError(problem)
    return HardwarePlan(
        device_type=device_type,
        device_index=index,
        world_size=max(1, world),
        precision=choose_precision(caps, device_type),
        quantization=quantization,
    )


def describe_hardware(plan: HardwarePlan, caps: Capabilities) -> str:
    """Plain words for the review step, e.g. "2 GPUs (NVIDIA H100, bf16)" or "this server's CPU"."""
    if plan.device_type != "cuda":
        return "this server's CPU" if plan.world_size == 1 else f"{plan.world_size} processes on this server's CPU"
    names = sorted(set(caps.device_names))
    kind = f"{', '.join(names)}, " if names else ""
    count = "1 GPU" if plan.world_size == 1 else f"{plan.world_size} GPUs"
    return f"{count} ({kind}{plan.precision}{', 4-bit base model' if plan.quantization == '4bit' else ''})"
