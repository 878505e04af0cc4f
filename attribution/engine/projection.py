"""Fixed-seed random projections, one per LoRA matrix, regenerated from a logged seed (an auditor can redo them).

Two kinds, both unbiased for inner products (E[P^T P] = I) and neither ever forming a k x p matrix over all p
LoRA parameters at once:

- "dense": P_m ~ N(0, 1/k_m), shape (k_m, p_m) per matrix m (p_m = out_m * in_m), as in the design note.
- "lowrank": exploits the LoRA shape. A gradient of lora_A is (r x in), of lora_B is (out x r) with r small, so
  only the wide side is projected: phi = G R_m^T for A, R_m G for B, with R_m ~ N(0, 1/k_d) of shape (k_d, wide).
  That is P_m = I_r (x) R_m, r times cheaper to apply and to hold than "dense" for the same k_m = r * k_d.

The random numbers come from NumPy's PCG64 seeded with (seed, matrix position), so they do not depend on the torch
version or on how many matrices were generated before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attribution.engine.lora import EngineError, LoraMatrix

KINDS = ("dense", "lowrank")


@dataclass(frozen=True)
class Block:
    """Where one LoRA matrix's projected gradient lives in the k-dimensional feature vector."""

    matrix: LoraMatrix
    start: int
    width: int  # k_m

    @property
    def stop(self) -> int:
        return self.start + self.width


def allocate(matrices: Sequence[LoraMatrix], k: int, kind: str, min_per_block: int = 4) -> list[int]:
    """k_m per matrix, proportional to its size, at least `min_per_block` (and a multiple of the rank for
    "lowrank"), never more than the matrix has parameters. The total is close to, not exactly, k."""
    if kind not in KINDS:
        raise EngineError(f"Unknown projection kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if k < len(matrices):
        raise EngineError(f"k={k} is smaller than the number of LoRA matrices ({len(matrices)}).")
    total = sum(m.size for m in matrices)
    widths = []
    for matrix in matrices:
        share = max(min_per_block, round(k * matrix.size / total))
        if kind == "lowrank":
            wide = matrix.shape[1] if matrix.kind == "A" else matrix.shape[0]
            k_d = min(wide, max(1, round(share / matrix.rank)))
            widths.append(k_d * matrix.rank)
        else:
            widths.append(min(matrix.size, share))
    return widths


class Projector:
    """Projects per-matrix gradients to features. Holds one small Gaussian per matrix (see `elements`)."""

    def __init__(self, matrices: Sequence[LoraMatrix], widths: Sequence[int], seed: int, kind: str):
        if kind not in KINDS:
            raise EngineError(f"Unknown projection kind {kind!r}; choose one of {', '.join(KINDS)}.")
        if len(widths) != len(matrices):
            raise EngineError("One projection width per LoRA matrix is needed.")
        self.kind = kind
        self.seed = int(seed)
        self.blocks: list[Block] = []
        self.matrices_: list[torch.Tensor] = []
        start = 0
        for position, (matrix, width) in enumerate(zip(matrices, widths, strict=True)):
            self.blocks.append(Block(matrix, start, int(width)))
            start += int(width)
            self.matrices_.append(self._gaussian(position, matrix, int(width)))
        self.k = start

    def _gaussian(self, position: int, matrix: LoraMatrix, width: int) -> torch.Tensor:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, position])))
        if self.kind == "dense":
            rows, cols = width, matrix.size
        else:
            rows = width // matrix.rank
            cols = matrix.shape[1] if matrix.kind == "A" else matrix.shape[0]
        values = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(rows))
        return torch.from_numpy(values)

    @property
    def elements(self) -> int:
        """Random numbers held in memory: sum over matrices, never k x (all LoRA parameters)."""
        return sum(p.numel() for p in self.matrices_)

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """grads[m]: (n, out_m, in_m) -> features (n, k) float32."""
        if len(grads) != len(self.blocks):
            raise EngineError("One gradient per LoRA matrix is needed.")
        n = grads[0].shape[0]
        out = torch.empty((n, self.k), dtype=torch.float32)
        for position, (block, grad) in enumerate(zip(self.blocks, grads, strict=True)):
            out[:, block.start : block.stop] = self.project_one(position, grad)
        return out

    def project_one(self, position: int, grad: torch.Tensor) -> torch.Tensor:
        """The features (n, k_m) of matrix `position` from its per-row gradients (n, out_m, in_m)."""
        block, gaussian = self.blocks[position], self.matrices_[position]
        n = grad.shape[0]
        grad = grad.float()
        if self.kind == "dense":
            return grad.reshape(n, -1) @ gaussian.T
        if block.matrix.kind == "A":  # (n, r, in) @ (in, k_d) -> (n, r, k_d)
            return (grad @ gaussian.T).reshape(n, -1)
        return torch.matmul(gaussian, grad).reshape(n, -1)  # (k_d, out) @ (n, out, r) -> (n, k_d, r)
