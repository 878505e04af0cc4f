import numpy as np
import pytest
import torch

from attribution.engine.lora import (
    EngineError,
    LoraMatrix,
    _batches,
    lora_modules,
    per_row_features,
    per_row_gradients,
    reference_row_gradient,
)
from attribution.engine.projection import Projector, allocate

MATRICES = [
    LoraMatrix("layers.0.q_proj.lora_A", "A", (8, 64), 8),
    LoraMatrix("layers.0.q_proj.lora_B", "B", (64, 8), 8),
    LoraMatrix("layers.0.down_proj.lora_A", "A", (8, 128), 8),
]


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_projection_is_regenerated_identically_from_the_seed(kind):
    widths = allocate(MATRICES, 256, kind)
    first, again = Projector(MATRICES, widths, 7, kind), Projector(MATRICES, widths, 7, kind)
    other = Projector(MATRICES, widths, 8, kind)
    for a, b, c in zip(first.matrices_, again.matrices_, other.matrices_, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_projection_holds_one_small_gaussian_per_matrix_never_k_by_p(kind):
    widths = allocate(MATRICES, 256, kind)
    projector = Projector(MATRICES, widths, 0, kind)
    total_params = sum(m.size for m in MATRICES)
    assert projector.k == sum(widths)
    for block, gaussian in zip(projector.blocks, projector.matrices_, strict=True):
        wide = block.matrix.shape[1] if block.matrix.kind == "A" else block.matrix.shape[0]
        expected = (block.width, block.matrix.size) if kind == "dense" else (block.width // 8, wide)
        assert tuple(gaussian.shape) == expected
    assert projector.elements == sum(g.numel() for g in projector.matrices_)
    assert projector.elements < projector.k * total_params
    if kind == "lowrank":
        assert projector.elements * 8 == sum(w * (m.size // 8) for w, m in zip(widths, MATRICES, strict=True))


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_projection_preserves_inner_products_on_average(kind):
    widths = allocate(MATRICES, 640, kind)
    torch.manual_seed(0)
    g1 = [torch.randn(1, *m.shape) for m in MATRICES]
    g2 = [a + 0.5 * torch.randn_like(a) for a in g1]
    exact = sum(float((a * b).sum()) for a, b in zip(g1, g2, strict=True))
    estimates = []
    for seed in range(20):
        projector = Projector(MATRICES, widths, seed, kind)
        estimates.append(float(projector.project(g1)[0] @ projector.project(g2)[0]))
    assert abs(np.mean(estimates) - exact) < 0.05 * abs(exact)


def test_allocation_rejects_a_k_below_one_per_matrix_and_unknown_kinds():
    with pytest.raises(EngineError, match="smaller than the number of LoRA matrices"):
        allocate(MATRICES, 2, "dense")
    with pytest.raises(EngineError, match="Unknown projection kind 'sketch'"):
        allocate(MATRICES, 256, "sketch")


def test_batched_per_row_gradients_equal_batch_size_one_autograd(planted):
    _, model, _, datanet = planted
    rows = [(ids, labels) for _, ids, labels in datanet.rows[:6]]
    got: dict[int, list[torch.Tensor]] = {}

    def consume(indices, grads):
        for n, i in enumerate(indices):
            got[i] = [g[n] for g in grads]

    per_row_gradients(model, rows, batch_size=4, pad_id=0, consume=consume)
    assert sorted(got) == list(range(6))
    for i, (ids, labels) in enumerate(rows):
        reference = reference_row_gradient(model, ids, labels)
        for batched, single in zip(got[i], reference, strict=True):
            torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)
    assert len(reference) == len(lora_modules(model)) == 28  # 2 layers x 7 linear layers x (A, B)


def test_a_model_without_lora_is_refused(base_dir):
    from transformers import LlamaForCausalLM

    with pytest.raises(EngineError, match="no active LoRA adapter"):
        lora_modules(LlamaForCausalLM.from_pretrained(base_dir))


@pytest.mark.parametrize("kind", ["lowrank", "dense"])
def test_batched_projected_features_equal_the_per_row_reference(planted, kind):
    """The build's path (one batched pass, logits at answer positions only, projection factored through the stored
    activations for "lowrank") gives each row the features of plain batch-size-1 autograd, projected."""
    _, model, _, datanet = planted
    rows = [(ids, labels) for _, ids, labels in datanet.rows[:10]]
    matrices = [m for m, _ in lora_modules(model)]
    projector = Projector(matrices, allocate(matrices, 1024, kind), 3, kind)
    got: dict[int, torch.Tensor] = {}

    def consume(indices, phi):
        assert phi.shape == (len(indices), projector.k) and phi.dtype == torch.float32
        got.update({i: phi[n] for n, i in enumerate(indices)})

    per_row_features(model, rows, projector, batch_size=4, pad_id=0, consume=consume)
    assert sorted(got) == list(range(10))
    for i, (ids, labels) in enumerate(rows):
        reference = projector.project([g.unsqueeze(0) for g in reference_row_gradient(model, ids, labels)])[0]
        torch.testing.assert_close(got[i], reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))
    assert not any(h for _, linear in lora_modules(model) for h in linear._forward_hooks.values())


@pytest.mark.parametrize("max_tokens", [None, 1, 40, 100, 10_000])
def test_batches_by_token_budget_cover_every_row_once_and_stay_under_it(max_tokens):
    lengths = [np.random.default_rng(3).integers(2, 30) for _ in range(57)]
    batches = list(_batches(lengths, 8, max_tokens))
    assert sorted(i for batch in batches for i in batch) == list(range(57))
    order = [i for batch in batches for i in batch]
    assert [lengths[i] for i in order] == sorted(lengths)  # by length: least padding
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        if max_tokens is None:
            assert len(batch) <= 8
        else:
            assert padded <= max_tokens or len(batch) == 1
    if max_tokens == 10_000:
        assert len(batches) == 1
