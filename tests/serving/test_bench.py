"""The serving benchmark's GPU command (synthetic model, many adapters, concurrent streams) on CPU with a tiny shape,
in a process where Django and our Django apps cannot be imported (the GPU machine has torch, transformers and peft
only): it must run end to end there. It checks what the run reports, not any speed."""

import json
import subprocess
import sys
from pathlib import Path

from tests.attribution.test_bench import GUARD, TINY_SHAPE

ROOT = Path(__file__).resolve().parents[2]


def test_streams_mode_reports_each_way_at_each_count_without_django(tiny_base, tmp_path):
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps(TINY_SHAPE))
    output = tmp_path / "serving.json"
    argv = [str(ROOT / "bench" / "bench_serving.py"), "--device", "cpu", "--synthetic-config", str(shape),
            "--tokenizer-dir", str(tiny_base), "--adapters", "3", "--streams", "1,2", "--new-tokens", "3",
            "--repeats", "1", "--cold-loads", "1", "--output", str(output)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", GUARD, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert (result["device"], result["adapters"], result["model"]) == ("cpu", 3, f"synthetic-{shape}")
    assert result["mixed_equals_one_at_a_time_tokens"] is True
    assert set(result["streams"]) == {"1", "2"}
    for count, row in result["streams"].items():
        for way in ("base_only", "mixed", "one_at_a_time"):
            assert 1 <= row[way]["tokens"] <= 3 * int(count)
            assert 0 < row[way]["ttft_median_ms"] <= row[way]["ttft_max_ms"]
            assert row[way]["tokens_per_s"] > 0
        assert row["mixed_vs_base_only"] > 0 and row["mixed_vs_one_at_a_time"] > 0
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0].strip() for line in lines if "streams:" in line] == ["1 streams", "2 streams"]


def test_streams_must_be_counts(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_serving.py"), "--streams", "1,eight"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--streams: '1,eight' is not a comma-separated list of whole numbers such as 1,8,32" in done.stderr
