"""The engine's passes hold a bounded amount: an index pass nothing of the one before, valuation a bounded block."""

import weakref

import pytest

from attribution.engine import lora, valuation
from attribution.engine.projection import Projector, allocate


@pytest.mark.parametrize("kind", ["lowrank", "dense"])
def test_the_previous_pass_is_freed_before_the_next_forward(planted, monkeypatch, kind):
    """Held across the next pass (the loop's variables, the generator's locals), the previous pass's inputs and
    output gradients doubled the build's peak memory: SmolLM2 with the Thorough preset, 3 passes of one 582-token row
    added 3.57 GB where one pass adds 1.69 GB (2.09 GB now)."""
    _, model, _, datanet = planted
    matrices = [m for m, _ in lora.lora_modules(model)]
    projector = Projector(matrices, allocate(matrices, 512, kind), 0, kind)
    real = lora._batched_passes
    refs: list[weakref.ref] = []
    alive_at_forward: list[int] = []

    def spy(*args, **kwargs):
        passes = real(*args, **kwargs)
        while True:
            try:
                item = next(passes)
            except StopIteration:
                return
            refs[:] = [weakref.ref(t) for pair in item[1] for t in pair]
            yield item
            del item

    monkeypatch.setattr(lora, "_batched_passes", spy)
    decoder = model.get_base_model().get_decoder()  # what each pass runs first (lora._answer_loss)
    handle = decoder.register_forward_pre_hook(lambda *_: alive_at_forward.append(sum(r() is not None for r in refs)))
    try:
        lora.per_row_features(
            model,
            [(ids, labels) for _, ids, labels in datanet.rows[:12]],
            projector,
            batch_size=4,
            consume=lambda *_: None,
        )
    finally:
        handle.remove()
    assert len(alive_at_forward) == 3 and alive_at_forward[0] == 0  # 3 passes; nothing before the first
    assert alive_at_forward == [0, 0, 0]


def test_data_valuation_scores_a_bounded_block_of_held_out_rows_at_a_time(planted, monkeypatch):
    """The held-out rows are scored QUERY_CHUNK at a time and summed, so the (queries x rows) block does not grow
    with the datanet (at 10,000 short rows, stacking all 1,000 held-out rows took the stage from 1.3 GB to 2.4 GB);
    the values are the same as scoring them all at once."""
    _, model, index, datanet = planted
    queries = [(prompt, answer) for prompt, answer, _ in datanet.queries[:7]]
    meta = {int(row_id): int(row_id) % 5 for row_id in index.row_ids}
    whole = valuation.data_valuation(index, model, queries, meta)
    shapes = []
    real = index.scores
    monkeypatch.setattr(valuation, "QUERY_CHUNK", 3)
    monkeypatch.setattr(index, "scores", lambda phis, method: shapes.append(phis.shape) or real(phis, method))
    parted = valuation.data_valuation(index, model, queries, meta)
    assert [rows for rows, _ in shapes] == [3, 3, 1]
    assert parted.row_values.keys() == whole.row_values.keys()
    scale = max(abs(v) for v in whole.row_values.values())
    for row_id, value in whole.row_values.items():  # float32 scores of either sign, summed in another order
        assert parted.row_values[row_id] == pytest.approx(value, rel=1e-4, abs=1e-4 * scale)
    assert [c.contribution_id for c in parted.contributions] == [c.contribution_id for c in whole.contributions]


def test_the_index_build_gives_back_what_it_freed_before_it_returns(planted, monkeypatch):
    """The job scores the held-out rows (data valuation) right after the build: what the Fisher blocks and the noise
    floor freed must go back to the system first, or the valuation starts from the build's untrimmed heap."""
    from attribution.engine import index as index_module

    _, model, _, datanet = planted
    events: list[str] = []
    for name in ("fisher_blocks", "calibrate_floor", "release_freed"):
        real = getattr(index_module, name)
        monkeypatch.setattr(
            index_module, name, lambda *a, _real=real, _name=name, **kw: events.append(_name) or _real(*a, **kw)
        )
    rows = [(row_id, ids, labels) for row_id, ids, labels in datanet.rows[:12]]
    index_module.build_index(model, rows, k=256, batch_size=4)
    assert events == ["release_freed", "fisher_blocks", "calibrate_floor", "release_freed"]
