import logging

import pytest

from modelfactory.serving import AdapterCache, AdapterLoadError, Engine, GenerationRequest


def key(path):
    return str(path.resolve())


def test_lru_eviction_order_and_capacity(warm, adapter_dirs, caplog):
    cache = AdapterCache(warm, max_adapters=3)
    caplog.set_level(logging.INFO, logger="modelfactory.serving.adapters")
    try:
        for name in ["qv8", "qv4", "all8"]:
            cache.ensure(adapter_dirs[name])
        assert cache.keys() == [key(adapter_dirs[n]) for n in ["qv8", "qv4", "all8"]]
        cache.ensure(adapter_dirs["qv8"])  # a hit makes qv8 the most recently used
        assert (cache.loads, cache.hits, cache.evictions) == (3, 1, 0)
        cache.ensure(adapter_dirs["mlp2"])  # evicts qv4, the least recently used
        assert cache.keys() == [key(adapter_dirs[n]) for n in ["all8", "qv8", "mlp2"]]
        assert cache.evictions == 1
        assert set(warm.peft_model.peft_config) == {cache.name_of(adapter_dirs[n]) for n in ["all8", "qv8", "mlp2"]}
        messages = [r.getMessage() for r in caplog.records]
        assert sum(m.startswith("adapter loaded: ") and m.endswith(" ms") for m in messages) == 4
        assert any(m.startswith(f"adapter evicted: {key(adapter_dirs['qv4'])} ") for m in messages)
    finally:
        cache.clear()


def test_byte_capacity_and_pinned_adapters_are_not_evicted(warm, adapter_dirs):
    cache = AdapterCache(warm, max_adapters=None, max_bytes=30_000)
    try:
        pinned = cache.acquire(adapter_dirs["qv8"])  # 14336 bytes in float32
        cache.ensure(adapter_dirs["qv4"])  # 7168: 21504 in all
        cache.ensure(adapter_dirs["mlp2"])  # 9216 more would be 30720 > 30000: evicts qv4, not the pinned qv8
        assert cache.keys() == [key(adapter_dirs["qv8"]), key(adapter_dirs["mlp2"])]
        assert cache.nbytes == 14336 + 9216
        big = cache.acquire(adapter_dirs["all8"])  # 65536 alone is over capacity: only unpinned adapters go
        assert cache.keys() == [key(adapter_dirs["qv8"]), key(adapter_dirs["all8"])]
        cache.release(pinned)  # over capacity and unpinned now: shrinks back
        assert cache.keys() == [key(adapter_dirs["all8"])]
        cache.release(big)
        assert cache.keys() == []
        assert cache.evictions == 4
        with pytest.raises(ValueError, match="is not pinned"):
            cache.release(pinned)
    finally:
        cache.clear()


def test_generation_after_eviction_and_reload_is_unchanged(warm, adapter_dirs):
    cache = AdapterCache(warm, max_adapters=1)
    try:
        engine = Engine(warm, cache)
        request = lambda: GenerationRequest(prompt="The capital", adapter=adapter_dirs["all8"], max_new_tokens=8)  # noqa: E731
        first = engine.generate([request()])[0].token_ids
        engine.generate([GenerationRequest(prompt="The capital", adapter=adapter_dirs["qv8"], max_new_tokens=2)])
        assert cache.keys() == [key(adapter_dirs["qv8"])]
        assert engine.generate([request()])[0].token_ids == first
        assert cache.loads == 3
    finally:
        cache.clear()


def test_bad_adapter_files_are_clear_errors_and_leave_nothing_behind(warm, adapters, adapter_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapter_dirs["qv8"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors cannot be read"):
        adapters.ensure(broken)

    not_lora = tmp_path / "ia3"
    shutil.copytree(adapter_dirs["qv8"], not_lora)
    (not_lora / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(AdapterLoadError, match="is a IA3 adapter; only LoRA adapters are served"):
        adapters.ensure(not_lora)

    wrong_shape = tmp_path / "wrong"
    shutil.copytree(adapter_dirs["qv8"], wrong_shape)
    config = (wrong_shape / "adapter_config.json").read_text().replace('"r": 8', '"r": 5')
    (wrong_shape / "adapter_config.json").write_text(config)
    good = adapters.ensure(adapter_dirs["qv8"])  # wraps q_proj/v_proj, so the next load takes the direct path
    with pytest.raises(AdapterLoadError) as info:
        adapters.ensure(wrong_shape)
    assert info.value.code == "adapter_mismatch"
    assert str(info.value) == (
        f"{wrong_shape}: base_model.model.model.layers.0.self_attn.q_proj has LoRA shapes (8, 64) and (64, 8); "
        "this base model with r=5 needs (5, 64) and (64, 5)."
    )

    assert adapters.keys() == [key(adapter_dirs["qv8"])]
    assert adapters.loads == 1
    assert set(warm.peft_model.peft_config) == {good}  # the failed adapter left nothing in the model
    layers = [m for m in warm.peft_model.modules() if hasattr(m, "lora_A")]
    assert all(set(m.lora_A) <= {good} and set(m.scaling) <= {good} for m in layers)


def test_direct_load_gives_the_same_outputs_as_peft_from_pretrained(warm, adapters, adapter_dirs, tiny_base, caplog):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modelfactory.serving.lora import LoraRunner

    caplog.set_level(logging.INFO, logger="modelfactory.serving.adapters")
    adapters.ensure(adapter_dirs["all8"])  # peft inject: wraps every linear layer
    runner = LoraRunner(warm, adapters, mode="switch")
    ids = torch.tensor([[5, 17, 42, 99, 7, 250]])
    for name in ["qv8", "mlp2", "qv4"]:
        loaded = adapters.ensure(adapter_dirs[name])
        with torch.inference_mode():
            ours = runner.forward([loaded], input_ids=ids).logits
        reference_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter_dirs[name])
        with torch.inference_mode():
            reference = reference_model.eval()(input_ids=ids).logits
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("adapter loaded")]
    # the first load wraps the layers (unless an earlier test did); the next three reuse them
    assert [", direct)" in m for m in messages[1:]] == [True, True, True]
