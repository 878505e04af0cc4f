"""Checkpoints of a training run: the adapter, optimizer, scheduler, RNG and loop state, written atomically so a
run that dies mid-write still resumes from the previous one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint"


def save_checkpoint(folder: Path, *, model, optimizer, scheduler, state: dict[str, Any]) -> Path:
    """Writes `folder/checkpoint` atomically: adapter weights, optimizer, scheduler, RNG and loop state."""
    # peft and safetensors: loaded when a run writes its first checkpoint, not by every importer of the loop
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    target = folder / CHECKPOINT_NAME
    tmp = folder / (CHECKPOINT_NAME + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter_model.safetensors"))
    torch.save(
        {
            **state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / "state.pt",
    )
    old = folder / (CHECKPOINT_NAME + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(folder: Path, *, model, optimizer, scheduler) -> dict[str, Any] | None:
    """Restores a checkpoint written by `save_checkpoint` into the given objects; returns its loop state."""
    # peft and safetensors: as in save_checkpoint
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    target = Path(folder) / CHECKPOINT_NAME
    if not (target / "state.pt").exists():
        return None
    device = next(p.device for p in model.parameters())
    set_peft_model_state_dict(model, load_file(str(target / "adapter_model.safetensors"), device=str(device)))
    state = torch.load(target / "state.pt", weights_only=False)
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(state.pop("rng_torch"))
    rng_cuda = state.pop("rng_cuda")
    if rng_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng_cuda)
    return state
