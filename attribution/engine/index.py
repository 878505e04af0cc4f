"""The gradient-feature index of one trained model: projected per-row LoRA gradients, per-matrix damped Fisher
inverses, the projection seed and a calibrated noise level, in one safetensors file.

Storage (format poa-index-4): each row's features as int8 with a float32 scale (symmetric per row: phi_i ~=
features_i * row_scale_i, row_scale_i = max|phi_i| / 127), plus each row's norm and Fisher norm computed at build
time, ~k + 20 bytes a row. `load` maps the (N, k) features from the file instead of reading them (np.memmap at the
tensor's offset): a worker holding many indexes holds their small parts only, and the kernel pages features in (and
out) as queries read them. Scoring runs over SCORE_CHUNK rows at a time (dequantise, multiply, next chunk): no
(N, k) float32 copy is ever made. Formats poa-index-2 and -3 (float16 features, no stored norms) are read and
scored as before; their norms are computed once, in chunks, on first use."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attribution.engine.calibration import fluent_queries, null_queries
from attribution.engine.lora import EngineError, LoraMatrix, check_row, lora_modules, per_row_features
from attribution.engine.projection import Projector, allocate
from attribution.engine.storage import (  # noqa: F401 (re-exported: the index's storage names)
    FEATURE_DTYPES,
    FP16_TARGET,
    INDEX_FORMAT,
    INT8_LEVELS,
    READ_FORMATS,
    RowFile,
    chunk_rows,
    dequantised_rows,
    load_index,
    quantise_rows,
    release_rows,
    row_norms,
    save_index,
)
from modelfactory.training.memory import ALLOCATOR_SLACK, activation_bytes_per_token, release_freed, rows_and_tokens

SCORE_METHODS = ("fisher", "dot", "cosine")
DEFAULT_METHOD = "fisher"  # measured best: LDS 0.825 vs dot 0.758 / cosine 0.778 (32 subsets), top-1 1.00 for all
DEFAULT_KAPPA = 0.1  # LDS 0.825; 0.01 gave 0.804, 0.3 0.824, 1.0 0.817 (bench/bench_attribution.py)
NULL_QUERIES = 32  # permutation-null queries scored at build time (see `null_queries`)
NULL_ALPHA = 0.05  # false-positive rate of the noise floor: P(an unrelated answer credits any row at all)
SCORE_CHUNK = 256  # rows dequantised at a time when scoring: 4 MiB of float32 at k=4096, stays in cache

Row = tuple[int, Sequence[int], Sequence[int]]  # (row_id, input_ids, labels with -100 on non-answer tokens)


@dataclass
class AttributionIndex:
    row_ids: np.ndarray  # (N,) int64
    # (N, k) phi_i / row_scale_i: int8 (format 4) or float16 (formats 2, 3; per-row scaling keeps tiny gradients off
    # fp16 zero). A loaded index's features are a read-only np.memmap of the file.
    features: np.ndarray
    row_scale: np.ndarray  # (N,) float32
    matrices: list[LoraMatrix]
    widths: list[int]  # k_m per LoRA matrix, in `matrices` order
    seed: int
    projection: str
    kappa: float
    fisher_inverse: list[np.ndarray]  # (F_m + lambda_m I)^-1, float32, one (k_m, k_m) per matrix
    damping: np.ndarray  # lambda_m, (M,) float64
    null_features: np.ndarray  # (NULL_QUERIES, k) float32: phi of the permutation-null queries
    null_floor: dict[str, float]  # score method -> noise floor on the relevance scale (see `relevance`)
    null_alpha: float = NULL_ALPHA
    # fluent calibration (calibration.py): the model's greedy answers to everyday prompts, (C, k) float32, and the
    # token ids they were computed from: (ids, labels) per query. C = 0: the floor rests on the permutation nulls.
    fluent_features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    fluent_queries: list[tuple[list[int], list[int]]] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # how the fluent queries were made (prompts digest, tokens)
    format: str = INDEX_FORMAT
    build_seconds: float = 0.0
    _projector: Projector | None = field(default=None, repr=False)
    _norms: np.ndarray | None = field(default=None, repr=False)  # (N,) float32 |phi_i| (stored in format 4)
    _h_norms: np.ndarray | None = field(default=None, repr=False)  # (N,) float32 |phi_i|_H (stored in format 4)

    # -- shape ---------------------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.features.shape[1])

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    @property
    def bounds(self) -> list[tuple[int, int]]:
        starts = np.concatenate([[0], np.cumsum(self.widths)]).tolist()
        return list(zip(starts[:-1], starts[1:], strict=True))

    def params(self) -> dict:
        """What a recomputation needs besides the model and the rows (an older format: what it recorded)."""
        params = {
            "format": self.format,
            "seed": self.seed,
            "projection": self.projection,
            "k": self.k,
            "widths": list(map(int, self.widths)),
            "kappa": self.kappa,
            "null_alpha": self.null_alpha,
            "null_queries": int(self.null_features.shape[0]),
            "null_floor": dict(self.null_floor),
            "matrices": [m.name for m in self.matrices],
        }
        if self.format != "poa-index-2":
            params["fluent_queries"] = len(self.fluent_queries)
            params["calibration"] = dict(self.calibration)
        return params

    # -- projection and query features ----------------------------------------------------------------------------
    def projector(self) -> Projector:
        if self._projector is None:
            self._projector = Projector(self.matrices, self.widths, self.seed, self.projection)
        return self._projector

    def query_features(self, model: nn.Module, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> np.ndarray:
        """phi_q: projected gradient of the mean loss of the answer given the prompt (answer tokens only)."""
        if len(prompt_ids) == 0 or len(answer_ids) == 0:
            raise EngineError("A query needs at least one prompt token and one answer token.")
        _check_same_model(model, self.matrices)
        ids = list(prompt_ids) + list(answer_ids)
        vocab = model.get_input_embeddings().num_embeddings
        if min(ids) < 0 or max(ids) >= vocab:
            raise EngineError(f"Query token ids must lie in [0, {vocab}) for this model.")
        labels = [-100] * len(prompt_ids) + list(answer_ids)
        return project_rows(model, [(ids, labels)], self.projector())[0]

    # -- scores -----------------------------------------------------------------------------------------------------
    def rows32(self, start: int, stop: int) -> np.ndarray:
        """phi of rows [start, stop) as float32 (dequantised): features * row_scale."""
        return dequantised_rows(self.features, self.row_scale, start, stop)

    def features32(self) -> np.ndarray:
        """Every row's phi as one (N, k) float32 array: 4 bytes a feature, made on each call and not kept. For tests
        and small indexes; scoring, norms and the Fisher blocks go over `rows32` chunks instead."""
        return self.rows32(0, self.size)

    def norms(self) -> np.ndarray:
        if self._norms is None:
            self._norms = row_norms(self.features, self.row_scale)
        return self._norms

    def h_norms(self) -> np.ndarray:
        """||phi_i||_H = sqrt(phi_i^T (F + lambda I)^-1 phi_i) per row (the "fisher" metric)."""
        if self._h_norms is None:
            squared = np.empty(self.size, dtype=np.float64)
            step = chunk_rows(self.k)
            for start in range(0, self.size, step):
                chunk = self.rows32(start, start + step)
                squared[start : start + step] = np.einsum("ij,ij->i", self.precondition(chunk), chunk)
            self._h_norms = np.sqrt(np.clip(squared, 0.0, None)).astype(np.float32)
        return self._h_norms

    def relevance(self, scores: np.ndarray, phi_q: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
        """Scale-free scores in [-1, 1]: the cosine between query and row in the metric of `method` ("fisher":
        (F + lambda I)^-1, "dot": the identity; "cosine" scores already are). The noise floor lives on this scale."""
        scores = np.asarray(scores, dtype=np.float32)
        phi_q = np.atleast_2d(np.asarray(phi_q, dtype=np.float32))
        if method == "cosine":
            return scores
        if method == "fisher":
            q_norm = np.sqrt(np.clip(np.einsum("ij,ij->i", self.precondition(phi_q), phi_q), 0.0, None))
            r_norm = self.h_norms()
        else:
            q_norm, r_norm = np.linalg.norm(phi_q, axis=1), self.norms()
        denominator = np.maximum(q_norm[:, None] * r_norm[None, :], 1e-30)
        out = np.atleast_2d(scores) / denominator
        return out[0] if scores.ndim == 1 else out

    def precondition(self, phi: np.ndarray) -> np.ndarray:
        """Block-diagonal (F_m + lambda_m I)^-1 phi. phi: (k,) or (q, k)."""
        phi = np.asarray(phi, dtype=np.float32)
        out = np.empty_like(phi)
        for (start, stop), inverse in zip(self.bounds, self.fisher_inverse, strict=True):
            out[..., start:stop] = _matmul(phi[..., start:stop], inverse)  # symmetric
        return out

    def scores(self, phi_q: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
        """tau_i for every row (N,) or (q, N) for a stack of queries. tau > 0: the row made the answer more likely."""
        if method not in SCORE_METHODS:
            raise EngineError(f"Unknown score method {method!r}; choose one of {', '.join(SCORE_METHODS)}.")
        phi_q = np.asarray(phi_q, dtype=np.float32)
        if phi_q.shape[-1] != self.k:
            raise EngineError(f"Query features have {phi_q.shape[-1]} dimensions; this index has {self.k}.")
        return self._method_scores(phi_q, method)

    def scores_of_rows(self, rows: np.ndarray, phi_q: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
        """`scores(phi_q, method)[rows]` for one query (k,), computed on those rows alone, the same way."""
        return self._method_scores(np.asarray(phi_q, dtype=np.float32), method, rows)

    def _method_scores(self, phi_q: np.ndarray, method: str, rows: np.ndarray | None = None) -> np.ndarray:
        if method == "fisher":
            return self._against_rows(self.precondition(phi_q), rows)
        raw = self._against_rows(phi_q, rows)
        if method == "dot":
            return raw
        q_norm = np.linalg.norm(phi_q, axis=-1, keepdims=True)
        return raw / np.maximum(q_norm * (self.norms() if rows is None else self.norms()[rows]), 1e-30)

    def _against_rows(self, phi: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """phi (k,) or (q, k) against every row -> (N,) or (q, N), SCORE_CHUNK rows at a time: no (N, k) float32
        copy of the features. int8 rows are multiplied as stored and scaled after (the same product, one multiply
        a row instead of one a feature); float16 rows (formats 2, 3) are dequantised first, as they always were."""
        query = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(phi).T, dtype=np.float32))  # (k, q)
        count = self.size if rows is None else len(rows)
        out = torch.empty((count, query.shape[1]), dtype=torch.float32)
        buffer = torch.empty((max(1, min(SCORE_CHUNK, count)), self.k), dtype=torch.float32)
        as_numpy = buffer.numpy()
        scaled_after = self.features.dtype == np.int8
        scale = self.row_scale if rows is None else self.row_scale[rows]
        for start in range(0, count, SCORE_CHUNK):
            stop = min(start + SCORE_CHUNK, count)
            chunk = as_numpy[: stop - start]
            np.copyto(chunk, self.features[start:stop] if rows is None else self.features[rows[start:stop]],
                      casting="unsafe")  # fmt: skip
            if rows is None:
                release_rows(self.features, start, stop)
            if not scaled_after:
                chunk *= scale[start:stop, None]
            torch.mm(buffer[: stop - start], query, out=out[start:stop])
        scores = out.numpy()
        if scaled_after:
            scores *= scale[:, None]
        scores = scores.T
        return scores[0] if phi.ndim == 1 else scores

    # -- damping ----------------------------------------------------------------------------------------------------
    def with_damping(self, kappa: float) -> AttributionIndex:
        """The same features with lambda_m = kappa * tr(F_m) / k_m (for choosing kappa by validation)."""
        inverses, damping = fisher_blocks(self.features, self.widths, kappa, row_scale=self.row_scale)
        index = AttributionIndex(
            row_ids=self.row_ids,
            features=self.features,
            row_scale=self.row_scale,
            matrices=self.matrices,
            widths=self.widths,
            seed=self.seed,
            projection=self.projection,
            kappa=float(kappa),
            fisher_inverse=inverses,
            damping=damping,
            null_features=self.null_features,
            null_floor={},
            null_alpha=self.null_alpha,
            build_seconds=self.build_seconds,
            fluent_features=self.fluent_features,
            fluent_queries=self.fluent_queries,
            calibration=self.calibration,
            format=self.format,
            _projector=self._projector,
            _norms=self._norms,
        )
        index.null_floor = calibrate_floor(index)
        return index

    # -- storage (storage.py) ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Written to a temporary file beside `path`, then renamed over it (storage.save_index)."""
        return save_index(self, path)

    @classmethod
    def load(cls, path: str | Path) -> AttributionIndex:
        """The index at `path`, its features mapped from the file, not read (storage.load_index)."""
        return load_index(cls, path)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Through torch, which honours torch.set_num_threads (NumPy's BLAS would start its own threads)."""
    return (torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))).numpy()


def _check_same_model(model: nn.Module, matrices: Sequence[LoraMatrix]) -> None:
    found = [m for m, _ in lora_modules(model)]
    if [(m.name, m.shape) for m in found] != [(m.name, m.shape) for m in matrices]:
        raise EngineError("The model's LoRA matrices differ from the ones this index was built for.")


def fisher_blocks(
    features: np.ndarray, widths: Sequence[int], kappa: float, *, row_scale: np.ndarray | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """(F_m + lambda_m I)^-1 per block with F_m = Phi_m^T Phi_m / N and lambda_m = kappa * tr(F_m) / k_m.
    `features`: float32 phi, or stored features (int8 / float16) with their `row_scale`, dequantised per chunk.

    Blocks of the same width (the same layer kind in every decoder layer) are formed and inverted as one batch:
    a handful of calls instead of one per LoRA matrix (hundreds on a real model), same float64 arithmetic. The
    sums run over chunks of `chunk_rows(k, 8)` rows: the float64 copies never grow with the number of rows."""
    if kappa <= 0:
        raise EngineError(f"kappa must be positive, got {kappa}.")
    n = max(1, features.shape[0])
    starts = np.concatenate([[0], np.cumsum(widths)]).astype(int).tolist()
    inverses: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(widths)
    damping = np.zeros(len(widths), dtype=np.float64)
    by_width: dict[int, list[int]] = {}
    for position, width in enumerate(widths):
        by_width.setdefault(int(width), []).append(position)
    # buffers made once: new copies per chunk fragmented glibc's heap (9,000 rows, k = 13,440: 0.19 GB, not 0.08)
    step = min(chunk_rows(features.shape[1], 8), n)
    phi = np.empty((step, features.shape[1]), dtype=np.float32)
    for width, positions in by_width.items():
        fisher = torch.zeros((len(positions), width, width), dtype=torch.float64)
        blocks = torch.empty((len(positions), step, width), dtype=torch.float64)
        for chunk in range(0, features.shape[0], step):
            m = min(step, features.shape[0] - chunk)
            if row_scale is None:
                np.copyto(phi[:m], features[chunk : chunk + m], casting="same_kind")
            else:  # as dequantised_rows: each value as float32 times its row's scale
                np.multiply(features[chunk : chunk + m], row_scale[chunk : chunk + m, None], out=phi[:m],
                            dtype=np.float32)  # fmt: skip
            release_rows(features, chunk, chunk + m)
            rows = torch.from_numpy(phi[:m])
            for b, position in enumerate(positions):
                blocks[b, :m].copy_(rows[:, starts[position] : starts[position] + width])
            fisher += blocks[:, :m].transpose(1, 2) @ blocks[:, :m]  # (B, w, w)
        fisher /= n
        trace = torch.diagonal(fisher, dim1=1, dim2=2).sum(dim=1)
        lam = torch.where(trace > 0, kappa * trace / width, torch.ones_like(trace))
        eye = torch.eye(width, dtype=torch.float64)
        inverse = torch.linalg.inv(fisher + lam[:, None, None] * eye).to(torch.float32).numpy()
        for b, position in enumerate(positions):
            inverses[position] = inverse[b]
            damping[position] = float(lam[b])
    return inverses, damping


def project_rows(model: nn.Module, rows, projector: Projector, *, batch_size: int = 16, pad_id: int = 0) -> np.ndarray:
    """phi (len(rows), k) float32 of (input_ids, labels) rows, in the order given."""
    out = np.zeros((len(rows), projector.k), dtype=np.float32)

    def consume(indices: list[int], phi: torch.Tensor) -> None:
        out[indices] = phi.numpy()

    per_row_features(model, rows, projector, batch_size=batch_size, pad_id=pad_id, consume=consume)
    return out


def best_relevance(index: AttributionIndex, phi: np.ndarray, method: str) -> np.ndarray:
    """The largest relevance any row gets, per query (phi: (q, k))."""
    scores = np.atleast_2d(index.scores(phi, method))
    return index.relevance(scores, phi, method).max(axis=1)


def calibrate_floor(index: AttributionIndex) -> dict[str, float]:
    """Noise floor per score method: the (1 - null_alpha) quantile, over the permutation-null queries, of the
    largest relevance any row gets, and the same over the fluent calibration queries when the index has them; the
    floor is the higher of the two. An unrelated answer, random or fluent, then credits any row at all with
    probability ~null_alpha."""
    floors = {}
    for method in SCORE_METHODS:
        floor = float(np.quantile(best_relevance(index, index.null_features, method), 1.0 - index.null_alpha))
        if len(index.fluent_queries):
            fluent = best_relevance(index, index.fluent_features, method)
            floor = max(floor, float(np.quantile(fluent, 1.0 - index.null_alpha)))
        floors[method] = floor
    return floors


def pass_limits(model: nn.Module, projector: Projector, budget_bytes: int) -> tuple[int, int]:
    """(rows, padded tokens) one gradient pass may hold within `budget_bytes`: per token, a training pass's
    activations, each LoRA matrix's input and the gradient at its output (all held until the pass's features are
    formed), with the allocator's slack (memory.ALLOCATOR_SLACK); per row,
    its features and, for "dense", the largest matrix's per-row gradient (formed and projected one at a time)."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    blocks = projector.blocks
    captured = sum(b.matrix.shape[0] for b in blocks)  # lora_A outputs: rank; lora_B: the layer's output
    inputs = sum(b.matrix.shape[1] for b in blocks)  # lora_A inputs: the layer's input; lora_B: rank
    projected = sum(b.width // b.matrix.rank for b in blocks) if projector.kind == "lowrank" else 0
    per_token = ALLOCATOR_SLACK * (activation_bytes_per_token(config) + 4 * (captured + inputs + projected))
    per_row = 4 * 3 * projector.k
    if projector.kind == "dense":
        per_row += 4 * 2 * max(b.matrix.size for b in blocks)
    return rows_and_tokens(budget_bytes, per_token=per_token, per_row=per_row)


def build_index(
    model: nn.Module,
    rows: Sequence[Row],
    *,
    k: int = 4096,
    seed: int = 0,
    projection: str = "lowrank",
    kappa: float = DEFAULT_KAPPA,
    batch_size: int = 16,
    max_tokens: int | None = None,
    memory_budget: int | None = None,
    pad_id: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    calibration_prompts: Sequence[Sequence[int]] = (),
    eos_ids: Sequence[int] = (),
    calibration: dict | None = None,
    feature_dtype: str = "int8",
    features_file: str | Path | None = None,
) -> AttributionIndex:
    """Projected per-row gradients of `model` (a peft LoRA model, at its final adapter) for every training row.

    The rows and the permutation-null queries go through the model together, sorted by length, in passes of at
    most `max_tokens` padded tokens (default: `batch_size` times the longest row, the most a pass of `batch_size`
    rows can hold). A training job passes its own batch size times its max length: what one training micro-batch
    may hold at most, so the build never needs more activation memory than training did. With `memory_budget`
    (bytes), no pass holds more rows or tokens than `pass_limits` allows in it either: the build's peak memory then
    depends on the budget, not on how many rows there are or how short they are. How rows are grouped does not
    change any row's features (each row's gradient is recovered exactly from the batched pass).

    `feature_dtype` "int8" (format poa-index-4, the default) or "float16" (format poa-index-3, as indexes were built
    before it: kept to compare the two). The Fisher blocks, norms and noise floor are computed on the stored
    (dequantised) features: the ones queries are scored against.

    With `features_file`, the features (k bytes a row: 13,440 with the Thorough preset) are written to that file as
    the passes form them and mapped from it (storage.RowFile), not held in memory. The caller removes the file once
    the index is saved (saving copies the features into the index file) or no longer used."""
    started = time.perf_counter()
    if feature_dtype not in FEATURE_DTYPES:
        raise EngineError(f"Features are stored as {' or '.join(FEATURE_DTYPES)}, not {feature_dtype!r}.")
    if not rows:
        raise EngineError("No training rows to index.")
    row_ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
    if len(np.unique(row_ids)) != len(row_ids):
        raise EngineError("Row ids must be unique.")
    for row_id, ids, labels in rows:
        check_row(row_id, ids, labels)
    matrices = [m for m, _ in lora_modules(model)]
    widths = allocate(matrices, k, projection)
    projector = Projector(matrices, widths, seed, projection)
    shape = (len(rows), projector.k)
    dtype = np.dtype(feature_dtype)
    into = np.zeros(shape, dtype=dtype) if features_file is None else RowFile(features_file, shape, dtype)
    finite = True
    row_scale = np.ones(len(rows), dtype=np.float32)
    null_phi = np.zeros((NULL_QUERIES, projector.k), dtype=np.float32)
    fluent = fluent_queries(model, calibration_prompts, eos_ids=eos_ids) if calibration_prompts else []
    fluent_phi = np.zeros((len(fluent), projector.k), dtype=np.float32)
    stream = [(r[1], r[2]) for r in rows] + null_queries(rows, NULL_QUERIES, seed) + fluent
    if max_tokens is None:
        max_tokens = batch_size * max(len(ids) for ids, _ in stream)
    max_rows = None
    if memory_budget is not None:
        max_rows, budget_tokens = pass_limits(model, projector, memory_budget)
        max_tokens = min(max_tokens, budget_tokens)
    done = 0

    def consume(indices: list[int], phi_batch: torch.Tensor) -> None:
        nonlocal done, finite
        phi = phi_batch.numpy()
        at = np.asarray(indices)
        is_row, is_null = at < len(rows), (at >= len(rows)) & (at < len(rows) + NULL_QUERIES)
        null_phi[at[is_null] - len(rows)] = phi[is_null]
        fluent_phi[at[~is_row & ~is_null] - len(rows) - NULL_QUERIES] = phi[~is_row & ~is_null]
        phi, indices = phi[is_row], np.asarray(indices)[is_row]
        finite = finite and bool(np.isfinite(phi).all())
        with np.errstate(invalid="ignore", over="ignore"):
            into[indices], row_scale[indices] = quantise_rows(phi, feature_dtype)
        done += len(indices)
        if on_progress is not None and len(indices):
            on_progress(done, len(rows))

    if on_progress is not None:
        on_progress(0, len(rows))
    per_row_features(
        model,
        stream,
        projector,
        batch_size=batch_size,
        max_tokens=max_tokens,
        max_rows=max_rows,
        pad_id=pad_id,
        consume=consume,
    )
    features = into if features_file is None else into.mapped()
    release_freed()  # the passes' activations go back to the system, not to this process's heap
    if not finite or (feature_dtype == "float16" and not np.isfinite(features).all()):
        raise EngineError("Some row gradients are not finite (overflow in float16 or a diverged model).")
    index = AttributionIndex(
        row_ids=row_ids,
        features=features,
        row_scale=row_scale,
        matrices=matrices,
        widths=widths,
        seed=int(seed),
        projection=projection,
        kappa=float(kappa),
        fisher_inverse=[],
        damping=np.zeros(0),
        null_features=null_phi,
        null_floor={},
        fluent_features=fluent_phi,
        fluent_queries=fluent,
        calibration=dict(calibration or {}),
        format=FEATURE_DTYPES[feature_dtype],
        _projector=projector,
    )
    index.fisher_inverse, index.damping = fisher_blocks(features, widths, kappa, row_scale=row_scale)
    index.null_floor = calibrate_floor(index)
    release_freed()  # and the Fisher blocks' and the floor's temporaries: the job's next stage starts from here
    index.build_seconds = time.perf_counter() - started
    return index
