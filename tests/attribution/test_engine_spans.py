import numpy as np
import pytest

from attribution.engine import EngineError, SpanIndex
from attribution.engine.spans import suffix_array


def _row(row_id, prompt, answer):
    return (row_id, list(prompt) + list(answer), [-100] * len(prompt) + list(answer))


def test_suffix_array_matches_sorting_the_suffixes():
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 4, size=300)
    seq[[50, 120, 299]] = [-1, -2, -3]
    expected = sorted(range(len(seq)), key=lambda i: seq[i:].tolist())
    assert suffix_array(seq).tolist() == expected


def test_longest_verbatim_spans_are_found_with_every_row_containing_them():
    rows = [
        _row(10, [900, 901], list(range(100, 120))),
        _row(11, [900, 902], list(range(110, 130))),  # shares 110..119 with row 10
        _row(12, list(range(200, 230)), [7, 8, 9]),  # prompt tokens are never indexed
    ]
    index = SpanIndex.build(rows)
    answer = [1, 2] + list(range(104, 126)) + [3] + list(range(200, 212))
    match = index.match(answer, min_len=8)
    found = [(s.start, s.end, s.row_ids) for s in match.spans]
    # 104..119 lies in row 10 (16 tokens), 110..125 in row 11 (16 tokens); the copied prompt 200..211 gives nothing
    assert found == [(2, 18, (10,)), (8, 24, (11,))]
    assert match.token_span.tolist() == [-1, -1] + [0] * 16 + [1] * 6 + [-1] * 13
    assert match.coverage == pytest.approx(22 / 37)
    assert index.rows_containing(range(110, 118)) == (10, 11)
    assert index.match(answer, min_len=17).spans == []


def test_rare_tokens_weigh_more():
    rows = [_row(i, [1], [5, 5, 5, 6]) for i in range(1, 20)] + [_row(99, [1], [7])]
    weights = SpanIndex.build(rows).token_weights([5, 6, 7, 8])
    assert weights[0] < weights[1] < weights[2] < weights[3]


def test_segments_do_not_match_across_rows_or_answer_turns():
    rows = [(1, [1, 2, 3, 4, 5, 6], [-100, 2, 3, -100, 5, 6]), (2, [1, 3], [-100, 3])]
    index = SpanIndex.build(rows)
    assert index.match([2, 3, 5, 6], min_len=2).spans[0].row_ids == (1,)
    assert [(s.start, s.end) for s in index.match([2, 3, 5, 6], min_len=2).spans] == [(0, 2), (2, 4)]
    assert index.match([3, 3], min_len=2).spans == []


def test_span_index_save_load_round_trip(tmp_path):
    rows = [_row(1, [9], list(range(10, 40))), _row(2, [9], list(range(30, 50)))]
    index = SpanIndex.build(rows)
    loaded = SpanIndex.load(index.save(tmp_path / "spans.npz"))
    answer = list(range(20, 45))
    a, b = index.match(answer), loaded.match(answer)
    assert a.spans == b.spans
    np.testing.assert_array_equal(a.token_weight, b.token_weight)
    with pytest.raises(EngineError, match="No span index at"):
        SpanIndex.load(tmp_path / "missing.npz")
    with pytest.raises(EngineError, match="at least 1"):
        index.match(answer, min_len=0)
