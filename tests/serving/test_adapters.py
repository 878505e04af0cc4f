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
        for entry in list(cache._entries.values()):
            cache._evict(entry)


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
        for entry in list(cache._entries.values()):
            cache._evict(entry)


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
        for entry in list(cache._entries.values()):
            cache._evict(entry)


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
    with pytest.raises(AdapterLoadError, match="does not fit this base model"):
        adapters.ensure(wrong_shape)

    assert len(adapters) == 0
    assert adapters.loads == 0
    names = set(warm.peft_model.peft_config) if warm.peft_model is not None else set()
    assert names == set()
