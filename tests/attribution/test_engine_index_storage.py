"""Index storage (format poa-index-4): int8 features with a per-row scale, row norms stored at build time, features
memory-mapped on load and scored in chunks. Tensors only (no Django); the planted-facts test uses the tiny model."""

import dataclasses
import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from attribution.engine import AttributionIndex, EngineError, attribute, build_index, storage
from attribution.engine.index import (
    INDEX_FORMAT,
    NULL_QUERIES,
    SCORE_CHUNK,
    SCORE_METHODS,
    calibrate_floor,
    fisher_blocks,
    quantise_rows,
    row_norms,
)
from attribution.engine.lora import LoraMatrix

FIXTURES = Path(__file__).parent / "fixtures"
WIDTHS = [24, 40]
MATRICES = [LoraMatrix("m.lora_A", "A", (12, 3), 8), LoraMatrix("m.lora_B", "B", (5, 12), 8)]


def synthetic_index(n: int, *, dtype: str = "int8", seed: int = 0) -> tuple[AttributionIndex, np.ndarray]:
    """An index over n random rows of very different magnitudes (k = 64), built as build_index stores features."""
    rng = np.random.default_rng(seed)
    phi = (rng.standard_normal((n, sum(WIDTHS))) * rng.uniform(1e-4, 1e-1, (n, 1))).astype(np.float32)
    features, scale = quantise_rows(phi, dtype)
    index = AttributionIndex(
        row_ids=np.arange(1, n + 1, dtype=np.int64),
        features=features,
        row_scale=scale,
        matrices=MATRICES,
        widths=WIDTHS,
        seed=3,
        projection="lowrank",
        kappa=0.1,
        fisher_inverse=[],
        damping=np.zeros(0),
        null_features=rng.standard_normal((NULL_QUERIES, sum(WIDTHS))).astype(np.float32) * 0.05,
        null_floor={},
        format="poa-index-4" if dtype == "int8" else "poa-index-3",
    )
    index.fisher_inverse, index.damping = fisher_blocks(features, WIDTHS, 0.1, row_scale=scale)
    index.null_floor = calibrate_floor(index)
    return index, phi


def dense_scores(index: AttributionIndex, phi_q: np.ndarray, method: str) -> np.ndarray:
    """The straightforward computation: every row dequantised into one float32 array, then one product."""
    dense = index.features.astype(np.float64) * index.row_scale.astype(np.float64)[:, None]
    q = np.atleast_2d(phi_q).astype(np.float64)
    if method == "fisher":
        q = index.precondition(q.astype(np.float32)).astype(np.float64)
    raw = q @ dense.T
    if method == "cosine":
        raw /= np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(dense, axis=1)[None, :]
    return raw


def test_int8_rows_keep_each_value_within_half_a_step_and_the_largest_exact():
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((50, 64)).astype(np.float32) * rng.uniform(1e-6, 10, (50, 1)).astype(np.float32)
    phi[7] = 0.0
    stored, scale = quantise_rows(phi, "int8")
    assert stored.dtype == np.int8 and scale.dtype == np.float32 and stored.shape == (50, 64)
    assert scale[7] == 1.0 and not stored[7].any()
    assert (np.abs(stored).max(axis=1)[np.arange(50) != 7] == 127).all()
    error = np.abs(stored * scale[:, None] - phi)
    assert (error <= 0.5 * scale[:, None] * (1 + 1e-5)).all()
    with pytest.raises(EngineError, match="Features are stored as int8 or float16, not 'int4'"):
        quantise_rows(phi, "int4")


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_chunked_scores_equal_the_dense_computation(dtype):
    n = 3 * SCORE_CHUNK + 17  # a last chunk that is not full
    index, _ = synthetic_index(n, dtype=dtype)
    queries = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32) * 0.05
    for method in SCORE_METHODS:
        got = index.scores(queries, method)
        assert got.shape == (3, n)
        np.testing.assert_allclose(got, dense_scores(index, queries, method), rtol=1e-4, atol=1e-6 * np.abs(got).max())
        one = index.scores(queries[1], method)
        assert one.shape == (n,)
        np.testing.assert_allclose(one, got[1], rtol=1e-5, atol=1e-7 * np.abs(got).max())
    dense = index.features32()
    np.testing.assert_allclose(index.norms(), np.linalg.norm(dense, axis=1), rtol=1e-5)
    h = np.sqrt(np.einsum("ij,ij->i", index.precondition(dense), dense))
    np.testing.assert_allclose(index.h_norms(), h, rtol=1e-4)


def _numpy_peak(compute) -> int:
    """The most bytes numpy (and Python) held at once while `compute` ran, above what was held before it."""
    gc.collect()
    tracemalloc.start()
    try:
        compute()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_passes_over_every_row_hold_chunks_bounded_by_bytes_whatever_the_number_of_rows(monkeypatch):
    """Norms, Fisher norms and Fisher blocks copy storage.CHUNK_BYTES of rows at a time (a fixed 4,096 or 2,048 rows
    before: 0.6 GB above the index at 9,000 rows of k = 13,440), and give what one chunk of every row gives."""
    small, big = synthetic_index(2000)[0], synthetic_index(8000)[0]
    whole = {}
    for name, index in (("small", small), ("big", big)):
        whole[name] = (row_norms(index.features, index.row_scale), index.h_norms(), index.fisher_inverse)
    monkeypatch.setattr(storage, "CHUNK_BYTES", 64 * 2**10)  # 256 float32 rows of k = 64, 128 float64 rows
    peaks = {}
    for name, index in (("small", small), ("big", big)):
        n = index.size
        fresh = dataclasses.replace(index, _norms=None, _h_norms=None)
        norms = row_norms(fresh.features, fresh.row_scale)
        np.testing.assert_array_equal(norms, whole[name][0])
        np.testing.assert_allclose(fresh.h_norms(), whole[name][1], rtol=1e-6)
        inverses, _ = fisher_blocks(fresh.features, WIDTHS, 0.1, row_scale=fresh.row_scale)
        for chunked, one in zip(inverses, whole[name][2], strict=True):
            np.testing.assert_allclose(chunked, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())
        fresh._h_norms = None
        peaks[name] = (
            _numpy_peak(lambda f=fresh: row_norms(f.features, f.row_scale)) - 4 * n,  # less the (n,) float32 out
            _numpy_peak(fresh.h_norms) - 12 * n,  # less the (n,) float64 sums and float32 out
            _numpy_peak(lambda f=fresh: fisher_blocks(f.features, WIDTHS, 0.1, row_scale=f.row_scale)),
        )
    for stage, small_peak, big_peak in zip(("norms", "h_norms", "fisher"), peaks["small"], peaks["big"], strict=True):
        assert big_peak <= 4 * storage.CHUNK_BYTES, (stage, big_peak)
        assert big_peak <= small_peak + 2**14, (stage, small_peak, big_peak)  # 4x the rows: the same chunks


def test_int8_scores_stay_within_one_percent_of_the_float32_scores():
    """The float32 features before storage against their int8 copy: relevance (a cosine) moves by < 0.01."""
    index, phi = synthetic_index(2000)
    ones = np.ones(len(phi), np.float32)
    reference = dataclasses.replace(index, features=phi, row_scale=ones, _norms=None, _h_norms=None)
    reference.fisher_inverse = index.fisher_inverse
    queries = phi[:5] + np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32) * 0.01
    for method in SCORE_METHODS:
        int8, exact = index.scores(queries, method), reference.scores(queries, method)
        rho_int8 = index.relevance(int8, queries, method)
        rho_exact = reference.relevance(exact, queries, method)
        assert np.abs(rho_int8 - rho_exact).max() < 0.01
        assert (np.argmax(int8, axis=1) == np.argmax(exact, axis=1)).all()


def test_format_4_round_trip_maps_the_features_and_scores_identically(tmp_path):
    index, _ = synthetic_index(600)
    path = index.save(tmp_path / "index.safetensors")
    loaded = AttributionIndex.load(path)
    assert loaded.format == INDEX_FORMAT == "poa-index-4"
    assert isinstance(loaded.features, np.memmap) and not loaded.features.flags.owndata
    assert not loaded.features.flags.writeable and loaded.features.dtype == np.int8
    np.testing.assert_array_equal(np.asarray(loaded.features), index.features)
    np.testing.assert_array_equal(loaded.row_scale, index.row_scale)
    assert loaded._norms is not None and loaded._h_norms is not None  # stored: loading made no pass over features
    np.testing.assert_array_equal(loaded._norms, index.norms())
    np.testing.assert_array_equal(loaded._h_norms, index.h_norms())
    assert loaded.params() == index.params() and loaded.null_floor == index.null_floor
    queries = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32) * 0.05
    for method in SCORE_METHODS:
        np.testing.assert_array_equal(loaded.scores(queries, method), index.scores(queries, method))
    assert calibrate_floor(loaded) == index.null_floor


def test_the_previous_format_written_by_the_previous_code_scores_as_it_did():
    """poa-index-3.safetensors and its scores were written by the code before format 4 (float16 features, no stored
    norms; git show 66c4963:attribution/engine/index.py, 300 rows at k = 64 with fluent calibration)."""
    loaded = AttributionIndex.load(FIXTURES / "poa-index-3.safetensors")
    expected = np.load(FIXTURES / "poa-index-3-scores.npz")
    assert loaded.format == "poa-index-3" and loaded.features.dtype == np.float16 and loaded.size == 300
    assert isinstance(loaded.features, np.memmap) and len(loaded.fluent_queries) == 4
    assert loaded._norms is None and loaded._h_norms is None  # computed (in chunks) on first use
    for method in SCORE_METHODS:
        scores, want = loaded.scores(expected["queries"], method), expected[f"scores_{method}"]
        # float32 rounding of a sum of k products is relative to its terms, not to the sum: a score near zero carries
        # the rounding of the large ones, and it differs by CPU (9e-7 on scores up to 13 on an Intel Xeon)
        np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        relevance = loaded.relevance(scores, expected["queries"], method)
        np.testing.assert_allclose(relevance, expected[f"relevance_{method}"], rtol=1e-5, atol=1e-7)
    floors = calibrate_floor(loaded)
    assert floors == pytest.approx(loaded.null_floor, rel=1e-6)


def test_loading_a_big_index_does_not_read_its_features_into_memory(tmp_path):
    n, k = 20_000, 4096  # 82 MB of int8 features
    rng = np.random.default_rng(5)
    index = AttributionIndex(
        row_ids=np.arange(1, n + 1, dtype=np.int64),
        features=rng.integers(-127, 128, size=(n, k), dtype=np.int8),
        row_scale=np.ones(n, np.float32),
        matrices=[LoraMatrix(f"m{i}.lora_A", "A", (8, 64), 8) for i in range(64)],
        widths=[64] * 64,
        seed=0,
        projection="lowrank",
        kappa=0.1,
        fisher_inverse=[np.eye(64, dtype=np.float32)] * 64,  # 1 MiB in all: what load reads besides the features
        damping=np.ones(64),
        null_features=np.zeros((NULL_QUERIES, k), np.float32),
        null_floor={m: 0.5 for m in SCORE_METHODS},
        _norms=np.ones(n, np.float32),
        _h_norms=np.ones(n, np.float32),
    )
    path = index.save(tmp_path / "big.safetensors")
    del index
    gc.collect()
    before = _rss_bytes()
    loaded = AttributionIndex.load(path)
    grown = _rss_bytes() - before
    assert loaded.size == n and isinstance(loaded.features, np.memmap)
    assert grown < n * k // 10, f"RSS grew by {grown} bytes on load; the features are {n * k}"


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_truncated_or_corrupt_file_is_refused_by_name(tmp_path):
    index, _ = synthetic_index(300)
    path = index.save(tmp_path / "index.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-100])
    with pytest.raises(EngineError, match=r"truncated\.safetensors is truncated: tensor '.*' ends past the end"):
        AttributionIndex.load(truncated)
    header_only = tmp_path / "header.safetensors"
    header_only.write_bytes(data[:50])
    with pytest.raises(EngineError, match=r"header\.safetensors is truncated or not a safetensors file"):
        AttributionIndex.load(header_only)
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(data[:8] + b"\xff" * 40 + data[48:])
    with pytest.raises(EngineError, match=r"garbled\.safetensors is corrupt: its safetensors header is not readable"):
        AttributionIndex.load(garbled)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(EngineError, match=r"empty\.safetensors is truncated or not a safetensors file"):
        AttributionIndex.load(empty)


def test_a_format_4_file_without_its_row_norms_is_refused(tmp_path):
    from safetensors.numpy import save_file

    index, _ = synthetic_index(300)
    path = index.save(tmp_path / "index.safetensors")
    loaded = AttributionIndex.load(path)
    tensors = {"row_ids": loaded.row_ids, "features": np.asarray(loaded.features), "row_scale": loaded.row_scale,
               "damping": loaded.damping, "null_features": loaded.null_features,
               "fisher_inverse.0": loaded.fisher_inverse[0], "fisher_inverse.1": loaded.fisher_inverse[1]}  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(tmp_path / "no-norms.safetensors"), metadata=metadata)
    with pytest.raises(EngineError, match=r"is corrupt: an index of format poa-index-4 stores its row norms"):
        AttributionIndex.load(tmp_path / "no-norms.safetensors")


def test_saving_over_a_loaded_index_leaves_the_loaded_one_readable(tmp_path):
    """A rebuilt index replaces the file whole (a rename): a worker that has the old file mapped keeps scoring it."""
    index, _ = synthetic_index(400)
    path = index.save(tmp_path / "index.safetensors")
    loaded = AttributionIndex.load(path)
    queries = np.random.default_rng(6).standard_normal((1, 64)).astype(np.float32)
    before = loaded.scores(queries, "fisher")
    other, _ = synthetic_index(50, seed=9)
    other.save(path)
    np.testing.assert_array_equal(loaded.scores(queries, "fisher"), before)
    assert AttributionIndex.load(path).size == 50
    assert [p.name for p in tmp_path.iterdir()] == ["index.safetensors"]  # no temporary file left behind


def test_a_format_4_index_refuses_float16_features(tmp_path):
    index, _ = synthetic_index(30, dtype="float16")
    with pytest.raises(EngineError, match="An index of format poa-index-4 stores its features as int8"):
        dataclasses.replace(index, format=INDEX_FORMAT).save(tmp_path / "index.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_int8_and_float16_indexes_of_the_planted_facts_credit_the_same_rows(planted, tokenizer):
    _, model, index, datanet = planted
    assert index.format == INDEX_FORMAT and index.features.dtype == np.int8
    half = build_index(
        model, datanet.rows, k=2048, batch_size=16, pad_id=tokenizer.pad_token_id, feature_dtype="float16"
    )
    assert half.format == "poa-index-3" and half.features.dtype == np.float16
    np.testing.assert_array_equal(half.null_features, index.null_features)
    phis = np.stack([index.query_features(model, p, a) for p, a, _ in datanet.queries])
    for method in SCORE_METHODS:
        int8, fp16 = index.scores(phis, method), half.scores(phis, method)
        if method == "dot":  # the rows' rounding alone, bounded: |q| (|v8 - v| + |v16 - v|) + float32 sums
            norms = np.linalg.norm(half.features.astype(np.float32) * half.row_scale[:, None], axis=1)
            rounding = np.sqrt(index.k) * index.row_scale / 2 + norms * (2.0**-11 + 2 * index.k * 2.0**-24)
            bound = np.linalg.norm(phis, axis=1)[:, None] * rounding[None, :]
            assert (np.abs(int8 - fp16) <= 1.001 * bound + 1e-6).all()
        else:  # each index preconditions (fisher) or normalises (cosine) with its own stored features: close, and
            # the same rows come first (below); on an Intel Xeon fisher differed by up to 5.8% of a query's top score
            gap = np.abs(int8 - fp16).max(axis=1) / np.abs(fp16).max(axis=1)
            assert gap.max() <= 0.1, (method, gap.round(3).tolist())
        for a, b in zip(int8, fp16, strict=True):  # each fact has 2 rows (two phrasings): the same 2 come first
            assert set(np.argsort(-a)[:2]) == set(np.argsort(-b)[:2])
    for prompt, answer, owner in datanet.queries:
        got = attribute(index, None, model, prompt, answer, datanet.row_meta)
        was = attribute(half, None, model, prompt, answer, datanet.row_meta)
        assert max(got.contributor_shares, key=got.contributor_shares.get) == owner
        assert {r for r, _ in got.top_rows[:2]} == {r for r, _ in was.top_rows[:2]}
        assert got.contributor_shares[owner] == pytest.approx(was.contributor_shares[owner], abs=0.02)
    assert index.null_floor == pytest.approx(half.null_floor, abs=0.01)
