"""An LRU of LoRA adapters loaded into the one warm peft model, under generated adapter names.

Cold load reads adapter_config.json (a few hundred bytes) and the safetensors weights straight onto the device in
the model's dtype, injects empty LoRA layers on the meta device (`low_cpu_mem_usage=True`, so no random init) and
assigns the weights: the base model is wrapped in a PeftModel only once, on the first load."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

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
        self.load_seconds: list[float] = []  # each load, including any eviction it caused
        self.evict_seconds: list[float] = []
        self._lora_index: dict | None = None

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

    def clear(self) -> None:
        """Evicts every adapter that is not in use."""
        with self._lock:
            for entry in [entry for entry in self._entries.values() if entry.pins == 0]:
                self._evict(entry)

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
        self.evict_seconds.append(time.perf_counter() - started)
        logger.info(
            "adapter evicted: %s (%s, %d bytes) in %.1f ms",
            entry.key,
            entry.name,
            entry.nbytes,
            (time.perf_counter() - started) * 1000,
        )

    def _load(self, key: str) -> _Entry:
        from peft import LoraConfig
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
        fast = peft_model is not None and self._fast_path_fits(config, state)
        try:
            if fast:
                self._inject_fast(peft_model, name, config, state, folder)
            else:
                self._inject_with_peft(name, config, state, folder)
        except Exception as exc:
            if self.warm.peft_model is not None and name in self.warm.peft_model.peft_config:
                self.warm.peft_model.delete_adapter(name)
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
        logger.info(
            "adapter loaded: %s as %s (%d bytes, %s) in %.1f ms",
            key,
            name,
            nbytes,
            "direct" if fast else "peft inject",
            seconds * 1000,
        )
        return entry

    def _inject_with_peft(self, name: str, config, state: dict, folder: Path) -> None:
        """peft's own path: matches target modules, wraps new layers (the first load wraps the model itself)."""
        from peft import PeftModel, set_peft_model_state_dict

        peft_model = self.warm.peft_model
        if peft_model is None:
            peft_model = PeftModel(
                self.warm.model, config, adapter_name=name, autocast_adapter_dtype=False, low_cpu_mem_usage=True
            )
            peft_model.eval()
            self.warm.peft_model = peft_model
        else:
            peft_model.add_adapter(name, config, low_cpu_mem_usage=True, autocast_adapter_dtype=False)
        result = set_peft_model_state_dict(peft_model, state, adapter_name=name, low_cpu_mem_usage=True)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if missing:
            raise AdapterLoadError(
                f"{folder} lacks weights for {len(missing)} LoRA tensors (first: {missing[0]}).",
                code="adapter_mismatch",
            )
        _check_loaded(peft_model, name, folder)
        self._lora_index = None

    def _lora_layers(self) -> dict:
        """LoRA layers of the peft model by the module path used in saved adapter keys."""
        if self._lora_index is None:
            from peft.tuners.lora.layer import Linear as LoraLinear

            self._lora_index = {
                path: module for path, module in self.warm.peft_model.named_modules() if isinstance(module, LoraLinear)
            }
        return self._lora_index

    def _fast_path_fits(self, config, state: dict) -> bool:
        """The adapter only touches layers that already hold LoRA adapters, with one rank and alpha for all."""
        if config.rank_pattern or config.alpha_pattern or config.lora_bias or config.use_dora:
            return False
        layers = self._lora_layers()
        for key in state:
            path, _, tail = key.rpartition(".lora_")
            if tail not in ("A.weight", "B.weight") or path not in layers:
                return False
        return True

    def _inject_fast(self, peft_model, name: str, config, state: dict, folder: Path) -> None:
        """Adds the adapter to the existing LoRA layers directly, with the loaded tensors as the weights of its A/B
        Linear modules. Skips peft's whole-model target matching, random init and state-dict remapping, which
        dominate a cold load (about 0.4 s against a few ms for rank 8 on every linear layer of SmolLM2-135M); the
        result is checked against peft's own loader in the tests."""
        layers = self._lora_layers()
        config.init_lora_weights = False
        peft_model.peft_config[name] = config
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            path, _, tail = key.rpartition(".lora_")
            grouped.setdefault(path, {})[tail[0]] = tensor
        for path, weights in grouped.items():
            module = layers[path]
            a, b = weights.get("A"), weights.get("B")
            if a is None or b is None:
                raise AdapterLoadError(f"{folder} has only one of lora_A/lora_B for {path}.", code="adapter_mismatch")
            if a.shape != (config.r, module.in_features) or b.shape != (module.out_features, config.r):
                raise AdapterLoadError(
                    f"{folder}: {path} has LoRA shapes {tuple(a.shape)} and {tuple(b.shape)}; this base model with "
                    f"r={config.r} needs ({config.r}, {module.in_features}) and ({module.out_features}, {config.r}).",
                    code="adapter_mismatch",
                )
            # What LoraLayer.update_layer records for a plain LoRA adapter (no dropout at inference, no bias,
            # no variant), without constructing and randomly initialising two Linear modules per layer.
            module.r[name] = config.r
            module.lora_alpha[name] = config.lora_alpha
            module.scaling[name] = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
            module.use_rslora[name] = config.use_rslora
            module.use_dora[name] = False
            module.lora_bias[name] = False
            module.lora_dropout[name] = torch.nn.Identity()
            module.lora_A[name] = _frozen_linear(a)
            module.lora_B[name] = _frozen_linear(b)


def _frozen_linear(weight: torch.Tensor) -> torch.nn.Linear:
    """A bias-free Linear around an existing weight, skipping nn.Linear's allocation and random init."""
    layer = torch.nn.Linear.__new__(torch.nn.Linear)
    torch.nn.Module.__init__(layer)
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.register_parameter("bias", None)
    return layer


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
