"""Per-process cache of what attributing an answer needs: the base model with the job's adapter (peft), its
tokenizer, the gradient and span indexes and the row owners. Loading costs seconds; a query costs one forward and
backward pass, so a worker keeps the last few models warm (LRU, MF_ATTRIBUTION_CACHE_SIZE)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_FILE = "attribution.safetensors"
SPANS_FILE = "spans.npz"
OWNERS_FILE = "owners.json"


@dataclass
class LoadedIndex:
    model: Any  # peft LoRA model, eval mode, on CPU
    tokenizer: Any
    index: Any  # attribution.engine.AttributionIndex
    spans: Any  # attribution.engine.SpanIndex
    owners: dict  # row id -> RowOwner(contributor id, contribution id)


def load_peft_model(*, base_dir: str | Path, adapter_dir: str | Path):
    """The base model with the trained adapter, LoRA weights differentiable (the engine needs their gradients)."""
    import torch
    from peft import PeftModel

    from modelfactory.training.model_files import load_causal_lm

    base, tokenizer = load_causal_lm(Path(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    model.eval()
    return model, tokenizer


def read_owners(path: str | Path) -> dict:
    from attribution.engine import RowOwner

    raw = json.loads(Path(path).read_text())
    return {int(row_id): RowOwner(int(pair[0]), int(pair[1])) for row_id, pair in raw.items()}


def write_owners(path: Path, owners: dict) -> None:
    path.write_text(json.dumps({str(r): [o.contributor_id, o.contribution_id] for r, o in sorted(owners.items())}))


_cache: OrderedDict[tuple, LoadedIndex] = OrderedDict()
_lock = threading.Lock()


def loaded(*, key: tuple, base_dir: str, adapter_dir: str, folder: str, size: int) -> LoadedIndex:
    """The cached LoadedIndex for `key` (the index row's id and paths), loading it on first use."""
    from attribution.engine import AttributionIndex, SpanIndex

    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        model, tokenizer = load_peft_model(base_dir=base_dir, adapter_dir=adapter_dir)
        entry = LoadedIndex(
            model=model,
            tokenizer=tokenizer,
            index=AttributionIndex.load(Path(folder) / INDEX_FILE),
            spans=SpanIndex.load(Path(folder) / SPANS_FILE),
            owners=read_owners(Path(folder) / OWNERS_FILE),
        )
        _cache[key] = entry
        while len(_cache) > max(1, size):
            _cache.popitem(last=False)
        return entry


def clear() -> None:
    with _lock:
        _cache.clear()


def char_offsets(tokenizer, token_ids: list[int], text: str) -> list[int] | None:
    """offsets[i] = character position in `text` where answer token i starts (len(token_ids)+1 entries), when the
    tokens decode to `text` (special tokens skipped); None when they do not (then only token positions are kept)."""
    offsets = [0]
    for end in range(1, len(token_ids) + 1):
        offsets.append(len(tokenizer.decode(token_ids[:end], skip_special_tokens=True)))
    decoded = tokenizer.decode(token_ids, skip_special_tokens=True)
    if decoded == text:
        return offsets
    stripped = len(decoded) - len(decoded.lstrip())
    if decoded.strip() == text.strip() and stripped <= len(decoded):
        return [max(0, min(len(text), o - stripped)) for o in offsets]
    return None
