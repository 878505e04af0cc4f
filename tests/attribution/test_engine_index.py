import numpy as np
import pytest
import torch

from attribution.engine import AttributionIndex, EngineError, build_index
from attribution.engine.lora import row_loss


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
    assert loaded.features.dtype == np.float16
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
    assert seen == [(0, 20), (8, 20), (16, 20), (20, 20)]
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
