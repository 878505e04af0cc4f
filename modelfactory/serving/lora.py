"""One forward pass over a batch whose rows use different LoRA adapters (or none).

Three ways, chosen per runner:
- "gathered" (default): the peft LoRA layers are switched off and a forward hook on each adds
  `(x @ A[row]) @ B[row] * scale[row]` with two batched matmuls, from per-batch stacks of the rows' A and B matrices
  (zeros for base rows and for adapters that do not touch the layer). Cost per layer does not grow with the number
  of distinct adapters in the batch. The stacks are built when the batch's adapter list changes, not every step.
- "peft": peft's own mixed-batch inference (`adapter_names=[...]`, "__base__" for base rows), which runs one small
  LoRA matmul per distinct adapter per layer.
- "switch": every row must use the same adapter; peft's `set_adapter` picks it (the one-at-a-time baseline).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .adapters import AdapterCache
from .types import BASE
from .warm import WarmModel

MODES = ("gathered", "peft", "switch")


class LoraRunner:
    def __init__(self, warm: WarmModel, adapters: AdapterCache | None, *, mode: str = "gathered"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r}).")
        self.warm = warm
        self.adapters = adapters
        self.mode = mode
        self._hooked: set[int] = set()
        self._layers: list = []
        self._seen_version = -1
        self._plans: OrderedDict[tuple[str, ...], dict] = OrderedDict()
        self._plan: dict | None = None
        self.plans_built = 0

    def forward(self, names: list[str], **model_kwargs):
        """Runs the model on a batch whose row i uses adapter `names[i]` (BASE for the base model)."""
        peft_model = self.warm.peft_model
        if peft_model is None or all(name == BASE for name in names):
            if peft_model is not None:
                self._refresh()
                self._set_layers(enabled=False)
            self._plan = None
            return self.warm.model(**model_kwargs)
        self._refresh()
        if self.mode == "peft":
            # PeftModel only installs its adapter_names hooks while its active adapter exists and is enabled.
            if self.adapters.layer_state["active"] is None:
                self._activate(next(name for name in names if name != BASE))
            self._set_layers(enabled=True)
            return peft_model(adapter_names=list(names), **model_kwargs)
        if self.mode == "switch":
            if len(set(names)) != 1:
                raise ValueError("mode 'switch' runs one adapter at a time; this batch mixes adapters.")
            self._activate(names[0])
            self._set_layers(enabled=True)
            return self.warm.model(**model_kwargs)
        self._set_layers(enabled=False)
        self._plan = self._plan_for(tuple(names))
        try:
            return self.warm.model(**model_kwargs)
        finally:
            self._plan = None

    def _refresh(self) -> None:
        """After adapter loads/evictions: hook new LoRA layers, forget cached stacks, re-apply the layer switch."""
        version = self.adapters.version if self.adapters else 0
        if version == self._seen_version:
            return
        from peft.tuners.lora.layer import LoraLayer

        self._layers = [m for m in self.warm.model.modules() if isinstance(m, LoraLayer)]
        for module in self._layers:
            if id(module) not in self._hooked:
                module.register_forward_hook(self._hook)
                self._hooked.add(id(module))
        self._plans.clear()
        self._seen_version = version

    def _activate(self, name: str) -> None:
        # Layers keep their own active adapter, and names can be reused after eviction: trust only what this runner
        # set since the last load/eviction.
        state = self.adapters.layer_state
        if state["active"] != name:
            self.warm.peft_model.set_adapter(name)
            state["active"] = name
            state["enabled"] = None

    def _set_layers(self, *, enabled: bool) -> None:
        state = self.adapters.layer_state
        if state["enabled"] is enabled:
            return
        for module in self._layers:
            module.enable_adapters(enabled)
        state["enabled"] = enabled

    def _plan_for(self, names: tuple[str, ...]) -> dict:
        plan = self._plans.get(names)
        if plan is not None:
            self._plans.move_to_end(names)
            return plan
        plan = {}
        unique = sorted(set(names) - {BASE})
        for module in self._layers:
            present = [name for name in unique if name in module.lora_A]
            if not present:
                continue
            rank = max(module.lora_A[name].weight.shape[0] for name in present)
            weight = module.lora_A[present[0]].weight
            in_features, out_features = module.in_features, module.out_features
            a_list = [torch.zeros(in_features, rank, dtype=weight.dtype, device=weight.device)]
            b_list = [torch.zeros(rank, out_features, dtype=weight.dtype, device=weight.device)]
            scales = [0.0]
            slot = {}
            for name in present:
                a = module.lora_A[name].weight.t()
                b = module.lora_B[name].weight.t()
                if a.shape[1] < rank:
                    a = torch.nn.functional.pad(a, (0, rank - a.shape[1]))
                    b = torch.nn.functional.pad(b, (0, 0, 0, rank - b.shape[0]))
                slot[name] = len(a_list)
                a_list.append(a)
                b_list.append(b)
                scales.append(float(module.scaling[name]))
            index = torch.tensor([slot.get(name, 0) for name in names], device=weight.device)
            a_stack = torch.stack(a_list).index_select(0, index)
            b_stack = torch.stack(b_list).index_select(0, index)
            scale = torch.tensor(scales, dtype=weight.dtype, device=weight.device).index_select(0, index)
            plan[id(module)] = (a_stack, b_stack, scale.view(-1, 1, 1))
        self._plans[names] = plan
        self.plans_built += 1
        while len(self._plans) > 4:  # the running batch, a joining prefill, and their recent neighbours
            self._plans.popitem(last=False)
        return plan

    def _hook(self, module, args, output):
        plan = self._plan
        if plan is None:
            return None
        entry = plan.get(id(module))
        if entry is None:
            return None
        a_stack, b_stack, scale = entry
        x = args[0]
        delta = torch.bmm(torch.bmm(x.to(a_stack.dtype), a_stack), b_stack) * scale
        return output + delta.to(output.dtype)
