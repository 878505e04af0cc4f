"""The attribution benchmark's synthetic-model mode (the one meant for a GPU machine with torch, transformers and
peft only) on CPU with a tiny shape, run in a process where Django, Celery, gguf and our Django apps cannot be
imported: it must run end to end there. It checks that the mode runs and what it reports, not any speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
GUARD = """
import runpy, sys
BLOCKED = {"django", "celery", "kombu", "gguf", "rest_framework", "ledger", "datanets", "accounts", "core", "config"}
OWN_DJANGO = ("attribution.models", "attribution.services", "attribution.tasks", "modelfactory.models",
              "config.settings", "modelfactory.services", "modelfactory.tasks")

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name.startswith(OWN_DJANGO):
            raise ModuleNotFoundError(f"No module named {name!r} (not on this machine)", name=name)

sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_synthetic_mode_runs_without_django_and_reports_ratio_latency_and_storage(base_dir, tmp_path):
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps(TINY_SHAPE))
    output = tmp_path / "result.json"
    argv = [str(ROOT / "bench" / "bench_attribution.py"), "--device", "cpu", "--synthetic-config", str(shape),
            "--tokenizer-dir", str(base_dir), "--rows", "12", "--batch-size", "4", "--rounds", "1",
            "--latency-rows", "300", "--output", str(output)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", GUARD, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("index build ratio to one training epoch: ")
    result = json.loads(output.read_text())
    assert (result["device"], result["rows"], result["batch_size"]) == ("cpu", 12, 4)
    assert result["model"] == f"synthetic-{shape}"
    assert result["build_max_tokens"] == 4 * 256
    for key in ("build_ratio_to_epoch", "build_ratio_features_only", "build_ratio_batch_size_rows_per_pass"):
        assert result[key] > 0
    assert result["latency_rows"] == 300 and result["latency_forward_backward_ms"] > 0
    assert result["latency_scoring_ms"] > 0
    assert result["storage_bytes_per_row_features"] == result["latency_k"] + 20
    assert result["storage_bytes_per_row"] == round(result["index_file_bytes"] / 12, 1)


def test_bench_modules_name_no_django_app_at_import():
    """What the GPU machine imports first: the shared synthetic-model helper and the engine."""
    code = GUARD.split("sys.argv")[0] + "import bench.synthetic_model, attribution.engine, modelfactory.training.loop"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _bench_main(argv, capsys):
    from bench import bench_attribution

    code = bench_attribution.main(argv)
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_lds_mode_runs_the_product_method_without_django_and_reports_lds_per_method(base_dir, tmp_path):
    """The LDS mode on a tiny model: the product's chat format, its training loop at the default preset (80 steps of
    4 rows per retrain) and its index build, a progress line per retrain, LDS per score method in the JSON."""
    from modelfactory.training.presets import preset_values

    output = tmp_path / "lds.json"
    argv = [str(ROOT / "bench" / "bench_attribution.py"), "--model-dir", str(base_dir), "--lds-subsets", "2",
            "--lds-rows", "32", "--lds-k", "512", "--output", str(output)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", GUARD, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    progress = [line for line in lines if line.startswith("subset ")]
    assert [line.split(" in ")[0] for line in progress] == [
        "subset 1/2: retrained on 16 rows (80 steps)",
        "subset 2/2: retrained on 16 rows (80 steps)",
    ]
    assert lines[-1].startswith("LDS over 2 half-subsets (8 queries): fisher ")
    assert lines[-1].endswith(" (goal >= 0.45)")
    result = json.loads(output.read_text())
    assert result["hyperparameters"] == {**preset_values("balanced"), "eval_split": 0.0}
    assert (result["rows"], result["contributors"], result["lds_queries"], result["lds_subsets"]) == (32, 2, 8, 2)
    assert (result["k"], result["steps_full"], result["steps_per_retrain"]) == (512, 80, [80, 80])
    assert len(result["retrain_s"]) == len(result["retrain_cpu_s"]) == 2 and min(result["retrain_s"]) > 0
    assert 0.0 <= result["lds_recall"] <= 1.0
    methods = ["fisher", "dot", "cosine", "fisher@0.01", "fisher@0.1", "fisher@0.3", "fisher@1"]
    assert sorted(key for key in result if key.startswith("lds_") and key[4:] in methods) == [
        f"lds_{m}" for m in sorted(methods)
    ]
    for method in methods:
        # two subsets: each query's Spearman is -1, 0 or 1, so the LDS is a multiple of 1/8
        value = result[f"lds_{method}"] * 8
        assert -8 <= value <= 8 and abs(value - round(value)) < 1e-3, (method, value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "smollm2", "--lds-subsets", "1"], "--lds-subsets must be at least 2"),
        (["--model", "smollm2", "--lds-subsets", "2", "--lds-rows", "40"], "--lds-rows must be a multiple of 16"),
        (["--model", "smollm2", "--lds-subsets", "2", "--lds-rows", "16"], "at least 32"),
        (["--lds-subsets", "2"], "--lds-subsets needs --model smollm2 or --model-dir"),
        (["--model-dir", "x"], "--model-dir is for the LDS mode"),
    ],
)
def test_lds_mode_refuses_bad_arguments_before_any_work(argv, message, tmp_path, capsys):
    output = tmp_path / "out.json"
    code, out = _bench_main([*argv, "--output", str(output)], capsys)
    assert code == 2
    assert message in out
    assert not output.exists()
