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
        assert result.method_version == METHOD_VERSION == "poa-3"
        assert all(share > 0 for share in result.contributor_shares.values())
        assert sum(result.contributor_shares.values()) + result.unattributed == pytest.approx(1.0, abs=1e-9)
        assert result.spans == []  # fact answers are 5 tokens, shorter than the 8-token minimum span
        assert [s for _, s in result.top_rows] == sorted((s for _, s in result.top_rows), reverse=True)
        leads += max(result.contributor_shares, key=result.contributor_shares.get) == owner
        assert result.unattributed < 0.5
    assert leads / len(datanet.queries) >= 0.96
    assert json.loads(json.dumps(result.to_dict()))["params"]["index"]["seed"] == 0


def test_unrelated_answers_are_not_credited_while_planted_facts_are(planted, tokenizer):
    """The noise floor is calibrated on permutation-null queries at build time: answers about nothing in the
    datanet (another subject, or a made-up fact nobody contributed) stay unattributed; each planted fact is
    credited, wholly, to its owner."""
    _, model, index, datanet = planted
    with pytest.raises(EngineError, match=r"Query token ids must lie in \[0, "):
        attribute(index, None, model, [1, 2], [len(tokenizer) + 5], datanet.row_meta)
    assert index.params()["null_queries"] == 32 and index.params()["null_alpha"] == 0.05
    assert 0 < index.null_floor["fisher"] < 1
    unrelated = [
        ("Q: what colour is the sky?\nA: ", "blue and bright today"),
        ("Q: capitals?\nA: ", "Paris is the capital of France"),
        ("Q: code of Zanemo?\nA: ", "x9y2"),  # the datanet's question shape, but a fact nobody contributed
    ]
    for prompt, answer in unrelated:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        result = attribute(index, None, model, prompt_ids, answer_ids, datanet.row_meta)
        assert (result.contributor_shares, result.unattributed, result.gradient_attributed) == ({}, 1.0, 0.0)
        phi = index.query_features(model, prompt_ids, answer_ids)
        assert index.relevance(index.scores(phi), phi).max() <= index.null_floor["fisher"]
    for prompt, answer, owner in datanet.queries:
        result = attribute(index, None, model, prompt, answer, datanet.row_meta)
        assert result.unattributed == pytest.approx(0.0, abs=1e-12) and result.gradient_attributed == 1.0
        assert result.contributor_shares[owner] == pytest.approx(max(result.contributor_shares.values()))
        assert result.contributor_shares[owner] >= 0.9


def test_the_noise_floor_is_the_stated_quantile_of_the_null_queries_best_relevance(planted):
    _, _, index, _ = planted
    for method in ("fisher", "dot", "cosine"):
        scores = index.scores(index.null_features, method)
        best = index.relevance(scores, index.null_features, method).max(axis=1)
        assert index.null_floor[method] == pytest.approx(float(np.quantile(best, 0.95)), rel=1e-6)
        assert (best > index.null_floor[method]).sum() == 2  # 5% of 32 null queries clear the floor (by definition)


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


def test_null_draws_do_not_depend_on_how_many_permutations_are_made_at_once(monkeypatch):
    """The null's memory is bounded by NULL_BLOCK values, not by rows x draws; the draws stay those of one seeded
    permutation after another."""
    from attribution.engine import valuation

    values = np.random.default_rng(1).normal(size=300)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 3])))
    running = np.cumsum([rng.permutation(values) for _ in range(50)], axis=1)
    expected = {n: running[:, n - 1] for n in (1, 4, 30)}
    made = []
    broadcast = np.broadcast_to
    monkeypatch.setattr(
        valuation.np, "broadcast_to", lambda x, shape: made.append(shape[0] * shape[1]) or broadcast(x, shape)
    )
    for block, largest in ((2**18, 50 * 300), (900, 900), (1, 300)):  # one permutation at least, whatever the budget
        made.clear()
        monkeypatch.setattr(valuation, "NULL_BLOCK", block)
        null = valuation.null_totals(values, {1, 4, 30}, 50, 7)
        assert set(null) == {1, 4, 30} and all(np.array_equal(null[n], expected[n]) for n in expected)
        assert max(made) == largest and sum(made) == 50 * 300


def test_the_harmful_flag_is_a_permutation_test_with_the_stated_false_positive_rate():
    from attribution.engine.valuation import null_totals, valuation_from_values

    rng = np.random.default_rng(0)
    values = rng.normal(size=400)
    values[:10] -= 3.0  # contribution "bad": ten rows each well below the others
    row_ids = np.arange(1, 401)
    meta = {int(r): RowOwner(f"user-{(r - 1) // 10}", f"c{(r - 1) // 10}") for r in row_ids}
    meta.update({r: RowOwner("user-bad", "bad") for r in range(1, 11)})
    report = valuation_from_values(row_ids, values, meta, method="fisher", draws=1000, seed=4)
    assert report.version == "poa-val-2" and (report.alpha, report.draws) == (0.05, 1000)
    assert report.contributions[0].contribution_id == "bad" and report.contributions[0].harmful
    null = null_totals(values, {10}, 1000, 4)[10]
    assert report.contributions[0].p == (1 + int(np.sum(null <= values[:10].sum()))) / 1001
    # the 39 ordinary contributions are random rows: about alpha (5%) of them are flagged too, here one
    flagged = [c.contribution_id for c in report.contributions if c.harmful]
    assert flagged[0] == "bad" and len(flagged) == 2
    assert all(c.harmful == (c.value < 0 and c.p <= 0.05) for c in report.contributions)
    with pytest.raises(EngineError, match="alpha must lie strictly between 0 and 1"):
        valuation_from_values(row_ids, values, meta, method="fisher", alpha=0.0)
    with pytest.raises(EngineError, match="draws must be at least 1"):
        valuation_from_values(row_ids, values, meta, method="fisher", draws=0)
