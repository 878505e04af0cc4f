"""Fluent calibration of the noise floor (rule poa-3): the model's own greedy answers to everyday prompts are scored
at build time beside the permutation nulls, stored with their token ids (an auditor regenerates and rescores them),
and the floor is the higher of the two quantiles. An index of the previous format still loads and attributes under
its own rule, "poa-2"."""

import dataclasses

import numpy as np
import pytest

from attribution.engine import (
    CALIBRATION_PROMPTS,
    METHOD_VERSIONS,
    AttributionIndex,
    EngineError,
    attribute,
    build_index,
    calibration_inputs,
    calibration_prompt_ids,
)
from attribution.engine.calibration import CALIBRATION_MAX_NEW_TOKENS, fluent_queries, prompts_digest
from attribution.engine.index import NULL_QUERIES, best_relevance, project_rows

PROMPTS = 6


@pytest.fixture(scope="module")
def calibrated(planted, tokenizer):
    _, model, _, datanet = planted
    prompts = calibration_prompt_ids(tokenizer, CALIBRATION_PROMPTS[:PROMPTS])
    info = {"prompts": PROMPTS, "decoding": "greedy"}
    index = build_index(
        model,
        datanet.rows,
        k=2048,
        pad_id=tokenizer.pad_token_id,
        calibration_prompts=prompts,
        eos_ids=[tokenizer.eos_token_id],
        calibration=info,
    )
    return model, index, datanet, prompts


def test_the_calibration_queries_are_the_models_greedy_answers_to_the_prompts(calibrated, tokenizer):
    model, index, _, prompts = calibrated
    assert len(index.fluent_queries) == PROMPTS and index.fluent_features.shape == (PROMPTS, index.k)
    for prompt, (ids, labels) in zip(prompts, index.fluent_queries, strict=True):
        answer = ids[len(prompt) :]
        assert ids[: len(prompt)] == prompt and labels == [-100] * len(prompt) + answer
        assert 1 <= len(answer) <= CALIBRATION_MAX_NEW_TOKENS
        # as the serving engine records an answer, without its end token; an answer that ends at once is the end
        # token alone (a query needs one answer token)
        assert answer == [tokenizer.eos_token_id] or tokenizer.eos_token_id not in answer
    # the prompts as the product records a question: the chat template with the assistant turn open
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CALIBRATION_PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    assert prompts[0] == tokenizer(text, add_special_tokens=False)["input_ids"]
    # an auditor regenerates the same tokens (greedy) and recomputes the same features from them
    assert fluent_queries(model, prompts, eos_ids=[tokenizer.eos_token_id]) == index.fluent_queries
    again = project_rows(model, index.fluent_queries, index.projector())
    np.testing.assert_allclose(again, index.fluent_features, rtol=1e-4, atol=1e-5 * np.abs(again).max())


def test_the_floor_is_the_higher_quantile_of_the_permutation_and_the_fluent_queries(calibrated):
    _, index, _, _ = calibrated
    for method in ("fisher", "dot", "cosine"):
        permutation = np.quantile(best_relevance(index, index.null_features, method), 0.95)
        fluent = np.quantile(best_relevance(index, index.fluent_features, method), 0.95)
        assert index.null_floor[method] == pytest.approx(max(permutation, fluent), rel=1e-6)
        assert fluent > 0  # the model's own answers are scored: not a placeholder


def test_the_calibration_is_saved_with_the_index_and_recorded_in_its_parameters(calibrated, tmp_path):
    _, index, _, _ = calibrated
    loaded = AttributionIndex.load(index.save(tmp_path / "index.safetensors"))
    assert loaded.fluent_queries == index.fluent_queries
    np.testing.assert_array_equal(loaded.fluent_features, index.fluent_features)
    assert loaded.params() == index.params()
    params = index.params()
    assert params["format"] == "poa-index-4" and params["fluent_queries"] == PROMPTS
    assert params["calibration"] == {"prompts": PROMPTS, "decoding": "greedy"}
    assert loaded.null_floor == index.null_floor


def test_calibration_inputs_name_every_prompt_and_their_digest(planted, tokenizer):
    _, model, _, _ = planted
    inputs = calibration_inputs(model, tokenizer)
    assert len(inputs["calibration_prompts"]) == len(CALIBRATION_PROMPTS) == inputs["calibration"]["prompts"]
    assert inputs["eos_ids"] == [tokenizer.eos_token_id]
    assert inputs["calibration"]["prompts_sha256"] == prompts_digest(CALIBRATION_PROMPTS)
    assert len(set(CALIBRATION_PROMPTS)) == len(CALIBRATION_PROMPTS)
    with pytest.raises(EngineError, match="end-of-sequence token id"):
        fluent_queries(model, inputs["calibration_prompts"][:1], eos_ids=[])
    with pytest.raises(EngineError, match="A calibration prompt has no tokens"):
        fluent_queries(model, [[]], eos_ids=[tokenizer.eos_token_id])


def test_an_index_of_the_previous_format_is_read_and_attributed_under_its_own_rule(planted, tmp_path):
    """An index built before fluent calibration (format poa-index-2) keeps its floor: its answers recompute
    exactly as they were computed (rule poa-2), so their receipts stay verifiable."""
    _, model, index, datanet = planted
    old = dataclasses.replace(index, format="poa-index-2", _projector=None)
    path = old.save(tmp_path / "old.safetensors")
    loaded = AttributionIndex.load(path)
    assert loaded.format == "poa-index-2" and loaded.fluent_queries == []
    assert "fluent_queries" not in loaded.params() and loaded.params()["null_queries"] == NULL_QUERIES
    assert loaded.null_floor == index.null_floor
    prompt, answer, _ = datanet.queries[0]
    before = attribute(index, None, model, prompt, answer, datanet.row_meta)
    after = attribute(loaded, None, model, prompt, answer, datanet.row_meta)
    assert (before.method_version, after.method_version) == ("poa-3", "poa-2") and "poa-2" in METHOD_VERSIONS
    assert after.params["method_version"] == "poa-2" and after.params["index"]["format"] == "poa-index-2"
    assert after.contributor_shares == pytest.approx(before.contributor_shares, abs=1e-9)


def test_an_index_of_an_unknown_format_is_refused_by_name(planted, tmp_path):
    _, _, index, _ = planted
    path = dataclasses.replace(index, format="poa-index-1").save(tmp_path / "older.safetensors")
    with pytest.raises(EngineError, match=r"has index format 'poa-index-1'; this engine reads 'poa-index-2', 'poa-i"):
        AttributionIndex.load(path)


def test_prompts_generated_together_get_the_answers_each_gets_alone(planted, tokenizer):
    """Left padding and the cached keys of a group change no answer: each prompt's greedy tokens equal those of a
    plain loop over that prompt alone, without a cache (prompts of different lengths, groups of 1, 3 and all)."""
    import torch

    _, model, _, _ = planted
    prompts = calibration_prompt_ids(tokenizer)[:5]
    assert len({len(p) for p in prompts}) > 1
    eos = tokenizer.eos_token_id
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(CALIBRATION_MAX_NEW_TOKENS):
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if token == eos:
                    break
                ids.append(token)
            answer = ids[len(prompt) :] or [eos]
            expected.append((list(prompt) + answer, [-100] * len(prompt) + answer))
    for batch in (1, 3, len(prompts)):
        assert fluent_queries(model, prompts, eos_ids=[eos], batch=batch) == expected
