"""Per-row controls in the decode loop: stop strings, seed, logit bias, penalties, log-probabilities; each row of a
batch keeps its own."""

import json
import math

import pytest
import torch

from modelfactory.serving import FINISH_LENGTH, FINISH_STOP, Engine, GenerationRequest, InvalidRequest
from modelfactory.serving.controls import StopFilter, adjust_logits

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
OTHER = [{"role": "user", "content": "Tell me about datanets."}]


@pytest.fixture
def run(warm, adapters):
    """Runs requests as one batch on a fresh engine (with the adapter cache other tests may have filled)."""
    return lambda *requests: Engine(warm, adapters).generate(list(requests))


def test_stop_filter_holds_back_what_may_become_a_stop_string():
    stop = StopFilter(["END", "\n\n"])
    assert stop.push("Hello E") == ("Hello ", False)  # "E" may start "END"
    assert stop.push("N") == ("", False)
    assert stop.push("x\n") == ("ENx", False)  # not a stop after all; "\n" may start "\n\n"
    assert stop.push("\nmore") == ("", True)  # the stop text and what follows are dropped
    assert stop.stopped and stop.flush() == ""
    assert StopFilter([]).push("END") == ("END", False)
    tail = StopFilter(["END"])
    assert tail.push("abcEN") == ("abc", False) and tail.flush() == "EN"


def test_stop_ends_the_answer_before_the_stop_text_and_bills_only_up_to_it(warm, run):
    sampled = {"prompt": CHAT, "max_new_tokens": 16, "temperature": 1.0, "seed": 3}  # varied text (greedy repeats)
    free = run(GenerationRequest(**sampled))[0]
    assert free.finish_reason == FINISH_LENGTH and len(free.text) > 6
    stop = next(free.text[p : p + 2] for p in range(2, 12) if free.text.find(free.text[p : p + 2]) == p)
    deltas = []
    stopped, other = run(
        GenerationRequest(**sampled, stop=[stop, "never-seen"], on_delta=deltas.append),
        GenerationRequest(prompt=OTHER, max_new_tokens=16),  # the other row of the batch is not stopped
    )
    expected = free.text[: free.text.find(stop)]
    assert stopped.text == expected and "".join(deltas) == expected
    assert stopped.finish_reason == FINISH_STOP
    decode = lambda ids: warm.tokenizer.decode(list(ids), skip_special_tokens=True)  # noqa: E731
    ids = stopped.token_ids
    assert free.token_ids[: len(ids)] == ids  # the same answer, cut
    assert decode(ids).startswith(expected) and len(decode(ids[:-1])) < len(expected)  # the fewest tokens for it
    assert stopped.completion_tokens == len(ids) < free.completion_tokens
    assert other.finish_reason == FINISH_LENGTH and other.completion_tokens == 16


def test_seed_repeats_a_sampled_answer_alone_or_in_a_batch(warm, run):
    def sampled(seed, temperature=1.5):
        return GenerationRequest(prompt=CHAT, max_new_tokens=12, temperature=temperature, seed=seed)

    first = run(sampled(7))[0]
    assert run(sampled(7))[0].token_ids == first.token_ids
    assert run(GenerationRequest(prompt=OTHER, max_new_tokens=5), sampled(7))[1].token_ids == first.token_ids
    assert run(sampled(8))[0].token_ids != first.token_ids
    assert run(sampled(7, 0.7))[0].token_ids == run(sampled(7, 0.7))[0].token_ids


def test_logit_bias_forces_and_bans_tokens(warm, run):
    greedy = run(GenerationRequest(prompt=CHAT, max_new_tokens=6))[0]
    forced_token = next(t for t in range(100, 200) if t not in greedy.token_ids and t not in warm.eos_token_ids)
    forced = run(GenerationRequest(prompt=CHAT, max_new_tokens=6, logit_bias={forced_token: 100}))[0]
    assert forced.token_ids == (forced_token,) * 6
    banned = run(GenerationRequest(prompt=CHAT, max_new_tokens=6, logit_bias={greedy.token_ids[0]: -100}))[0]
    assert greedy.token_ids[0] not in banned.token_ids


def test_penalties_follow_openais_formula():
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    request = GenerationRequest(prompt="x", presence_penalty=0.5, frequency_penalty=0.25, logit_bias={0: 2.0})
    adjusted = adjust_logits(logits, request, generated=[1, 1, 3])
    # token 1 seen twice: 2 - 2*0.25 - 0.5; token 3 once: 4 - 0.25 - 0.5; token 0 biased by +2
    assert adjusted.tolist() == [3.0, 1.0, 3.0, 3.25]
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]  # the batch's logits are not changed in place


def test_frequency_penalty_changes_a_repetitive_answer(warm, run):
    plain = run(GenerationRequest(prompt=CHAT, max_new_tokens=16))[0]
    penalised = run(GenerationRequest(prompt=CHAT, max_new_tokens=16, frequency_penalty=2.0))[0]
    assert len(set(plain.token_ids)) < len(plain.token_ids)  # the tiny model repeats itself...
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))  # ...less when penalised


def test_logprobs_of_each_generated_token(warm, run):
    result = run(GenerationRequest(prompt=CHAT, max_new_tokens=5, top_logprobs=3))[0]
    assert len(result.logprobs) == result.completion_tokens == 5
    for token_id, entry in zip(result.token_ids, result.logprobs, strict=True):
        top = entry["top_logprobs"]
        assert len(top) == 3 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert (entry["token"], entry["logprob"]) == (top[0]["token"], top[0]["logprob"])  # greedy: the likeliest
        assert entry["token"] == warm.tokenizer.decode([token_id])
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] <= 0 and sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
    assert run(GenerationRequest(prompt=CHAT, max_new_tokens=2))[0].logprobs is None
    only = run(GenerationRequest(prompt=CHAT, max_new_tokens=2, top_logprobs=0))[0].logprobs
    assert [e["top_logprobs"] for e in only] == [[], []]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_stop"),
        ({"stop": [""]}, "invalid_stop"),
        ({"presence_penalty": 2.5}, "invalid_presence_penalty"),
        ({"frequency_penalty": -3}, "invalid_frequency_penalty"),
        ({"logit_bias": {10**9: 1}}, "invalid_logit_bias"),
        ({"logit_bias": {5: 101}}, "invalid_logit_bias"),
        ({"top_logprobs": 21}, "invalid_top_logprobs"),
        ({"seed": -1}, "invalid_seed"),
    ],
)
def test_controls_out_of_range_are_refused(warm, changes, code):
    with pytest.raises(InvalidRequest) as caught:
        Engine(warm).prepare(GenerationRequest(prompt=CHAT, **changes))
    assert caught.value.code == code


YES_NO = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def test_json_schema_constrains_each_row_of_a_batch(warm, run):
    """A tiny random model left to itself writes newlines; constrained, it writes JSON matching the schema, while
    the plain row next to it in the batch is not constrained."""
    constrained, any_object, plain = run(
        GenerationRequest(prompt=CHAT, max_new_tokens=40, json_schema=YES_NO),
        GenerationRequest(prompt=CHAT, max_new_tokens=40, json_schema={"type": "object"}),
        GenerationRequest(prompt=CHAT, max_new_tokens=8),
    )
    assert constrained.finish_reason == FINISH_STOP
    value = json.loads(constrained.text)
    assert set(value) == {"answer", "score"} and value["answer"] in ("yes", "no") and isinstance(value["score"], int)
    assert constrained.text.startswith('{"answer":"')  # compact: no free whitespace
    assert any_object.text.startswith('{"')  # an object, its first key begun (it rambles on to the length cap)
    assert plain.text == "\n" * 8


def test_a_schema_that_cannot_be_used_is_refused(warm, run):
    with pytest.raises(InvalidRequest) as caught:
        Engine(warm).prepare(GenerationRequest(prompt=CHAT, json_schema={"type": "no-such-type"}))
    assert caught.value.code == "invalid_response_format"
    assert caught.value.message.startswith("The JSON schema cannot be used: ")
