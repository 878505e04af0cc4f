import json

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from modelfactory.training.estimate import (
    CALIBRATED_FACTOR,
    CALIBRATED_MEMORY_FACTOR,
    ROUGH_FACTOR,
    ROUGH_MEMORY_HIGH,
    ROUGH_MEMORY_LOW,
    PastRun,
    estimate_run,
    lora_parameters,
    measure_tokens_per_s,
    memory_range,
    run_time_range,
)
from modelfactory.training.memory import (
    ALLOCATOR_SLACK,
    StagePeaks,
    activation_bytes_per_token,
    index_bytes_per_token,
    lora_input_widths,
    training_bytes_per_token,
)
from modelfactory.training.model_files import inspect_model_dir
from modelfactory.training.presets import resolve_target_modules
from modelfactory.training.tiny import build_tiny_model_dir

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


def test_a_start_up_measurement_keeps_the_fastest_pass(tiny_dir, monkeypatch):
    model, _ = fresh_model(tiny_dir, hyperparameters())
    ticks = iter([0.0, 10.0, 10.0, 12.0, 12.0, 13.0] * 2)  # warm-up 10 s (not counted), passes of 2 s and 1 s
    monkeypatch.setattr("modelfactory.training.estimate.time.perf_counter", lambda: next(ticks))
    args = {"device": CPU, "seq_len": 8, "batch_size": 2, "repeats": 2}
    assert measure_tokens_per_s(model, **args) == 2 * 16 / 3.0  # all passes: 32 tokens in 3 s
    assert measure_tokens_per_s(model, **args, best=True) == 16 / 1.0  # the fastest pass


def test_run_time_range_without_a_past_run_is_a_wide_rough_range():
    assert run_time_range(tokens=1000, answers=5, past=[], rough_seconds=60.0) == {
        "seconds": 60.0, "low": 60.0 / ROUGH_FACTOR, "high": 60.0 * ROUGH_FACTOR, "method": "rough", "runs": 0
    }  # fmt: skip


def test_run_time_range_from_past_runs_uses_their_medians_and_covers_their_spread():
    past = [PastRun(100.0, 0.5, 10.0), PastRun(80.0, 0.7, 12.0), PastRun(200.0, 0.6, 11.0)]
    got = run_time_range(tokens=10_000, answers=10, past=past, rough_seconds=1.0)
    assert (got["method"], got["runs"]) == ("calibrated", 3)
    assert got["seconds"] == 10_000 / 100.0 + 10 * 0.6 + 11.0  # the medians: 100 tokens/s, 0.6 s an answer, 11 s
    assert got["high"] == got["seconds"] * 1.25 * 1.1  # the slowest ran at 80 tokens/s, 1.25x slower than 100
    assert CALIBRATED_FACTOR < 1.25 * 1.1
    assert got["low"] == got["seconds"] / (2.0 * 1.1)  # the fastest ran at twice the median rate


def test_run_time_range_ignores_runs_without_a_rate():
    got = run_time_range(tokens=100, answers=0, past=[PastRun(0.0, 0.0, 0.0)], rough_seconds=9.0)
    assert got["method"] == "rough"


MB = 2**20


def test_memory_range_without_a_past_run_is_the_formula_widened_and_peaks_at_the_largest_stage():
    got = memory_range({"training": 1000 * MB, "evaluation": 400 * MB, "index": 900 * MB}, past=[])
    assert got == {"bytes": 1000 * MB, "low": int(1000 * MB * ROUGH_MEMORY_LOW),
                   "high": int(1000 * MB * ROUGH_MEMORY_HIGH), "method": "rough", "runs": 0, "stage": "training"}  # fmt: skip


def test_memory_range_scales_each_stage_by_what_past_runs_measured_against_their_estimate():
    past = [PastRun(1.0, 0.0, 0.0, memory_ratios={"training": 1.4, "index": 0.5}),
            PastRun(1.0, 0.0, 0.0, memory_ratios={"training": 1.5, "index": 0.5}),
            PastRun(1.0, 0.0, 0.0, memory_ratios={"training": 1.6, "index": 0.6})]  # fmt: skip
    got = memory_range({"training": 1000 * MB, "index": 1800 * MB}, past=past)
    # training: 1000 MB x the median 1.5; index: 1800 MB x 0.5 = 900 MB, so training is the peak
    assert (got["bytes"], got["stage"], got["method"], got["runs"]) == (1500 * MB, "training", "calibrated", 3)
    assert got["high"] == int(1500 * MB * CALIBRATED_MEMORY_FACTOR)  # 1.6 / 1.5 x 1.05 is within the factor
    assert got["low"] == int(1500 * MB / CALIBRATED_MEMORY_FACTOR)
    outlier = PastRun(1.0, 0.0, 0.0, memory_ratios={"training": 3.0})
    spread = memory_range({"training": 1000 * MB}, past=[*past, outlier])
    assert spread["bytes"] == int(1000 * MB * 1.55)  # the median of 1.4, 1.5, 1.6, 3.0
    assert spread["high"] == pytest.approx(1000 * MB * 3.0 * 1.05, abs=1)  # widened to cover the 3.0 run


def test_memory_range_is_rough_while_one_stage_was_never_measured():
    past = [PastRun(1.0, 0.0, 0.0, memory_ratios={"training": 1.5})]
    got = memory_range({"training": 1000 * MB, "index": 1000 * MB}, past=past)
    assert (got["method"], got["bytes"], got["stage"]) == ("rough", 1500 * MB, "training")
    assert got["high"] == int(1000 * MB * ROUGH_MEMORY_HIGH)  # the unmeasured index may need up to twice its formula
    assert got["low"] == int(1500 * MB / CALIBRATED_MEMORY_FACTOR)


def test_stage_peaks_measure_each_phase_on_its_own():
    peaks = StagePeaks()
    assert peaks.measured  # Linux: /proc/self/clear_refs starts the peak over
    peaks.phase("loading")
    held = bytearray(300 * MB)  # resident: bytearray writes its zeros
    del held
    peaks.phase("evaluating")
    small = bytearray(10 * MB)
    peaks.phase("saving")
    del small
    got = peaks.finish()
    assert set(got) == {"training", "evaluation", "job"}  # saving is no stage of the estimate, only in the job's peak
    assert got["training"] >= got["evaluation"] + 250 * MB  # the 300 MB were freed before the comparison
    assert got["job"] == got["training"]
    assert StagePeaks().finish() == {}  # no phase: nothing measured


def test_the_memory_estimate_is_the_largest_of_training_evaluation_and_index(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    params = inspect_model_dir(tiny_dir).parameters
    hp = hyperparameters(batch_size=4, rank=8, target_modules="all_linear")
    few = estimate_run([100] * 50, hp, device_type="cpu", parameters=params, model_config=config, index_k=4096)
    stages = {"training": few.training_memory_bytes, "evaluation": few.evaluation_memory_bytes,
              "index": few.index_memory_bytes}  # fmt: skip
    assert few.peak_memory_bytes == max(stages.values()) and few.memory_stage == max(stages, key=stages.get)
    assert few.evaluation_memory_bytes < few.training_memory_bytes < few.index_memory_bytes
    # the index holds every row's features (float16 stored, float32 while scoring): 6 bytes x k per row, and k is at
    # least rank x the LoRA matrices (2 per adapted layer)
    k = max(4096, 2 * 7 * config["num_hidden_layers"] * 8)
    many = estimate_run([100] * 5050, hp, device_type="cpu", parameters=params, model_config=config, index_k=4096)
    assert many.index_memory_bytes - few.index_memory_bytes == 5000 * k * 6
    assert many.training_memory_bytes == few.training_memory_bytes  # one micro-batch, whatever the rows
    assert many.peak_memory_bytes == many.index_memory_bytes and many.memory_stage == "index"


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma"])
def test_lora_parameters_equal_peft_for_each_family_layout(model_type, tmp_path):
    """Phi-3's fused qkv_proj and gate_up_proj are counted at their real widths, as peft adapts them."""
    folder = build_tiny_model_dir(tmp_path / model_type, family=model_type)
    config = json.loads((folder / "config.json").read_text())
    targets = resolve_target_modules("all_linear", config["architectures"][0])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=4, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(config, rank=4, targets=targets) == trainable


def test_a_pass_counts_what_the_adapter_keeps_per_token():
    """Training and index passes count each adapted layer's input and output (and, with dropout, the dropped input
    and its mask) on top of the model's activations, with the allocator's slack: on SmolLM2 a Thorough pass of long
    rows held 2.2x the model-only formula, so a budget sized by it let one pass take 18 GB."""
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 100}  # fmt: skip
    base = activation_bytes_per_token(config)
    inputs = 2 * ((4 + 64) + (4 + 64))  # q_proj, v_proj: lora_A reads the layer's input, lora_B the rank
    outputs = 2 * ((64 + 4) + (32 + 4))  # lora_B writes the layer's output (v: 2 kv heads of 16), lora_A the rank
    assert lora_input_widths(config, rank=4, targets=["q_proj", "v_proj"]) == inputs
    plain = training_bytes_per_token(config, rank=4, targets=["q_proj", "v_proj"])
    assert plain == ALLOCATOR_SLACK * (base + 4 * (inputs + outputs))
    dropped = training_bytes_per_token(config, rank=4, targets=["q_proj", "v_proj"], dropout=0.05)
    assert dropped - plain == pytest.approx(ALLOCATOR_SLACK * 5 * inputs)
    assert index_bytes_per_token(config, rank=4, targets=["q_proj", "v_proj"]) == plain
    wide = training_bytes_per_token(config, rank=4, targets=["q_proj", "v_proj", "down_proj"])
    assert wide - plain == pytest.approx(ALLOCATOR_SLACK * 2 * 4 * ((4 + 128) + (64 + 4)))


def test_the_training_estimate_uses_the_passes_per_token_cost(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    params = inspect_model_dir(tiny_dir).parameters
    for preset_like in ({"rank": 8, "target_modules": "attention", "dropout": 0.0},
                        {"rank": 32, "target_modules": "all_linear", "dropout": 0.05}):  # fmt: skip
        hp = hyperparameters(batch_size=4, **preset_like)
        zero = estimate_run([1] * 10, hp, device_type="cpu", parameters=params, model_config=config)
        long = estimate_run([101] * 10, hp, device_type="cpu", parameters=params, model_config=config)
        targets = resolve_target_modules(hp["target_modules"], config["architectures"][0])
        per_token = training_bytes_per_token(config, rank=hp["rank"], targets=targets, dropout=hp["dropout"])
        assert long.training_memory_bytes - zero.training_memory_bytes == pytest.approx(4 * 100 * per_token, abs=2)
