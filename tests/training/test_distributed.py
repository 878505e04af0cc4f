"""Data-parallel training with 2 CPU processes (gloo) against the same run in one process.

The processes are real subprocesses with a torch.distributed process group, exactly as on a multi-GPU worker
except for the backend (gloo instead of nccl) and the device."""

import math
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from modelfactory.training.data import Example
from modelfactory.training.distributed import Rank, shard_window
from modelfactory.training.finetune import FinetuneSpec, run_finetune
from modelfactory.training.loop import Cancelled, TrainingError

from .conftest import colour_rows

pytestmark = pytest.mark.slow  # each two-process run starts two Python processes that import torch

# dropout 0: with dropout the ranks draw other masks than one process does, so only the distribution would match
SETTINGS = {"min_steps": 0, "batch_size": 4, "grad_accum": 2, "epochs": 2, "learning_rate": 5e-3, "max_length": 128,
            "eval_split": 0.1, "dropout": 0.0, "seed": 3}  # fmt: skip


def spec(tiny_dir, **overrides):
    values = {
        "base_model_dir": tiny_dir,
        "rows": colour_rows(30),
        "hyperparameters": SETTINGS,
        "base_model_name": "tiny-llama",
        "max_answers": 1,
        "max_new_tokens": 4,
        "checkpoint_every": 2,
        "device": "cpu",
    }
    return FinetuneSpec(**{**values, **overrides})


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    out = {}
    for processes in (1, 2):
        events = []
        workdir = tmp_path_factory.mktemp(f"p{processes}")
        result = run_finetune(spec(tiny_dir, processes=processes), workdir=workdir, on_event=events.append)
        out[processes] = (result, events, workdir)
    return out


def test_two_processes_complete_and_write_once(runs):
    result, _, workdir = runs[2]
    assert result.metrics["steps"] == result.metrics["total_steps"] == 8  # 27 train rows: 7 batches, 4 windows x 2
    assert (workdir / "adapter" / "adapter_model.safetensors").is_file()
    assert (workdir / "adapter.zip").is_file()
    assert not (workdir / "checkpoints").exists()  # removed after success, as in one process


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    one, _, dir_one = runs[1]
    two, _, dir_two = runs[2]
    for key in ("train_loss", "eval_loss", "base_eval_loss"):
        assert math.isclose(one.metrics[key], two.metrics[key], rel_tol=1e-4), key
    assert one.metrics["tokens"] == two.metrics["tokens"]
    assert (one.train_row_ids, one.eval_row_ids) == (two.train_row_ids, two.eval_row_ids)
    a = load_file(str(dir_one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(dir_two / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-5), name
    # and training moved the adapter: this is not two untrained copies that agree
    assert any(float(t.abs().max()) > 1e-3 for name, t in b.items() if "lora_B" in name)


def test_progress_events_come_once_per_step(runs):
    one_events = runs[1][1]
    _, events, _ = runs[2]
    steps = [e["step"] for e in events if e["type"] == "train"]
    assert steps == list(range(1, 9))
    phases = [e["phase"] for e in events if e["type"] == "phase"]
    assert phases == ["loading", "training", "evaluating", "saving"]
    assert Counter(e["step"] for e in events if e["type"] == "eval") == {4: 1, 8: 1}
    one_losses = [e["loss"] for e in one_events if e["type"] == "train"]
    two_losses = [e["loss"] for e in events if e["type"] == "train"]
    assert all(math.isclose(x, y, rel_tol=1e-4) for x, y in zip(one_losses, two_losses, strict=True))


class Crash(Exception):
    pass


def test_a_run_killed_mid_way_resumes_from_rank_0s_checkpoint(runs, tiny_dir, tmp_path):
    full, full_events, _ = runs[2]

    def crash_at_step_5(event):
        if event["type"] == "train" and event["step"] == 5:
            raise Crash  # as if the worker died: the launcher's processes are stopped where they are

    with pytest.raises(Crash):
        run_finetune(spec(tiny_dir, processes=2), workdir=tmp_path, on_event=crash_at_step_5)
    assert (tmp_path / "checkpoints" / "checkpoint" / "state.pt").is_file()
    events = []
    resumed = run_finetune(spec(tiny_dir, processes=2), workdir=tmp_path, on_event=events.append, resume=True)
    assert [e["step"] for e in events if e["type"] == "train"] == [5, 6, 7, 8]
    expected = {e["step"]: e["loss"] for e in full_events if e["type"] == "train"}
    assert all(math.isclose(e["loss"], expected[e["step"]], rel_tol=1e-4) for e in events if e["type"] == "train")
    assert math.isclose(resumed.metrics["eval_loss"], full.metrics["eval_loss"], rel_tol=1e-4)


def test_cancel_reaches_every_process_and_keeps_nothing(tiny_dir, tmp_path):
    seen = []

    def control():
        return "cancel" if seen else None

    with pytest.raises(Cancelled, match="The run was cancelled."):
        run_finetune(spec(tiny_dir, processes=2), workdir=tmp_path, on_event=seen.append, control=control)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "checkpoints").exists()


def test_a_training_error_in_a_process_is_raised_with_its_message(tiny_dir, tmp_path):
    rows = [{"id": 1, "kind": "instruction", "content": {"instruction": "Hi?", "output": "x " * 400}}]
    with pytest.raises(TrainingError) as caught:
        run_finetune(spec(tiny_dir, processes=2, rows=rows), workdir=tmp_path)
    assert str(caught.value) == (
        "None of the 1 rows can be trained on: 1 are longer than the maximum length of 128 tokens (raise it, or "
        "shorten those rows)."
    )


def _example(row_id, n):
    return Example(row_id=row_id, input_ids=[1] * n, labels=[1] * n)


def test_shard_window_deals_rows_by_length_and_respects_the_batch_size():
    groups = [[_example(1, 9), _example(2, 5), _example(3, 4)], [_example(4, 8), _example(5, 7), _example(6, 1)]]
    first = shard_window(groups, Rank(0, 2, "cpu"), batch_size=2)
    second = shard_window(groups, Rank(1, 2, "cpu"), batch_size=2)
    assert [[e.row_id for e in g] for g in first] == [[1, 5], [3]]
    assert [[e.row_id for e in g] for g in second] == [[4, 2], [6]]
    assert shard_window([[_example(1, 3)]], Rank(1, 2, "cpu"), batch_size=2) == []
