"""Per-process serving state of an inference worker: one warm base model, one adapter LRU and one batcher per base
model, created on first use and shared by every thread of the process (the worker runs with a thread pool, so
concurrent requests for different adapters meet in the same batcher and share forward passes)."""

from __future__ import annotations

import threading

from django.conf import settings

from modelfactory.serving import AdapterCache, Batcher, Engine, WarmModel

# The web process enforces the operators' cap (ServingPolicy); the engine only guards the context length.
ENGINE_MAX_NEW_TOKENS = 1 << 20

_lock = threading.Lock()
_batchers: dict[str, Batcher] = {}


def _device() -> str:
    if settings.MF_INFERENCE_DEVICE != "auto":
        return settings.MF_INFERENCE_DEVICE
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def batcher_for(base_path: str) -> Batcher:
    with _lock:
        batcher = _batchers.get(base_path)
        if batcher is None:
            warm = WarmModel.get(base_path, device=_device())
            adapters = AdapterCache(warm, max_adapters=settings.MF_ADAPTER_CACHE_SIZE)
            engine = Engine(warm, adapters, max_new_tokens_cap=ENGINE_MAX_NEW_TOKENS)
            batcher = Batcher(
                engine, window_ms=settings.MF_BATCH_WINDOW_MS, max_batch_size=settings.MF_INFERENCE_BATCH_SIZE
            )
            _batchers[base_path] = batcher
        return batcher


def delivered_prefix(batcher: Batcher, token_ids: tuple[int, ...] | list[int], text: str) -> int:
    """The fewest leading tokens whose decoded text covers `text` (what reached the client)."""
    if not text:
        return 0
    warm = batcher.engine.warm
    for count in range(1, len(token_ids) + 1):
        with warm.tokenizer_lock:
            decoded = warm.tokenizer.decode(
                list(token_ids[:count]), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        if len(decoded) >= len(text):
            return count
    return len(token_ids)
