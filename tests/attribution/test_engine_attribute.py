import json
import random

import numpy as np
import pytest

from attribution.engine import (
    METHOD_VERSION,
    EngineError,
    RowOwner,
    SpanIndex,
    attribute,
    attribute_features,
    data_valuation,
)
from attribution.engine import validation as V
from tests.attribution.conftest import TRAIN


def test_shares_and_unattributed_sum_to_one_and_the_owner_leads(planted):
    _, model, index, datanet = planted
    spans = SpanIndex.build(datanet.rows)
    leads = 0
    for prompt, answer, owner in datanet.queries:
        result = attribute(index, spans, model, prompt, answer, datanet.row_meta)
        assert result.method_version == METHOD_VERSION == "poa-1"
        assert all(share > 0 for share in result.contributor_shares.values())
        assert sum(result.contributor_shares.values()) + result.unattributed == pytest.approx(1.0, abs=1e-9)
        assert result.spans == []  # fact answers are 5 tokens, shorter than the 8-token minimum span
        assert [s for _, s in result.top_rows] == sorted((s for _, s in result.top_rows), reverse=True)
        leads += max(result.contributor_shares, key=result.contributor_shares.get) == owner
        assert result.unattributed < 0.5
    assert leads / len(datanet.queries) >= 0.96
    assert json.loads(json.dumps(result.to_dict()))["params"]["index"]["seed"] == 0


def test_diffuse_queries_like_the_noise_calibration_are_mostly_unattributed(planted, tokenizer):
    """Fresh random +-1 mixtures of all rows (other draws than the build-time calibration) follow no row: the
    weak-total rule must leave most of their credit unattributed, while planted facts are attributed."""
    _, model, index, datanet = planted
    with pytest.raises(EngineError, match=r"Query token ids must lie in \[0, "):
        attribute(index, None, model, [1, 2], [len(tokenizer) + 5], datanet.row_meta)
    rng = np.random.default_rng(123)
    features = index.features32()
    unattributed = []
    for _ in range(20):
        phi = rng.choice([-1.0, 1.0], size=index.size).astype(np.float32) @ features / np.sqrt(index.size)
        result = attribute_features(index, None, phi, [], datanet.row_meta)
        assert sum(result.contributor_shares.values()) + result.unattributed == pytest.approx(1.0, abs=1e-9)
        unattributed.append(result.unattributed)
    facts = [attribute(index, None, model, p, a, datanet.row_meta).unattributed for p, a, _ in datanet.queries[:5]]
    print(f"unattributed: diffuse queries mean {np.mean(unattributed):.3f}, planted facts {facts}")
    assert np.mean(unattributed) > 0.6
    assert max(facts) < 0.2


def test_an_answer_copying_a_training_row_gives_its_contributor_the_span_credit(planted, tokenizer):
    _, model, index, datanet = planted
    copied = "Paris is the capital of France and Rome is the capital of Italy."
    prompt_ids = tokenizer("Q: capitals?\nA: ", add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(copied, add_special_tokens=False)["input_ids"]
    rows = [*datanet.rows, (500, prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids)]
    meta = {**datanet.row_meta, 500: "contributor-3"}
    result = attribute(index, SpanIndex.build(rows), model, prompt_ids, answer_ids, meta)
    assert result.span_coverage == 1.0
    assert result.spans == [(0, len(answer_ids), 500)]
    assert result.contributor_shares == {"contributor-3": 1.0}
    assert result.unattributed == 0.0


def test_rows_missing_from_row_meta_are_named(planted):
    _, model, index, datanet = planted
    with pytest.raises(EngineError, match="not in row_meta"):
        attribute(index, None, model, *datanet.queries[0][:2], {})


def test_a_contribution_that_teaches_wrong_answers_is_flagged_harmful(base_dir, tokenizer):
    datanet = V.planted_facts(tokenizer, contributors=4, facts_each=4, filler_each=8, seed=3)
    meta = {row_id: RowOwner(owner, f"{owner}/upload") for row_id, owner in datanet.row_meta.items()}
    rng = random.Random(5)
    rows = list(datanet.rows)
    eval_examples = [(p, a) for p, a, owner in datanet.queries if owner == "contributor-0"]
    for prompt, answer in eval_examples:  # the saboteur gives other answers to contributor-0's questions
        wrong = answer[:]
        while wrong == answer:
            wrong = [rng.choice(answer[:-1] + [answer[0] + 1]) for _ in answer[:-1]] + answer[-1:]
        for _ in range(2):
            rows.append((len(rows) + 1, prompt + wrong, [-100] * len(prompt) + wrong))
            meta[len(rows)] = RowOwner("saboteur", "saboteur/upload")
    model = V.load_lora_model(base_dir, TRAIN)
    V.train_lora(model, rows, TRAIN, tokenizer.pad_token_id)
    index = V.build_index(model, rows, k=1024, pad_id=tokenizer.pad_token_id)
    report = data_valuation(index, model, eval_examples, meta)
    by_id = {c.contribution_id: c for c in report.contributions}
    print({c.contribution_id: (round(c.value, 3), round(c.z, 1), c.harmful) for c in report.contributions})
    assert report.contributions[0].contribution_id == "saboteur/upload"
    assert by_id["saboteur/upload"].harmful and by_id["saboteur/upload"].value < 0
    assert by_id["contributor-0/upload"].value > 0 and not by_id["contributor-0/upload"].harmful
    assert [c.contribution_id for c in report.contributions if c.harmful] == ["saboteur/upload"]
    assert len(report.row_values) == len(rows)
    with pytest.raises(EngineError, match="at least one held-out eval example"):
        data_valuation(index, model, [], meta)
