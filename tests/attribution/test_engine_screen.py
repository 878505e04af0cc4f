"""The integer screen (attribution/engine/screen.py): every attribution equals the float path's over every row."""

import dataclasses

import numpy as np
import pytest

from attribution.engine import AttributionIndex, attribute_features, screen
from attribution.engine.index import calibrate_floor
from attribution.engine.storage import row_norms


def _full_path(monkeypatch):
    monkeypatch.setattr(screen, "MIN_ROWS", 10**12)


def test_the_bound_holds_for_every_row_whatever_the_values():
    """|float path - screened score| <= bound, row by row, on random and extreme int8 rows and queries."""
    rng = np.random.default_rng(3)
    for k, spread in ((512, 1.0), (4096, 1e-3), (4096, 1e4)):
        features = rng.integers(-127, 128, size=(600, k), dtype=np.int8)
        features[0] = 127  # a row of the largest values
        features[1] = np.where(np.arange(k) % 2, 127, -127)  # cancelling terms
        features[2] = 0
        scale = rng.uniform(1e-4, 1.0, size=600).astype(np.float32)
        v = (rng.standard_normal(k) * spread).astype(np.float32)
        v[:7] = [1e-9, -30 * spread, 0.5, 0, 2e-3, -2e-3, 7]
        float_path = (features.astype(np.float32) @ v) * scale
        approx, bound = screen.screen(features, scale, v, row_norms(features, scale))
        assert np.all(np.abs(float_path.astype(np.float64) - approx) <= bound)
        assert bound[2] == 0.0 and approx[2] == 0.0
    features = rng.integers(-127, 128, size=(600, 4096), dtype=np.int8)
    ones = np.ones(600, dtype=np.float32)
    approx, bound = screen.screen(features, ones, rng.standard_normal(4096), row_norms(features, ones))
    assert np.median(bound / np.abs(approx)) < 0.05  # a tight screen on Gaussian queries, not a trivial one


def test_a_zero_query_scores_nothing():
    features = np.ones((5, 8), dtype=np.int8)
    ones = np.ones(5, dtype=np.float32)
    approx, bound = screen.screen(features, ones, np.zeros(8, dtype=np.float32), row_norms(features, ones))
    assert approx.tolist() == [0.0] * 5 and bound.tolist() == [0.0] * 5


def _tiled(index: AttributionIndex, rows: int, seed: int) -> AttributionIndex:
    """The index's rows repeated to `rows` rows, each copy's features nudged so that no two rows are equal."""
    reps = -(-rows // index.size)
    rng = np.random.default_rng(seed)
    features = np.tile(index.features, (reps, 1))[:rows].astype(np.int16)
    features += rng.integers(-3, 4, size=features.shape, dtype=np.int16)
    index = dataclasses.replace(
        index,
        row_ids=np.arange(1, rows + 1, dtype=np.int64),
        features=np.clip(features, -127, 127).astype(np.int8),
        row_scale=np.tile(index.row_scale, reps)[:rows],
        _norms=None,
        _h_norms=None,
    )
    index.null_floor = calibrate_floor(index)
    return index


def _queries(model, index, datanet, tokenizer):
    queries = [index.query_features(model, prompt, answer) for prompt, answer, _ in datanet.queries[:8]]
    for prompt, answer in (("Q: what colour is the sky?\nA: ", "blue and bright today"),
                           ("Q: code of Zanemo?\nA: ", "x9y2")):  # fmt: skip
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        queries.append(index.query_features(model, prompt_ids, answer_ids))
    return queries + list(index.null_features[:4])


@pytest.mark.skipif(not screen.available(), reason="numba is in requirements.txt")
@pytest.mark.parametrize("method", ["fisher", "dot", "cosine"])
def test_screened_attributions_equal_the_float_path_over_every_row(planted, tokenizer, monkeypatch, method):
    """On 5,000 rows (above MIN_ROWS: the screen applies) the shares, the rows credited and the top rows are the
    float path's, for planted facts, unrelated answers and permutation nulls; and most rows are only screened."""
    _, model, small, datanet = planted
    index = _tiled(small, 5000, seed=1)
    meta = {int(row_id): (int(row_id) % 5, int(row_id)) for row_id in index.row_ids}
    floor = index.null_floor[method]
    rescored = []
    for phi in _queries(model, small, datanet, tokenizer):
        with monkeypatch.context() as patch:
            _full_path(patch)
            full = attribute_features(index, None, phi, [5, 6], meta, method=method)
        fast = attribute_features(index, None, phi, [5, 6], meta, method=method)
        assert fast.row_shares.keys() == full.row_shares.keys()
        assert [r for r, _ in fast.top_rows] == [r for r, _ in full.top_rows]
        assert [s for _, s in fast.top_rows] == pytest.approx(
            [s for _, s in full.top_rows], rel=1e-5
        )  # float32 rounding
        assert fast.contributor_shares == pytest.approx(full.contributor_shares, rel=1e-5, abs=1e-9)
        assert fast.unattributed == pytest.approx(full.unattributed, abs=1e-6)
        scores, count = screen.screened_scores(index, phi, method, floor, 10)
        rescored.append(count)
        exact = index.scores(phi, method)
        relevance = index.relevance(exact, phi, method)
        assert count >= int((relevance > floor).sum())  # every credited row went through the float path
    assert sum(c > 0 for c in rescored) >= 8  # the planted facts' rows were scored exactly
    assert np.median(rescored) < 0.2 * index.size  # the screen decided the rest


def test_small_indexes_and_stacks_of_queries_take_the_float_path(planted):
    _, _, index, _ = planted
    phi = index.null_features[0]
    scores, count = screen.screened_scores(index, phi, "fisher", index.null_floor["fisher"], 10)
    assert count == index.size < screen.MIN_ROWS
    np.testing.assert_array_equal(scores, index.scores(phi, "fisher"))


def test_scores_of_rows_equal_the_scores_of_every_row(planted):
    _, _, index, _ = planted
    rows = np.array([5, 0, 17, index.size - 1])
    phi = index.null_features[1]
    for method in ("fisher", "dot", "cosine"):
        np.testing.assert_allclose(index.scores_of_rows(rows, phi, method), index.scores(phi, method)[rows], rtol=1e-6)
