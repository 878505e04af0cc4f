import numpy as np
import pytest
import torch

from attribution.engine import AttributionIndex, EngineError, build_index, lora
from attribution.engine.index import NULL_QUERIES, null_queries, pass_limits
from attribution.engine.lora import reference_row_gradient, row_loss
from attribution.engine.projection import Projector, allocate


def test_planted_facts_rank_their_owner_first(planted):
    report, *_ = planted
    print(f"planted-fact top-1 over {report.facts} facts: {report.top1} (recall {report.recall:.2f})")
    assert report.facts == 25
    assert report.recall >= 0.9  # the fine-tune really learned the facts; attribution is only as good as that
    assert report.top1["fisher"] >= 0.96


def test_save_load_round_trip_gives_identical_scores(planted, tmp_path):
    _, model, index, datanet = planted
    path = index.save(tmp_path / "index.safetensors")
    loaded = AttributionIndex.load(path)
    prompt, answer, _ = datanet.queries[0]
    phi = loaded.query_features(model, prompt, answer)
    np.testing.assert_array_equal(phi, index.query_features(model, prompt, answer))
    for method in ("fisher", "dot", "cosine"):
        np.testing.assert_array_equal(loaded.scores(phi, method), index.scores(phi, method))
    assert loaded.params() == index.params()
    assert loaded.null_floor == index.null_floor
    np.testing.assert_array_equal(loaded.null_features, index.null_features)
    assert loaded.features.dtype == np.int8
    assert loaded.features.shape == (110, index.k)
    np.testing.assert_array_equal(loaded.row_ids, np.arange(1, 111))


def test_load_refuses_a_file_that_is_not_an_index(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, dtype=np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EngineError, match="not an attribution index"):
        AttributionIndex.load(tmp_path / "other.safetensors")
    with pytest.raises(EngineError, match="No attribution index at"):
        AttributionIndex.load(tmp_path / "missing.safetensors")


def _log_p(model, prompt, answer):
    ids = torch.as_tensor([list(prompt) + list(answer)])
    labels = torch.as_tensor([[-100] * len(prompt) + list(answer)])
    with torch.no_grad():
        return -float(row_loss(model(input_ids=ids).logits, labels)[0])


def _sgd_step_on_row(model, row, lr):
    _, ids, labels = row
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    model.eval()
    loss = row_loss(model(input_ids=torch.as_tensor([ids])).logits, torch.as_tensor([labels]))[0]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p -= lr * g
    return params, before


@pytest.mark.parametrize("method", ["fisher", "dot"])
def test_positive_score_means_training_on_the_row_made_the_answer_more_likely(planted, method):
    _, model, index, datanet = planted
    prompt, answer, _ = datanet.queries[3]
    scores = index.scores(index.query_features(model, prompt, answer), method)
    for row_no, expect_up in ((int(np.argmax(scores)), True), (int(np.argmin(scores)), False)):
        assert bool(scores[row_no] > 0) is expect_up
        start = _log_p(model, prompt, answer)
        params, before = _sgd_step_on_row(model, datanet.rows[row_no], lr=1e-3)
        after = _log_p(model, prompt, answer)
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                p.copy_(b)
        assert bool(after > start) is expect_up, (row_no, start, after)


def test_build_reports_progress_and_rejects_bad_rows(planted):
    _, model, _, datanet = planted
    seen = []
    index = build_index(model, datanet.rows[:20], k=512, batch_size=8, on_progress=lambda d, t: seen.append((d, t)))
    # rows and calibration queries share the passes: every pass that holds rows reports, and only rows count
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    assert all(t == 20 for _, t in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})
    assert len(seen) >= 1 + -(-20 // 8)
    assert index.size == 20
    with pytest.raises(EngineError, match="Row 5 has no answer tokens"):
        build_index(model, [(5, [1, 2, 3], [-100, -100, -100])], k=512)
    with pytest.raises(EngineError, match="Row 6: input_ids and labels differ in length"):
        build_index(model, [(6, [1, 2, 3], [-100, 2])], k=512)
    with pytest.raises(EngineError, match="Row ids must be unique"):
        build_index(model, [datanet.rows[0], datanet.rows[0]], k=512)
    with pytest.raises(EngineError, match="No training rows"):
        build_index(model, [], k=512)


def test_query_checks(planted):
    _, model, index, _ = planted
    with pytest.raises(EngineError, match="at least one prompt token and one answer token"):
        index.query_features(model, [1, 2], [])
    with pytest.raises(EngineError, match="Unknown score method 'l2'"):
        index.scores(np.zeros(index.k), "l2")
    with pytest.raises(EngineError, match="Query features have 3 dimensions; this index has 2048"):
        index.scores(np.zeros(3))


def test_index_features_equal_per_row_autograd_whatever_the_passes(planted):
    """The build's fast path (rows and calibration queries mixed in token-budget passes, gradients taken at the LoRA
    outputs, projection factored through the activations) stores for every row, and for every calibration query,
    the projected gradient of plain batch-size-1 autograd on the LoRA weights; how the passes are cut changes
    nothing beyond float rounding (and the float16 storage of the rows)."""
    _, model, _, datanet = planted
    rows = datanet.rows[:12]
    longest = max(len(ids) for _, ids, _ in rows)
    small = build_index(model, rows, k=1024, seed=5, batch_size=4, max_tokens=3 * longest)
    large = build_index(model, rows, k=1024, seed=5, batch_size=64)
    projector = small.projector()

    def reference(ids, labels):
        return projector.project([g.unsqueeze(0) for g in reference_row_gradient(model, ids, labels)])[0].numpy()

    for n, (_, ids, labels) in enumerate(rows):
        expected = reference(ids, labels)
        for index in (small, large):  # int8 storage: within half a step (1/254 of the row's largest value)
            np.testing.assert_allclose(index.features32()[n], expected, rtol=0, atol=4.5e-3 * np.abs(expected).max())
    queries = null_queries(rows, NULL_QUERIES, 5)
    assert small.null_features.shape == (NULL_QUERIES, projector.k)
    for n, (ids, labels) in enumerate(queries):
        expected = reference(ids, labels)
        for index in (small, large):
            np.testing.assert_allclose(index.null_features[n], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    for method, floor in small.null_floor.items():
        assert large.null_floor[method] == pytest.approx(floor, rel=1e-3)


def _passes_seen(monkeypatch) -> list[tuple[int, int]]:
    """(rows, padded width) of every gradient pass the engine makes from now on."""
    seen: list[tuple[int, int]] = []
    real = lora._pad

    def spy(batch, pad_id):
        padded = real(batch, pad_id)
        seen.append(tuple(padded[0].shape))
        return padded

    monkeypatch.setattr(lora, "_pad", spy)
    return seen


def _short_rows(datanet, n: int):
    return [(i, *datanet.rows[i % len(datanet.rows)][1:]) for i in range(n)]


def test_rows_held_at_once_do_not_grow_with_the_number_of_short_rows(planted, monkeypatch):
    """The index build's passes are bounded by its memory budget (rows and padded tokens per pass), so 400 short
    rows are held no more at once than 40; without a budget, a token budget alone lets a pass take every row."""
    _, model, _, datanet = planted
    matrices = [m for m, _ in lora.lora_modules(model)]
    projector = Projector(matrices, allocate(matrices, 512, "lowrank"), 0, "lowrank")
    budget = 2**20
    max_rows, max_tokens = pass_limits(model, projector, budget)
    seen = _passes_seen(monkeypatch)
    largest = {}
    for n in (40, 400):
        seen.clear()
        build_index(model, _short_rows(datanet, n), k=512, batch_size=8, max_tokens=10**9, memory_budget=budget)
        assert sum(rows for rows, _ in seen) == n + NULL_QUERIES
        assert all(rows <= max_rows and (rows * width <= max_tokens or rows == 1) for rows, width in seen)
        largest[n] = max(rows for rows, _ in seen)
    assert largest[40] == largest[400] < 40
    seen.clear()
    build_index(model, _short_rows(datanet, 400), k=512, batch_size=8, max_tokens=10**9)
    assert max(rows for rows, _ in seen) == 400 + NULL_QUERIES  # the old packing: one pass held every row


def test_pass_limits_count_each_rows_gradient_in_dense_projection(planted):
    _, model, _, _ = planted
    matrices = [m for m, _ in lora.lora_modules(model)]
    lowrank = Projector(matrices, allocate(matrices, 512, "lowrank"), 0, "lowrank")
    dense = Projector(matrices, allocate(matrices, 512, "dense"), 0, "dense")
    budget = 2**22
    lowrank_rows, lowrank_tokens = pass_limits(model, lowrank, budget)
    dense_rows, _ = pass_limits(model, dense, budget)
    largest = max(m.size for m in matrices)
    assert dense_rows == budget // (4 * 3 * dense.k + 4 * 2 * largest)
    assert lowrank_rows == budget // (4 * 3 * lowrank.k)
    assert lowrank_tokens >= 64
    assert pass_limits(model, lowrank, 0) == (1, 64)  # never below one short row


def test_a_budgeted_build_stores_the_same_features(planted):
    _, model, _, datanet = planted
    rows = datanet.rows[:24]
    free = build_index(model, rows, k=1024, seed=2, batch_size=64)
    bounded = build_index(model, rows, k=1024, seed=2, batch_size=64, memory_budget=2**20)
    np.testing.assert_array_equal(free.row_ids, bounded.row_ids)
    for n in range(len(rows)):
        expected = free.features32()[n]  # int8: float rounding may move a value to the next step (1/127 of the max)
        np.testing.assert_allclose(bounded.features32()[n], expected, rtol=0, atol=1.01 * np.abs(expected).max() / 127)
    scale = np.abs(free.null_features).max()  # float rounding of other pass groupings, as for the rows above
    np.testing.assert_allclose(bounded.null_features, free.null_features, rtol=1e-4, atol=1e-5 * scale)
