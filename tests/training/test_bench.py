"""The training benchmark's synthetic-model mode (the one meant for GPU machines) on CPU with a tiny shape, so
that it does not rot while no GPU is at hand. It checks that the mode runs end to end, not any speed."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_training.py"
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_training", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_config_runs_both_loops_and_prints_the_ratio_last(bench, tiny_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    shape_file = tmp_path / "tiny-shape.json"
    shape_file.write_text(json.dumps(TINY_SHAPE))
    output = tmp_path / "result.json"
    argv = ["--device", "cpu", "--synthetic-config", str(shape_file), "--tokenizer-dir", str(tiny_dir),
            "--steps", "3", "--eval-examples", "2", "--batch-size", "2", "--max-length", "2048",
            "--output", str(output)]  # fmt: skip
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("speedup (our tokens/s / Trainer tokens/s): ")
    result = json.loads(output.read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    expected = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY_SHAPE))
    assert result["parameters"] == sum(p.numel() for p in expected.parameters())
    assert (result["device"], result["hardware"], result["train_examples"]) == ("cpu", "cpu", 6)
    assert (result["trainer_steps"], result["ours_steps"], result["quantization"]) == (3, 3, "none")
    assert result["ours_peak_memory_bytes"] > 0 and result["trainer_peak_memory_bytes"] > 0
    assert result["model"] == f"synthetic-{shape_file}"
    assert result["tokens"] > 0
    assert all(math.isfinite(result[k]) for k in ("trainer_eval_loss", "ours_eval_loss", "speedup"))
    assert result["speedup"] > 0


def test_named_shapes_and_a_bad_name(bench):
    assert bench.synthetic_shape("135m")["num_hidden_layers"] == 30
    assert bench.synthetic_shape("1b")["hidden_size"] == 2048
    assert bench.synthetic_shape("8b")["num_hidden_layers"] == 32
    with pytest.raises(SystemExit, match="'2b' is neither 135m nor 1b nor 8b nor a JSON file"):
        bench.synthetic_shape("2b")


def test_shape_parameters_match_the_model_and_llama_8b():
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.synthetic_model import SYNTHETIC, shape_parameters

    for tied in (True, False):
        shape = {**TINY_SHAPE, "tie_word_embeddings": tied}
        model = LlamaForCausalLM(LlamaConfig(vocab_size=300, **shape))
        assert shape_parameters(shape, 300) == sum(p.numel() for p in model.parameters())
    assert shape_parameters(SYNTHETIC["8b"], 128256) == 8_030_261_248  # Llama-3.1-8B's published count
    assert shape_parameters(SYNTHETIC["135m"], 49152) == 134_515_008  # SmolLM2-135M's


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quant", "4bit"], "--quant 4bit (QLoRA) needs --device cuda: bitsandbytes' 4-bit layers run on a CUDA GPU only."),
        (["--synthetic-config", "8b"], "--synthetic-config 8b has about 7.4B parameters: too big for a CPU run (over 2B). "
         "Run it with --device cuda --quant 4bit."),
    ],
)  # fmt: skip
def test_runs_a_cpu_cannot_do_are_refused_before_any_work(bench, tmp_path, capsys, argv, message):
    output = tmp_path / "result.json"
    assert bench.main(["--device", "cpu", *argv, "--output", str(output)]) == 2
    assert capsys.readouterr().out.strip() == message
    assert not output.exists()


def test_the_gpu_command_imports_without_django_and_refuses_4bit_without_cuda(tmp_path):
    """What the GPU machine runs (torch, transformers and peft there; no Django): here without CUDA it must get as
    far as its clear refusal of --quant 4bit, which proves that nothing on its import path needs Django."""
    import subprocess
    import sys

    from tests.attribution.test_bench import GUARD

    argv = [str(BENCH), "--device", "cpu", "--synthetic-config", "8b", "--quant", "4bit", "--steps", "20"]
    done = subprocess.run([sys.executable, "-c", GUARD, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.strip() == (
        "--quant 4bit (QLoRA) needs --device cuda: bitsandbytes' 4-bit layers run on a CUDA GPU only."
    )
