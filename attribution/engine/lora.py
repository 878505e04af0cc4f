"""Per-row gradients of a peft LoRA model with respect to its LoRA matrices only.

`per_row_gradients` runs one batched forward+backward per batch of rows and recovers each row's own gradient
exactly from what every LoRA `nn.Linear` saw: its input `a` (n, T, in) and the gradient of the loss at its output
`d` (n, T, out). For a linear map the weight gradient of row n is `sum_t d[n, t] a[n, t]^T`, and because the batch
loss is the SUM of the rows' own mean answer-token losses (rows do not interact: causal attention, right padding,
no batch norm), `d[n]` is exactly the gradient of row n's loss. This costs about one training step per batch,
where a batch-size-1 loop costs one step per row (see bench/bench_attribution.py for both timings).
"""

from __future__ import annotations

import contextlib
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


def _batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, max_rows: int | None = None
) -> Iterator[list[int]]:
    """Indices grouped by similar length (less padding); deterministic. Without `max_tokens`, `batch_size` rows per
    batch; with it, as many rows as fit in `max_tokens` padded tokens (rows x width, at least one row): short rows
    then go through in fewer, fuller passes while no pass holds more tokens than `max_tokens`. `max_rows` caps the
    rows of any pass as well (what each row costs whatever its length: its per-row gradients or features)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if not max_tokens:
        step = min(batch_size, max_rows) if max_rows else batch_size
        for start in range(0, len(order), max(1, step)):
            yield order[start : start + max(1, step)]
        return
    batch: list[int] = []
    for i in order:  # ascending lengths: the row being added sets the batch's width
        if batch and ((len(batch) + 1) * lengths[i] > max_tokens or (max_rows and len(batch) >= max_rows)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _answer_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over rows of each row's mean answer-token loss, with logits computed at answer positions only.

    The output head (vocabulary-sized) runs only where a label is trained, as the training loop does; no attention
    mask, since padding is on the right and attention is causal (padding never reaches an earlier position). Falls
    back to the full logits when the head itself is adapted (its LoRA activations must keep their (n, T, .) shape)."""
    from peft.tuners.lora import LoraLayer

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    if isinstance(head, LoraLayer) or not isinstance(head, nn.Linear) or not hasattr(lm, "get_decoder"):
        return row_loss(model(input_ids=input_ids).logits, labels).sum()
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    token_loss = nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    counts = keep.sum(dim=1).clamp(min=1).to(token_loss.dtype)
    return (token_loss / counts.repeat_interleave(keep.sum(dim=1))).sum()


def _batched_passes(
    model: nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int,
    pad_id: int,
    max_tokens: int | None = None,
    max_rows: int | None = None,
) -> Iterator[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One forward+backward per batch of similar-length rows; yields (indices, [(a, d)] per LoRA matrix) with `a`
    (n, T, in) what the matrix saw and `d` (n, T, out) the gradient of the batch loss at its output."""
    modules = lora_modules(model)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(slot: int):
        def hook(_module, inputs, output):
            captured[slot] = (inputs[0].detach(), output)

        return hook

    handles = [linear.register_forward_hook(make_hook(slot)) for slot, (_, linear) in enumerate(modules)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.enable_grad():
            for indices in _batches([len(r[0]) for r in rows], batch_size, max_tokens, max_rows):
                input_ids, labels, _ = _pad([rows[i] for i in indices], pad_id)
                captured.clear()
                loss = _answer_loss(model, input_ids.to(device), labels.to(device))
                outputs = [captured[slot][1] for slot in range(len(modules))]
                output_grads = torch.autograd.grad(loss, outputs)
                yield indices, [(captured[slot][0], output_grads[slot]) for slot in range(len(modules))]
                # this pass's tensors go before the next pass starts: held across it, they doubled the peak
                del loss, outputs, output_grads
                captured.clear()
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()
        model.train(was_training)


def per_row_gradients(
    model: nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
    max_tokens: int | None = None,
    max_rows: int | None = None,
    consume: Callable[[list[int], list[torch.Tensor]], None],
) -> None:
    """For each batch, calls `consume(indices, grads)` with `grads[m]` of shape (n, out_m, in_m), the exact
    gradient of each row's mean answer-token loss w.r.t. LoRA matrix m (in `lora_modules` order).

    The model is put in eval mode (no dropout) for the duration and restored afterwards."""
    with contextlib.closing(
        _batched_passes(model, rows, batch_size=batch_size, pad_id=pad_id, max_tokens=max_tokens, max_rows=max_rows)
    ) as passes:
        for indices, pairs in passes:
            grads = [torch.einsum("nto,nti->noi", d.float(), a.float()) for a, d in pairs]
            del pairs  # not held while the next pass runs
            consume(indices, grads)
            del grads


def per_row_features(
    model: nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    projector,
    *,
    batch_size: int = 16,
    pad_id: int = 0,
    max_tokens: int | None = None,
    max_rows: int | None = None,
    consume: Callable[[list[int], torch.Tensor], None],
) -> None:
    """For each batch, calls `consume(indices, phi)` with phi (n, k) float32 on the CPU: each row's projected
    gradient, equal to `projector.project(per-row gradients)` (up to float rounding).

    With the "lowrank" projection the per-row gradient is never formed: for lora_A (G = d^T a, r x in) the features
    are G R^T = d^T (a R^T), for lora_B (G = d^T a, out x r) they are R G = (d R^T)^T a, so only (n, T, k_d)
    products are made (associativity; see projection.py for R). "dense" forms each matrix's per-row gradients and
    projects them at once, one matrix at a time: a pass never holds every matrix's gradients of every row."""
    gaussians: list[torch.Tensor] = []
    passes_ = _batched_passes(
        model, rows, batch_size=batch_size, pad_id=pad_id, max_tokens=max_tokens, max_rows=max_rows
    )
    if projector.kind != "lowrank":  # each matrix's per-row gradients are projected, then freed, one at a time
        with contextlib.closing(passes_) as passes:
            for indices, pairs in passes:
                parts = [
                    projector.project_one(m, torch.einsum("nto,nti->noi", d.float(), a.float()).cpu())
                    for m, (a, d) in enumerate(pairs)
                ]
                del pairs  # not held while the next pass runs
                consume(indices, torch.cat(parts, dim=1))
        return
    with contextlib.closing(passes_) as passes:
        for indices, pairs in passes:  # closing: the hooks are removed even when consume raises
            if not gaussians:
                gaussians = [g.to(pairs[0][0].device) for g in projector.matrices_]
            parts = []
            for block, gaussian, (a, d) in zip(projector.blocks, gaussians, pairs, strict=True):
                a, d = a.float(), d.float()
                if block.matrix.kind == "A":  # d (n,T,r), a R^T (n,T,k_d) -> (n, r, k_d)
                    phi = torch.einsum("ntr,ntk->nrk", d, a @ gaussian.T)
                else:  # d R^T (n,T,k_d), a (n,T,r) -> (n, k_d, r)
                    phi = torch.einsum("ntk,ntr->nkr", d @ gaussian.T, a)
                parts.append(phi.reshape(len(indices), -1))
            del pairs, a, d  # not held while the next pass runs
            consume(indices, torch.cat(parts, dim=1).cpu())


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
