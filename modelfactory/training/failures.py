"""Why a run cannot go on, said in plain words for the user: out of memory (and what to lower), divergence."""

from __future__ import annotations

from typing import Any

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory_message(hp: dict[str, Any], *, rows: int, width: int, device: torch.device) -> str:
    where = "GPU" if device.type == "cuda" else "computer"
    lower_batch = max(1, int(hp["batch_size"]) // 2)
    parts = [
        f"The {where} ran out of memory on a batch of {rows} rows of up to {width} tokens.",
        f"Lower the batch size (now {hp['batch_size']}; try {lower_batch}, and raise gradient accumulation to "
        f"{int(hp['grad_accum']) * 2} to keep the same effective batch),",
        f"or the maximum length (now {hp['max_length']} tokens), or the adapter size (rank, now {hp['rank']}).",
    ]
    if device.type == "cuda" and hp.get("quantization") != "4bit":
        parts.append("On this GPU, the 4-bit (QLoRA) setting also saves a lot of memory.")
    return " ".join(parts)


def diverged_message(loss: float, step: int, hp: dict[str, Any]) -> str:
    return (
        f"The training loss became {loss} at step {step}, so training was stopped: the model diverged. Lower the "
        f"learning rate (now {hp['learning_rate']:g}; try {float(hp['learning_rate']) / 10:g})."
    )
