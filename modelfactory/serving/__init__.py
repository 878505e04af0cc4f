"""Serving core: many LoRA adapters on one warm base model, batched together. Plain Python + torch, no Django.

Typical use in an inference worker process (one per base model)::

    from modelfactory.serving import AdapterCache, Batcher, Engine, GenerationRequest, WarmModel

    warm = WarmModel.get(base_folder, device="cpu")           # once per process (cached per folder/device/dtype)
    adapters = AdapterCache(warm, max_adapters=8, max_bytes=None)
    engine = Engine(warm, adapters, max_new_tokens_cap=1024)  # lora_mode="gathered" (default) | "peft" | "switch"
    batcher = Batcher(engine, window_ms=10, max_batch_size=16, continuous=True)

    result = batcher.generate(GenerationRequest(
        prompt=[{"role": "user", "content": "Hello"}],        # or raw text: prompt="Hello"
        adapter=version_folder,                                # peft adapter folder; None = the base model
        max_new_tokens=128, temperature=0.7, top_p=0.9, seed=None,
    ))
    result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason  # "stop" | "length" | "cancelled"

    ticket = batcher.submit(request, stream=True)            # validates at once: InvalidRequest / AdapterLoadError
    for delta in ticket.stream():                            # text deltas, never half a UTF-8 character
        send(delta)                                          # on disconnect: ticket.cancel() (or close the iterator)
    usage = ticket.result()                                  # completion_tokens = tokens delivered before a cancel

Public API
----------
- `WarmModel(folder, *, device="cpu", dtype=None)` / `WarmModel.get(...)`: base model + tokenizer via
  `modelfactory.training.model_files.load_causal_lm`, eval mode, no grad. float32 on CPU, bf16/fp16 on CUDA.
  Attributes: `model`, `tokenizer`, `context_length`, `eos_token_ids`, `device`, `dtype`, `peft_model`.
- `AdapterCache(warm, *, max_adapters=8, max_bytes=None)`: LRU of adapters keyed by folder (resolved path),
  `ensure(folder) -> adapter name`, `acquire(folder)` / `release(name)` (pinned adapters are never evicted),
  `clear()` (evict all unpinned), `keys()` (least recently used first), `nbytes`, counters `loads`, `hits`,
  `evictions`, `load_seconds`, `evict_seconds`.
  Loads and evictions (`delete_adapter`) are logged on logger `modelfactory.serving.adapters` with timings.
- `Engine(warm, adapters=None, *, max_new_tokens_cap=1024, lora_mode="gathered")`:
  `prepare(request) -> Prepared` (validation only), `generate(requests) -> list[GenerationResult]` (synchronous,
  one batch, one thread at a time), step-level `admit`, `step`, `abort`, counters `forward_passes`, `prefills`.
- `Batcher(engine, *, window_ms=10.0, max_batch_size=16, continuous=True, autostart=True)`: thread-safe;
  `submit(request, *, stream=False) -> Ticket`, `generate(request, *, timeout=None)`, `close()`, counters
  `batches` (groups admitted, one prefill each) and `joins` (groups that joined a running batch).
  `Ticket`: `result(timeout=None)`, `stream(timeout=None)`, `cancel()`, `done()`.
- `GenerationRequest(prompt, adapter=None, max_new_tokens=128, temperature=0.0, top_p=None, seed=None,
  on_delta=None)` with `cancel()`; `GenerationResult(text, token_ids, prompt_tokens, completion_tokens,
  finish_reason, adapter)` and `total_tokens`.
- Errors: `ServingError` (has `.code` and `.message`) > `InvalidRequest` (also a ValueError; codes `empty_prompt`,
  `prompt_too_long`, `invalid_temperature`, `invalid_max_new_tokens`, `invalid_top_p`, `invalid_messages`,
  `no_adapters`), `AdapterLoadError` (codes `adapter_not_found`, `adapter_invalid`, `adapter_mismatch`),
  `BatcherClosed`. Any other exception from a forward pass (e.g. out of memory) is delivered to every request of
  that batch; the Batcher keeps serving.

Mixed batches: by default ("gathered") each LoRA layer adds the rows' deltas with two batched matmuls over
per-batch stacks of A/B matrices, so one forward pass per decode step serves any mix of adapters and base rows.
"peft" uses peft's `adapter_names=` mixed-batch inference instead; "switch" is one adapter per batch via
`set_adapter` (the baseline). Greedy tokens of a row do not depend on what else is in its batch (tested).
"""

from .adapters import AdapterCache, check_adapter_folder
from .batcher import Batcher, BatcherClosed, Ticket
from .engine import Engine, IncrementalDecoder, Prepared
from .types import (
    BASE,
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    AdapterLoadError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    ServingError,
)
from .warm import WarmModel

__all__ = [
    "BASE",
    "FINISH_CANCELLED",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "AdapterCache",
    "AdapterLoadError",
    "Batcher",
    "BatcherClosed",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "IncrementalDecoder",
    "InvalidRequest",
    "Prepared",
    "ServingError",
    "Ticket",
    "WarmModel",
    "check_adapter_folder",
]
