import pytest

from modelfactory.serving import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    Engine,
    GenerationRequest,
    IncrementalDecoder,
    InvalidRequest,
)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def requests(adapter_dirs, names, **kwargs):
    prompts = [CHAT, "Contributors upload rows;", [{"role": "user", "content": "datanet?"}]]
    return [
        GenerationRequest(
            prompt=prompts[i % len(prompts)],
            adapter=adapter_dirs[name] if name else None,
            max_new_tokens=kwargs.get("max_new_tokens", 10),
        )
        for i, name in enumerate(names)
    ]


NAMES = [None, "qv8", "qv4", "all8", None, "mlp2", "qv8b", "qv8"]


@pytest.mark.parametrize("mode", ["gathered", "peft"])
def test_mixed_batch_equals_each_adapter_alone(warm, adapters, adapter_dirs, mode):
    alone_engine = Engine(warm, adapters, lora_mode="switch")
    alone = [alone_engine.generate([r])[0] for r in requests(adapter_dirs, NAMES)]
    engine = Engine(warm, adapters, lora_mode=mode)
    mixed = engine.generate(requests(adapter_dirs, NAMES))
    assert [r.token_ids for r in mixed] == [r.token_ids for r in alone]
    assert [r.text for r in mixed] == [r.text for r in alone]
    assert engine.forward_passes == 10  # one prefill + 9 decode steps for all 8 rows together
    # the adapters really change the output, so equality above is not trivial
    by_name = {name: r.token_ids for name, r in zip(NAMES, alone, strict=True)}
    assert len({by_name[n] for n in ["qv8", "all8", "mlp2", "qv8b"]}) == 4


def test_base_rows_in_mixed_batch_equal_base_only(warm, adapters, adapter_dirs):
    engine = Engine(warm, adapters)
    base_only = engine.generate(requests(adapter_dirs, [None, None]))
    mixed = engine.generate(requests(adapter_dirs, [None, "all8", None, "qv8"])[:4])
    # rows 0 and 2 are base rows with prompts 0 and 2; regenerate base-only with the same prompts
    base_same_prompts = engine.generate([requests(adapter_dirs, [None, None, None])[i] for i in (0, 2)])
    assert mixed[0].token_ids == base_only[0].token_ids
    assert [mixed[0].token_ids, mixed[2].token_ids] == [r.token_ids for r in base_same_prompts]


def test_usage_counts_and_length(warm, adapters, adapter_dirs):
    engine = Engine(warm, adapters)
    request = GenerationRequest(prompt=CHAT, adapter=adapter_dirs["qv8"], max_new_tokens=7)
    result = engine.generate([request])[0]
    prompt_ids = engine.prepare(GenerationRequest(prompt=CHAT)).prompt_ids
    assert result.prompt_tokens == len(prompt_ids)
    assert result.completion_tokens == len(result.token_ids)
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens
    if result.finish_reason == FINISH_LENGTH:
        assert result.completion_tokens == 7


def test_streaming_deltas_concatenate_to_final_text(warm, adapters, adapter_dirs):
    engine = Engine(warm, adapters)
    streams = {0: [], 1: []}
    batch = [
        GenerationRequest(prompt=CHAT, adapter=adapter_dirs["all8"], max_new_tokens=12, on_delta=streams[0].append),
        GenerationRequest(prompt="The capital", max_new_tokens=12, temperature=0.9, seed=3, on_delta=streams[1].append),
    ]
    results = engine.generate(batch)
    for i, result in enumerate(results):
        assert "".join(streams[i]) == result.text
        assert result.text == warm.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)


def test_sampling_is_reproducible_with_a_seed(warm, adapters):
    engine = Engine(warm, adapters)

    def run():
        request = GenerationRequest(prompt="The", max_new_tokens=8, temperature=1.2, top_p=0.9, seed=11)
        return engine.generate([request])[0].token_ids

    assert run() == run()


def test_incremental_decoder_never_splits_multibyte_characters(warm):
    text = "héllo € 日本"
    ids = warm.tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(warm.tokenizer)
    deltas = [decoder.push(token) for token in ids]
    deltas.append(decoder.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert len(ids) > len(text.split())  # the tiny tokenizer splits characters into byte tokens


def test_cancellation_mid_stream_stops_that_request_only(warm, adapters, adapter_dirs):
    engine = Engine(warm, adapters)
    deltas = []
    victim = GenerationRequest(prompt=CHAT, adapter=adapter_dirs["qv4"], max_new_tokens=12)

    def on_delta(delta):
        deltas.append(delta)
        if len(deltas) == 3:
            victim.cancel()

    victim.on_delta = on_delta
    other = GenerationRequest(prompt=CHAT, adapter=adapter_dirs["all8"], max_new_tokens=12)
    reference = engine.generate([GenerationRequest(prompt=CHAT, adapter=adapter_dirs["all8"], max_new_tokens=12)])
    cancelled, survivor = engine.generate([victim, other])
    assert cancelled.finish_reason == FINISH_CANCELLED
    assert cancelled.completion_tokens == len(cancelled.token_ids) == 3  # one token per delta for this adapter
    assert "".join(deltas) == cancelled.text
    assert survivor.token_ids == reference[0].token_ids
    assert adapters._entries[str(adapter_dirs["qv4"].resolve())].pins == 0  # the cancelled row released its adapter


def test_a_failing_stream_consumer_cancels_only_its_row(warm, adapters, adapter_dirs):
    engine = Engine(warm, adapters)

    def broken(delta):
        raise BrokenPipeError("client went away")

    gone = GenerationRequest(prompt=CHAT, adapter=adapter_dirs["qv4"], max_new_tokens=12, on_delta=broken)
    other = GenerationRequest(prompt=CHAT, max_new_tokens=12)
    first, second = engine.generate([gone, other])
    assert first.finish_reason == FINISH_CANCELLED
    assert first.completion_tokens == 1
    assert second.token_ids == engine.generate([GenerationRequest(prompt=CHAT, max_new_tokens=12)])[0].token_ids


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"prompt": ""}, "empty_prompt", "The prompt is empty."),
        ({"prompt": "   "}, "empty_prompt", "The prompt is empty."),
        ({"prompt": []}, "empty_prompt", "The prompt is empty: give text or a list of chat messages."),
        (
            {"prompt": [{"role": "user", "content": " "}]},
            "empty_prompt",
            "The prompt is empty: every message has empty content.",
        ),
        (
            {"prompt": [{"role": "robot", "content": "hi"}]},
            "invalid_messages",
            "Message 0 has role 'robot'; use one of system, user, assistant.",
        ),
        ({"prompt": "hi", "temperature": -0.5}, "invalid_temperature", "temperature must be a number >= 0"),
        ({"prompt": "hi", "max_new_tokens": 65}, "invalid_max_new_tokens", "from 1 to 64 (got 65)"),
        ({"prompt": "hi", "max_new_tokens": 0}, "invalid_max_new_tokens", "from 1 to 64 (got 0)"),
        ({"prompt": "hi", "top_p": 0}, "invalid_top_p", "top_p must be > 0 and <= 1 (got 0)"),
    ],
)
def test_bad_input_raises_a_clear_error(warm, adapters, kwargs, code, message):
    engine = Engine(warm, adapters, max_new_tokens_cap=64)
    with pytest.raises(InvalidRequest) as info:
        engine.generate(
            [GenerationRequest(prompt="fine", max_new_tokens=4), GenerationRequest(**{"max_new_tokens": 4, **kwargs})]
        )
    assert info.value.code == code
    assert message in str(info.value)
    assert engine.forward_passes == 0  # nothing ran: the whole batch is validated first
    assert engine.active == 0


def test_prompt_over_the_context_length_says_the_numbers(warm, adapters):
    engine = Engine(warm, adapters, max_new_tokens_cap=64)
    long_prompt = "Paris " * 300
    count = len(warm.tokenizer(long_prompt)["input_ids"])
    assert count >= warm.context_length == 256
    with pytest.raises(InvalidRequest, match=f"The prompt is {count} tokens long; this model's context length is 256"):
        engine.prepare(GenerationRequest(prompt=long_prompt, max_new_tokens=1))
    near = "Paris " * 220
    near_count = len(warm.tokenizer(near)["input_ids"])
    assert 192 < near_count < 256  # fits alone, not with 64 new tokens
    engine.prepare(GenerationRequest(prompt=near, max_new_tokens=256 - near_count))
    with pytest.raises(InvalidRequest) as info:
        engine.prepare(GenerationRequest(prompt=near, max_new_tokens=64))
    assert info.value.code == "prompt_too_long"
    assert str(info.value) == (
        f"The prompt ({near_count} tokens) plus max_new_tokens (64) is {near_count + 64} tokens, over this model's "
        f"context length of 256 tokens: ask for at most {256 - near_count} new tokens or shorten the prompt."
    )


def test_unknown_adapter_folder_is_a_clear_error(warm, adapters, tmp_path):
    from modelfactory.serving import AdapterLoadError

    engine = Engine(warm, adapters)
    with pytest.raises(AdapterLoadError, match="Adapter folder not found"):
        engine.prepare(GenerationRequest(prompt="hi", adapter=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterLoadError, match="has no adapter_config.json"):
        engine.prepare(GenerationRequest(prompt="hi", adapter=tmp_path / "empty"))
    assert len(adapters) == 0


class _BytesTokenizer:
    """Each id is one character; decodes like a tokenizer that can emit NUL."""

    def decode(self, ids, **kwargs):
        return "".join(chr(i) for i in ids)


def test_incremental_decoder_streams_a_nul_as_the_replacement_character():
    decoder = IncrementalDecoder(_BytesTokenizer())
    deltas = [decoder.push(token) for token in [ord("a"), 0, ord("b"), 0]]
    deltas.append(decoder.flush())
    assert deltas == ["a", "", "\ufffdb", "", "\ufffd"]
    assert decoder.text == "a\ufffdb\ufffd"
