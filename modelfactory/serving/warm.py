"""The warm base model: loaded once per process and kept in eval mode, gradients off."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from modelfactory.training.model_files import load_causal_lm

logger = logging.getLogger(__name__)

_instances: dict[tuple[str, str, str], WarmModel] = {}
_instances_lock = threading.Lock()


def default_dtype(device: str) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow there), bfloat16 on a GPU that supports it, else float16."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class WarmModel:
    """A base causal LM and its tokenizer, ready for inference. Use `WarmModel.get(folder)` to share one instance
    per (folder, device, dtype) in the process; the constructor always loads."""

    def __init__(self, folder: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None):
        started = time.perf_counter()
        self.folder = Path(folder).resolve()
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(device)
        model, tokenizer = load_causal_lm(self.folder, dtype=self.dtype)
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        self.model = model  # the transformers model; adapters are injected into it in place by AdapterCache
        self.tokenizer = tokenizer
        self.peft_model = None  # set by AdapterCache on the first adapter load
        self.tokenizer_lock = threading.Lock()  # fast tokenizers reject concurrent use with changing settings
        config = model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        )
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        logger.info(
            "warm model loaded from %s on %s (%s) in %.0f ms",
            self.folder,
            self.device,
            self.dtype,
            (time.perf_counter() - started) * 1000,
        )

    @classmethod
    def get(cls, folder: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None) -> WarmModel:
        dtype = dtype or default_dtype(device)
        key = (str(Path(folder).resolve()), device, str(dtype))
        with _instances_lock:
            if key not in _instances:
                _instances[key] = cls(folder, device=device, dtype=dtype)
            return _instances[key]


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and item not in ids:
                ids.append(int(item))
    if not ids:
        raise ValueError("The model has no end-of-sequence token: generation could never stop on its own.")
    return tuple(ids)
