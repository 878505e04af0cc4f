"""Per-row gradients of a peft LoRA model with respect to its LoRA matrices only.

`per_row_gradients` runs one batched forward+backward per batch of rows and recovers each row's own gradient
exactly from what every LoRA `nn.Linear` saw: its input `a` (n, T, in) and the gradient of the loss at its output
`d` (n, T, out). For a linear map the weight gradient of row n is `sum_t d[n, t] a[n, t]^T`, and because the batch
loss is the SUM of the rows' own mean answer-token losses (rows do not interact: causal attention, right padding,
no batch norm), `d[n]` is exactly the gradient of row n's loss. This costs about one training step per batch,
where a batch-size-1 loop costs one step per row (see bench/bench_attribution.py for both timings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

IGNORE_INDEX = -100


class EngineError(ValueError):
    """Input the attribution engine cannot use; the message says why in plain words."""


@dataclass(frozen=True)
class LoraMatrix:
    """One adapted weight: `lora_A` (rank x in) or `lora_B` (out x rank) of one layer."""

    name: str  # e.g. "model.layers.0.self_attn.q_proj.lora_A"
    kind: str  # "A" or "B"
    shape: tuple[int, int]  # (out, in) of the nn.Linear weight
    rank: int

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


def lora_modules(model: nn.Module) -> list[tuple[LoraMatrix, nn.Linear]]:
    """The active adapter's LoRA matrices in module order (deterministic for a given architecture)."""
    from peft.tuners.lora import LoraLayer

    found: list[tuple[LoraMatrix, nn.Linear]] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if any(a in getattr(module, "lora_embedding_A", {}) for a in module.active_adapters):
            raise EngineError(f"LoRA on embeddings ({module_name}) is not supported by the attribution engine.")
        for adapter in adapters:
            if adapter in getattr(module, "lora_variant", {}):
                raise EngineError(f"{module_name} uses a LoRA variant (DoRA or similar); only plain LoRA is supported.")
            short = module_name.removeprefix("base_model.model.")
            for kind, linear in (("A", module.lora_A[adapter]), ("B", module.lora_B[adapter])):
                if not isinstance(linear, nn.Linear) or linear.bias is not None:
                    raise EngineError(f"{module_name}.lora_{kind} is not a bias-free linear map.")
                rank = linear.out_features if kind == "A" else linear.in_features
                matrix = LoraMatrix(f"{short}.lora_{kind}", kind, tuple(linear.weight.shape), rank)
                found.append((matrix, linear))
    if not found:
        raise EngineError("The model has no active LoRA adapter: attribution needs a peft LoRA model.")
    return found


def row_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean next-token cross-entropy over the labelled (answer) tokens: shape (n,)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    token_loss = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(shift_labels.shape)
    counts = mask.sum(dim=1)
    return (token_loss * mask).sum(dim=1) / counts.clamp(min=1)


def check_row(row_id, input_ids: Sequence[int], labels: Sequence[int]) -> None:
    if len(input_ids) != len(labels):
        raise EngineError(f"Row {row_id}: input_ids and labels differ in length ({len(input_ids)} != {len(labels)}).")
    if len(input_ids) < 2 or all(label == IGNORE_INDEX for label in labels[1:]):
        raise EngineError(f"Row {row_id} has no answer tokens to attribute (every label after the first is -100).")


def _pad(batch: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for n, (ids, labs) in enumerate(batch):
        input_ids[n, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        labels[n, : len(labs)] = torch.as_tensor(labs, dtype=torch.long)
        attention[n, : len(ids)] = 1
    return input_ids, labels, attention


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by similar length (less padding); deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def per_row_gradients(
    model: nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
    consume: Callable[[list[int], list[torch.Tensor]], None],
) -> None:
    """For each batch, calls `consume(indices, grads)` with `grads[m]` of shape (n, out_m, in_m), the exact
    gradient of each row's mean answer-token loss w.r.t. LoRA matrix m (in `lora_modules` order).

    The model is put in eval mode (no dropout) for the duration and restored afterwards."""
    modules = lora_modules(model)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(slot: int):
        def hook(_module, inputs, output):
            captured[slot] = (inputs[0].detach(), output)

        return hook

    handles = [linear.register_forward_hook(make_hook(slot)) for slot, (_, linear) in enumerate(modules)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for indices in _batches([len(r[0]) for r in rows], batch_size):
                input_ids, labels, attention = _pad([rows[i] for i in indices], pad_id)
                captured.clear()
                logits = model(input_ids=input_ids, attention_mask=attention).logits
                loss = row_loss(logits, labels).sum()
                outputs = [captured[slot][1] for slot in range(len(modules))]
                output_grads = torch.autograd.grad(loss, outputs)
                grads = []
                for slot in range(len(modules)):
                    activation = captured[slot][0].float()
                    grads.append(torch.einsum("nto,nti->noi", output_grads[slot].float(), activation))
                consume(indices, grads)
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()
        model.train(was_training)


def reference_row_gradient(model: nn.Module, input_ids: Sequence[int], labels: Sequence[int]) -> list[torch.Tensor]:
    """One row's gradient by plain autograd on the LoRA weights (batch size 1): the yardstick for the batched path."""
    modules = lora_modules(model)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            ids = torch.as_tensor([list(input_ids)], dtype=torch.long)
            labs = torch.as_tensor([list(labels)], dtype=torch.long)
            loss = row_loss(model(input_ids=ids).logits, labs).sum()
            return [g.float() for g in torch.autograd.grad(loss, [linear.weight for _, linear in modules])]
    finally:
        model.train(was_training)
