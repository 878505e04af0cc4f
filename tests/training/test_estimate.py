import json

from modelfactory.training.estimate import estimate_run, lora_parameters, measure_tokens_per_s
from modelfactory.training.model_files import inspect_model_dir

from .conftest import CPU, fresh_model, hyperparameters


def test_estimate_counts_steps_tokens_and_scales(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    params = inspect_model_dir(tiny_dir).parameters
    hp = hyperparameters(batch_size=4, grad_accum=2, epochs=3)
    counts = [100] * 40 + [200] * 10
    estimate = estimate_run(counts, hp, device_type="cpu", parameters=params, model_config=config, tokens_per_s=1000.0)
    assert (estimate.steps, estimate.tokens, estimate.method) == (21, 18000, "measured")  # 13 batches -> 7 steps
    assert estimate.seconds == 18.0
    assert estimate.peak_memory_bytes > params * 4
    bigger = estimate_run(counts, {**hp, "batch_size": 16}, device_type="cpu", parameters=params, model_config=config)
    assert bigger.method == "constant" and bigger.seconds > 0
    assert bigger.peak_memory_bytes > estimate.peak_memory_bytes


def test_lora_parameter_count_matches_peft(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    hp = hyperparameters(rank=8, target_modules="all_linear")
    model, _ = fresh_model(tiny_dir, hp)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (
        lora_parameters(
            config, rank=8, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
        == trainable
    )


def test_calibration_measures_a_positive_rate_and_leaves_no_gradients(tiny_dir):
    model, _ = fresh_model(tiny_dir, hyperparameters())
    rate = measure_tokens_per_s(model, device=CPU, seq_len=32, batch_size=2, repeats=1)
    assert rate > 0
    assert all(p.grad is None for p in model.parameters())


def test_several_devices_divide_the_time_not_the_memory(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    params = inspect_model_dir(tiny_dir).parameters
    hp = hyperparameters(batch_size=4, grad_accum=2, epochs=3)
    counts = [100] * 40 + [200] * 10
    one = estimate_run(counts, hp, device_type="cuda", parameters=params, model_config=config, tokens_per_s=1000.0)
    four = estimate_run(
        counts, hp, device_type="cuda", parameters=params, model_config=config, tokens_per_s=1000.0, devices=4
    )
    assert (one.seconds, four.seconds) == (18.0, 4.5)
    assert (one.devices, four.devices, four.tokens_per_s) == (1, 4, 4000.0)
    assert (four.steps, four.tokens, four.peak_memory_bytes) == (one.steps, one.tokens, one.peak_memory_bytes)
