"""An LRU of LoRA adapters loaded into the one warm peft model, under generated adapter names.

Cold load reads adapter_config.json (a few hundred bytes) and the safetensors weights straight onto the device in
the model's dtype, injects empty LoRA layers on the meta device (`low_cpu_mem_usage=True`, so no random init) and
assigns the weights: the base model is wrapped in a PeftModel only once, on the first load."""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .types import AdapterLoadError
from .warm import WarmModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def adapter_key(folder: str | Path) -> str:
    return str(Path(folder).resolve())


def check_adapter_folder(folder: str | Path) -> Path:
    """Cheap checks before a request is queued: the folder and both files exist."""
    path = Path(folder)
    if not path.is_dir():
        raise AdapterLoadError(f"Adapter folder not found: {path}", code="adapter_not_found")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise AdapterLoadError(f"{path} has no {name}: it is not a saved peft adapter.", code="adapter_invalid")
    return path


@dataclass
class _Entry:
    key: str
    name: str
    nbytes: int
    pins: int = 0


class AdapterCache:
    """LRU of adapters keyed by their folder. Capacity is `max_adapters` and/or `max_bytes` (the adapters' weights in
    memory); the least recently used unpinned adapter is deleted from the model (`delete_adapter`) when a load would
    exceed either. Adapters in use by running requests are pinned (`acquire`/`release`) and never evicted; if every
    adapter is pinned the cache grows past capacity for a while and shrinks again on release (logged).

    Thread-safe; `version` changes on every load and eviction so forward code can refresh what it cached."""

    def __init__(self, warm: WarmModel, *, max_adapters: int | None = 8, max_bytes: int | None = None):
        if max_adapters is not None and max_adapters < 1:
            raise ValueError(f"max_adapters must be at least 1 (got {max_adapters}).")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive (got {max_bytes}).")
        self.warm = warm
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._by_name: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self.version = 0
        # What the LoRA layers are switched to, shared by every runner on this model; unknown after a load/eviction
        # (new layers start enabled, and layers keep their own active adapter).
        self.layer_state: dict = {"enabled": None, "active": None}
        self.loads = 0
        self.hits = 0
        self.evictions = 0
        self.load_seconds: list[float] = []

    # --- public -------------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Cached adapter folders (resolved), least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, folder: object) -> bool:
        return isinstance(folder, (str, Path)) and adapter_key(folder) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def name_of(self, folder: str | Path) -> str | None:
        entry = self._entries.get(adapter_key(folder))
        return entry.name if entry else None

    def ensure(self, folder: str | Path) -> str:
        """Loads the adapter if needed, marks it most recently used; returns its adapter name in the peft model."""
        name = self.acquire(folder)
        self.release(name)
        return name

    def acquire(self, folder: str | Path) -> str:
        """Like `ensure`, and pins the adapter until `release(name)`."""
        key = adapter_key(folder)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._load(key)
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            entry.pins += 1
            return entry.name

    def release(self, name: str) -> None:
        with self._lock:
            entry = self._by_name.get(name)
            if entry is None or entry.pins == 0:
                raise ValueError(f"Adapter {name} is not pinned.")
            entry.pins -= 1
            if entry.pins == 0:
                self._evict_to_fit(0)

    # --- internals ----------------------------------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1
        self.layer_state.update(enabled=None, active=None)

    def _over(self, extra_count: int, extra_bytes: int) -> bool:
        count = len(self._entries) + extra_count
        if self.max_adapters is not None and count > self.max_adapters:
            return True
        return self.max_bytes is not None and self.nbytes + extra_bytes > self.max_bytes

    def _evict_to_fit(self, extra_bytes: int, extra_count: int = 0) -> None:
        while self._over(extra_count, extra_bytes):
            victim = next((entry for entry in self._entries.values() if entry.pins == 0), None)
            if victim is None:
                logger.warning(
                    "adapter cache over capacity (%d adapters, %d bytes): every adapter is in use",
                    len(self._entries) + extra_count,
                    self.nbytes + extra_bytes,
                )
                return
            self._evict(victim)

    def _evict(self, entry: _Entry) -> None:
        started = time.perf_counter()
        with warnings.catch_warnings():  # peft warns when the deleted adapter was its "active" one; we pick per row
            warnings.simplefilter("ignore", UserWarning)
            self.warm.peft_model.delete_adapter(entry.name)
        del self._entries[entry.key]
        del self._by_name[entry.name]
        self.evictions += 1
        self._changed()
        logger.info(
            "adapter evicted: %s (%s, %d bytes) in %.1f ms",
            entry.key,
            entry.name,
            entry.nbytes,
            (time.perf_counter() - started) * 1000,
        )

    def _load(self, key: str) -> _Entry:
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        started = time.perf_counter()
        folder = check_adapter_folder(key)
        try:
            raw = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AdapterLoadError(f"{folder / CONFIG_FILE} cannot be read: {exc}", code="adapter_invalid") from None
        if raw.get("peft_type") != "LORA":
            raise AdapterLoadError(
                f"{folder} is a {raw.get('peft_type')} adapter; only LoRA adapters are served.", code="adapter_invalid"
            )
        if raw.get("use_dora") or raw.get("alora_invocation_tokens"):
            raise AdapterLoadError(
                f"{folder} is a DoRA/aLoRA adapter; only plain LoRA is served.", code="adapter_invalid"
            )
        try:
            config = LoraConfig.from_peft_type(**raw)
        except (TypeError, ValueError) as exc:
            raise AdapterLoadError(
                f"{folder / CONFIG_FILE} is not a valid LoRA config: {exc}", code="adapter_invalid"
            ) from None
        config.inference_mode = True
        try:
            state = load_file(str(folder / WEIGHTS_FILE), device=str(self.warm.device))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise AdapterLoadError(f"{folder / WEIGHTS_FILE} cannot be read: {exc}", code="adapter_invalid") from None
        state = {k: v.to(self.warm.dtype) if v.is_floating_point() else v for k, v in state.items()}
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        self._evict_to_fit(nbytes, extra_count=1)

        self._counter += 1
        name = f"adapter{self._counter}"
        peft_model = self.warm.peft_model
        try:
            if peft_model is None:
                peft_model = PeftModel(
                    self.warm.model, config, adapter_name=name, autocast_adapter_dtype=False, low_cpu_mem_usage=True
                )
                peft_model.eval()
                self.warm.peft_model = peft_model
            else:
                peft_model.add_adapter(name, config, low_cpu_mem_usage=True, autocast_adapter_dtype=False)
        except Exception as exc:
            raise AdapterLoadError(f"{folder} does not fit this base model: {exc}", code="adapter_mismatch") from None
        try:
            result = set_peft_model_state_dict(peft_model, state, adapter_name=name, low_cpu_mem_usage=True)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
            if missing:
                raise AdapterLoadError(
                    f"{folder} lacks weights for {len(missing)} LoRA tensors (first: {missing[0]}).",
                    code="adapter_mismatch",
                )
            _check_loaded(peft_model, name, folder)
        except Exception as exc:
            peft_model.delete_adapter(name)
            self._changed()
            if isinstance(exc, AdapterLoadError):
                raise
            raise AdapterLoadError(f"{folder} does not fit this base model: {exc}", code="adapter_mismatch") from None

        entry = _Entry(key=key, name=name, nbytes=nbytes)
        self._entries[key] = entry
        self._by_name[name] = entry
        self.loads += 1
        self._changed()
        seconds = time.perf_counter() - started
        self.load_seconds.append(seconds)
        logger.info("adapter loaded: %s as %s (%d bytes) in %.1f ms", key, name, nbytes, seconds * 1000)
        return entry


def _check_loaded(peft_model, name: str, folder: Path) -> None:
    """Every LoRA layer of the new adapter is a plain Linear with real (not meta) weights."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer

    found = 0
    for module in peft_model.base_model.model.modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            if not isinstance(module, LoraLinear):
                raise AdapterLoadError(
                    f"{folder} adapts a {type(module.get_base_layer()).__name__} layer; only Linear layers are served.",
                    code="adapter_invalid",
                )
            for weight in (module.lora_A[name].weight, module.lora_B[name].weight):
                if weight.device.type == "meta":
                    raise AdapterLoadError(f"{folder} is missing LoRA weights.", code="adapter_mismatch")
            found += 1
    if not found:
        raise AdapterLoadError(f"{folder} adapts no layer of this base model.", code="adapter_mismatch")
