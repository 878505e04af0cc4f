"""Exact attribution scores where they decide something, from an integer screen of every row.

One answer's attribution needs, of the N scores tau_i (index.scores), only (a) the rows whose relevance clears the
noise floor (their credit) and (b) the top_k rows by score. Reading every int8 row as float32 (index._against_rows)
costs about 0.5 s at 100,000 rows on one CPU core; an integer dot product over the same bytes costs a tenth of that.

The screen: the query vector v (the preconditioned query for "fisher", the query itself for "dot" and "cosine") is
rounded to int16, v = s * v16 + r with |r_j| <= s / 2, and one pass over the int8 features f_i gives, exactly in
integers, d_i = f_i . v16. The float path computes tau_i = scale_i * fl(f_i . v), and with phi_i = scale_i * f_i,

    |tau_i - scale_i * s * d_i| <= |phi_i| (sqrt(k) s / 2 + g |v|) =: b_i,   g = k u / (1 - k u)

(|f_i . r| <= |f_i|_1 s/2 <= sqrt(k) |f_i| s/2; u = 2^-24, float32's unit roundoff: g bounds the relative error of a
float32 dot product of k terms in any summation order, against sum_j |f_ij v_j| <= |f_i| |v|), widened for the
float32 norms and, by 1e-6 of tau~_i, for the float32 rounding of the returned score and of its relevance. A row
with tau~_i + b_i under the floor (on the relevance scale) and under the top_k-th largest lower bound tau~ - b
cannot be credited or listed: it keeps its screened score, which is below both as well. Every other row is scored
again by the float path, so the decisions (which rows clear the floor, which are the top_k) and every score that
enters a share are the float path's. `screened_scores` returns that array and how many rows went through the float
path.

No Django here. Numba compiles the screen on first use (cached on disk, about a second the first time); it runs on
one thread, so it needs no threading layer and is safe in forked and threaded workers alike. Without numba the float
path scores every row (the same result).
"""

from __future__ import annotations

import math

import numpy as np

UNIT_ROUNDOFF = 2.0**-24
MIN_ROWS = 4096  # below this, the float path over every row is already fast: no screen
Q_MAX = 32767
NORM_SLACK = 1e-3  # relative: the rows' norms are float32 sums of k squares (worst case k u / 2)
FLOAT32_SLACK = 1e-6  # relative: the screened score is returned as float32 and its relevance computed in float32


_KERNEL: list = []  # the compiled screen, made on first use (importing numba: ~0.3 s, ~120 MB resident)


def _kernel():
    """The compiled dot products, or None without numba."""
    if not _KERNEL:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is in requirements.txt
            _KERNEL.append(None)
            return None

        @numba.njit(cache=True, nogil=True)  # one thread: no threading layer (fork- and thread-safe)
        def dots(features, v16, out):  # pragma: no cover - compiled; tested through screen and screened_scores
            n, k = features.shape
            for i in range(n):
                acc = np.int64(0)
                for j in range(k):
                    acc += np.int32(features[i, j]) * np.int32(v16[j])  # |product| < 2^22: exact in int32
                out[i] = acc

        _KERNEL.append(dots)
    return _KERNEL[0]


def available() -> bool:
    return _kernel() is not None


def screen(features: np.ndarray, row_scale: np.ndarray, v: np.ndarray, norms: np.ndarray) -> tuple:
    """(tau~, b): every row's screened score scale_i * s * d_i and the bound b_i on its distance to the float path's
    score (module docstring). features: (N, k) int8; v: (k,) float32; norms: |phi_i| (N,), the rows' stored norms."""
    v = np.asarray(v, dtype=np.float32)
    n, k = features.shape
    top = float(np.abs(v).max()) if v.size else 0.0
    if not np.isfinite(top):
        return np.zeros(n), np.full(n, np.inf)
    if top == 0.0:
        return np.zeros(n), np.zeros(n)
    s = top / Q_MAX
    v16 = np.clip(np.rint(v / s), -Q_MAX, Q_MAX).astype(np.int16)
    dots = np.empty(n, dtype=np.int64)
    _kernel()(features, v16, dots)
    approx = row_scale.astype(np.float64) * s * dots.astype(np.float64)
    gamma = k * UNIT_ROUNDOFF / (1 - k * UNIT_ROUNDOFF)
    v_norm = float(np.linalg.norm(v.astype(np.float64)))
    bound = norms.astype(np.float64) * (math.sqrt(k) * s / 2 + gamma * v_norm) * (1 + NORM_SLACK)
    return approx, bound


def screened_scores(index, phi_q: np.ndarray, method: str, floor: float, top_k: int) -> tuple[np.ndarray, int]:
    """(scores, rescored): `index.scores(phi_q, method)` wherever it decides the attribution (rows that may clear
    `floor` on the relevance scale, the top_k by score), the screened score elsewhere; and how many rows were scored
    by the float path. Falls back to the float path for every row when the screen does not apply (numba missing,
    float16 features, fewer than MIN_ROWS rows, a stack of queries)."""
    phi_q = np.asarray(phi_q, dtype=np.float32)
    n = index.size
    if not available() or index.features.dtype != np.int8 or n < MIN_ROWS or phi_q.ndim != 1:
        return index.scores(phi_q, method), n
    v = index.precondition(phi_q) if method == "fisher" else phi_q
    approx, bound = screen(index.features, index.row_scale, v, index.norms())
    if method == "cosine":  # scores = raw / (|q| |phi_i|): the same division of the value and of its bound
        denominator = np.maximum(float(np.linalg.norm(phi_q)) * index.norms().astype(np.float64), 1e-30)
        approx, bound = approx / denominator, bound / denominator
    # relevance is tau / (|q| |phi_i|) in the method's metric ("cosine": tau itself): the bound scales the same way
    unit = index.relevance(np.ones(n, dtype=np.float32), phi_q, method).astype(np.float64)
    bound = bound + FLOAT32_SLACK * np.abs(approx)  # the float32 rounding of the returned score and its relevance
    candidates = (approx + bound) * unit >= max(floor, 0.0)
    if 0 < top_k < n:
        lower = approx - bound
        kth = np.partition(lower, n - top_k)[n - top_k]
        candidates = candidates | (approx + bound >= kth)
    else:
        candidates = np.ones(n, dtype=bool)
    rows = np.flatnonzero(candidates)
    scores = approx.astype(np.float32)
    if len(rows):
        scores[rows] = index.scores_of_rows(rows, phi_q, method)
    return scores, len(rows)
