import pytest

from attribution.engine import validation as V
from tests.attribution.conftest import TRAIN


@pytest.mark.slow
def test_linear_datamodeling_score_on_half_subsets(base_dir, tokenizer):
    report = V.linear_datamodeling_score(
        base_dir, tokenizer, subsets=8, config=TRAIN, k=1024, contributors=3, facts_each=3, filler_each=6
    )
    print(f"LDS over {report.subsets} half-subsets, {report.queries} queries: {report.lds} (recall {report.recall})")
    assert report.subsets == 8 and report.queries == 9
    assert report.recall >= 0.9
    assert report.lds["fisher"] >= 0.5
