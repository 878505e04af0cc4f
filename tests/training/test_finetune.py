import json
import zipfile

import pytest

from modelfactory.training.artifacts import ADAPTER_FILES, artifact_hash
from modelfactory.training.finetune import FinetuneSpec, run_finetune, split_rows
from modelfactory.training.loop import Cancelled, TrainingError

from .conftest import colour_rows

SETTINGS = {
    "min_steps": 0,
    "batch_size": 4,
    "grad_accum": 1,
    "epochs": 3,
    "learning_rate": 5e-3,
    "max_length": 128,
    "eval_split": 0.1,
}


def spec(tiny_dir, rows, **overrides):
    values = {
        "base_model_dir": tiny_dir,
        "rows": rows,
        "hyperparameters": SETTINGS,
        "base_model_name": "tiny-llama",
        "model_name": "Colours",
        "datanet_versions": [{"name": "colours", "version": 2, "manifest_hash": "ab12"}],
        "contributors": 3,
        "max_answers": 2,
        "max_new_tokens": 6,
        "checkpoint_every": 5,
    }
    return FinetuneSpec(**{**values, **overrides})


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    events = []
    workdir = tmp_path_factory.mktemp("run")
    result = run_finetune(spec(tiny_dir, colour_rows(60)), workdir=workdir, on_event=events.append)
    return result, events, workdir


def test_split_is_a_seeded_shuffle_by_row_id():
    train, held = split_rows([5, 1, 4, 2, 3, 9, 8, 7, 6, 10], eval_split=0.2, seed=1)
    assert len(held) == 2 and train | held == set(range(1, 11)) and not train & held
    assert split_rows([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], eval_split=0.2, seed=1) == (train, held)
    assert split_rows([1, 2, 3], eval_split=0.05, seed=1)[1] != set()
    assert split_rows([1], eval_split=0.1, seed=1) == ({1}, set())


def test_tuned_model_beats_the_base_on_held_out_rows(finished):
    result, _, _ = finished
    metrics = result.metrics
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.3
    assert metrics["perplexity"] < metrics["base_perplexity"]
    assert metrics["steps"] == metrics["total_steps"] == 42  # 54 train rows -> 14 batches x 3 epochs
    assert (result.rows_used, result.rows_dropped, len(result.eval_row_ids)) == (60, 0, 6)
    assert len(result.samples) == 2
    assert {
        "row_id",
        "prompt",
        "reference",
        "base",
        "tuned",
        "base_exact",
        "tuned_exact",
        "base_f1",
        "tuned_f1",
    } == set(result.samples[0])
    assert metrics["answers_scored"] == 2 and 0 <= metrics["token_f1"] <= 1
    assert metrics["verdict"]["level"] in ("clear", "some")  # a 0.3 lower loss is a change, whatever the answers
    assert result.samples[0]["prompt"] == f"Colour of item {result.samples[0]['row_id']}?"


def test_events_cover_phases_steps_and_evals(finished):
    _, events, _ = finished
    assert [e["phase"] for e in events if e["type"] == "phase"] == ["loading", "training", "evaluating", "saving"]
    assert [e["step"] for e in events if e["type"] == "eval"] == [14, 28, 42]
    assert len([e for e in events if e["type"] == "train"]) == 42


def test_artifacts_hash_card_and_zip(finished):
    result, _, workdir = finished
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["README.md", *ADAPTER_FILES]
    assert artifact_hash(result.adapter_dir) == result.artifact_hash
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["r"], config["lora_alpha"]) == ("tiny-llama", 16, 32)
    card = (result.adapter_dir / "README.md").read_text()
    assert card == result.model_card
    assert "| colours | 2 | `ab12` |" in card
    assert "Rows used: 60; rows left out: 0; contributors: 3." in card
    assert f"`{result.artifact_hash}`" in card
    assert f"| loss | {result.metrics['base_eval_loss']:.4f} | {result.metrics['eval_loss']:.4f} |" in card
    with zipfile.ZipFile(result.zip_path) as archive:
        assert archive.namelist() == [*ADAPTER_FILES, "README.md"]
        assert (
            archive.read("adapter_model.safetensors") == (result.adapter_dir / "adapter_model.safetensors").read_bytes()
        )
    assert not (workdir / "checkpoints").exists()


def test_same_run_gives_the_same_artifact_hash(tiny_dir, finished, tmp_path):
    again = run_finetune(spec(tiny_dir, colour_rows(60)), workdir=tmp_path)
    assert again.artifact_hash == finished[0].artifact_hash
    assert again.zip_path.read_bytes() == finished[0].zip_path.read_bytes()


def test_stop_keeps_an_adapter(tiny_dir, tmp_path):
    polls = []

    def control():
        polls.append(1)
        return "stop" if len(polls) > 4 else None

    result = run_finetune(spec(tiny_dir, colour_rows(60)), workdir=tmp_path, control=control)
    assert result.stopped_early and result.metrics["steps"] == 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert result.metrics["eval_loss"] is not None


def test_cancel_discards_everything(tiny_dir, tmp_path):
    polls = []

    def control():
        polls.append(1)
        return "cancel" if len(polls) > 6 else None

    with pytest.raises(Cancelled):
        run_finetune(spec(tiny_dir, colour_rows(60)), workdir=tmp_path, control=control)
    assert not (tmp_path / "adapter").exists()
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        ([], {}, "The chosen datanet versions have no rows to train on."),
        (
            [
                {"id": 1, "kind": "text", "content": {"text": "word " * 200}},
                {"id": 2, "kind": "instruction", "content": {"instruction": "x", "output": ""}},
            ],
            {"max_length": 64},
            "None of the 2 rows can be trained on: 1 are longer than the maximum length of 64 tokens (raise it, or "
            "shorten those rows); 1 have no answer to learn.",
        ),
        (
            colour_rows(4),
            {"rank": 0, "epochs": 99},
            "Some settings are not valid: epochs must be between 1 and 20; rank must be between 1 and 256.",
        ),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(tiny_dir, tmp_path, rows, overrides, message):
    with pytest.raises(TrainingError) as caught:
        run_finetune(spec(tiny_dir, rows, hyperparameters={**SETTINGS, **overrides}), workdir=tmp_path)
    assert str(caught.value) == message
    assert list(tmp_path.iterdir()) == []


def test_missing_model_files(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(TrainingError) as caught:
        run_finetune(spec(tmp_path / "model", colour_rows(4)), workdir=tmp_path / "work")
    assert (
        str(caught.value)
        == f"The base model cannot be loaded: {tmp_path / 'model'} has no config.json: it is not a Hugging Face model folder."
    )
    assert list((tmp_path / "work").iterdir()) == []


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_dir, finished, tmp_path):
    class Crash(Exception):
        pass

    def crash(event):
        if event["type"] == "train" and event["step"] == 12:
            raise Crash

    with pytest.raises(Crash):
        run_finetune(spec(tiny_dir, colour_rows(60)), workdir=tmp_path, on_event=crash)
    assert (tmp_path / "checkpoints" / "checkpoint" / "state.pt").is_file()
    resumed = run_finetune(spec(tiny_dir, colour_rows(60)), workdir=tmp_path, resume=True)
    assert resumed.metrics["train_loss"] == finished[0].metrics["train_loss"]
    assert resumed.artifact_hash == finished[0].artifact_hash
