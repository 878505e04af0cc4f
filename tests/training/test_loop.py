import json
import math

import pytest
import torch

from modelfactory.training import loop, memory
from modelfactory.training.data import build_examples
from modelfactory.training.loop import Cancelled, TrainingError, load_model_for_training, make_batches, train
from modelfactory.training.presets import resolve_target_modules

from .conftest import CPU, colour_rows, fresh_model, hyperparameters


@pytest.fixture(scope="module")
def examples(tokenizer):
    examples, report = build_examples(tokenizer, colour_rows(24), max_length=128)
    assert report.rows_used == 24
    return examples


def run(tiny_dir, examples, hp, **kwargs):
    model, tokenizer = fresh_model(tiny_dir, hp)
    return train(model, examples, hp, device=CPU, pad_id=tokenizer.pad_token_id, **kwargs), model


def test_make_batches_covers_every_example_once_and_groups_lengths():
    lengths = [((i * 37) % 300) + 10 for i in range(200)]
    batches = make_batches(lengths, batch_size=8, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert batches == make_batches(lengths, batch_size=8, seed=1, epoch=0)
    assert batches != make_batches(lengths, batch_size=8, seed=1, epoch=1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(8 * max(lengths[i] for i in range(s, s + 8)) for s in range(0, 200, 8))
    assert padded < 0.8 * naive


def test_two_runs_with_the_same_seed_give_identical_losses(tiny_dir, examples):
    hp = hyperparameters(dropout=0.1)
    first, _ = run(tiny_dir, examples, hp)
    second, _ = run(tiny_dir, examples, hp)
    assert first.losses == second.losses
    assert len(first.losses) == first.steps == first.total_steps == 6  # 24 rows / 4 per batch / 2 accum x 2 epochs
    third, _ = run(tiny_dir, examples, hyperparameters(dropout=0.1, seed=8))
    assert third.losses != first.losses


def test_events_and_eval_losses(tiny_dir, examples):
    events = []
    result, _ = run(tiny_dir, examples[:20], hyperparameters(), eval_examples=examples[20:], on_event=events.append)
    train_events = [e for e in events if e["type"] == "train"]
    assert [e["step"] for e in train_events] == [1, 2, 3, 4, 5, 6]
    assert {k for e in train_events for k in e} == {
        "type",
        "step",
        "total_steps",
        "epoch",
        "loss",
        "lr",
        "tokens_per_s",
        "eta_s",
        "memory_bytes",
    }
    assert train_events[-1]["eta_s"] == 0
    assert train_events[-1]["epoch"] == 2.0
    assert all(e["memory_bytes"] > 0 and e["tokens_per_s"] > 0 for e in train_events)
    assert [(e["step"], e["epoch"]) for e in events if e["type"] == "eval"] == [(3, 1.0), (6, 2.0)]
    assert [step for step, _ in result.eval_losses] == [3, 6]
    assert result.tokens == 2 * sum(e.n_tokens for e in examples[:20])


def test_stop_keeps_the_adapter_and_finishes(tiny_dir, examples):
    polls = []

    def control():
        polls.append(1)
        return "stop" if len(polls) == 3 else None

    result, _ = run(tiny_dir, examples, hyperparameters(), control=control)
    assert (result.steps, result.total_steps, result.stopped_early) == (2, 6, True)
    assert math.isfinite(result.train_loss)


def test_cancel_raises(tiny_dir, examples):
    steps = []
    with pytest.raises(Cancelled):
        run(tiny_dir, examples, hyperparameters(), control=lambda: "cancel" if steps else None, on_event=steps.append)
    assert len(steps) == 1


class Crash(Exception):
    pass


def test_resume_from_checkpoint_gives_the_same_losses(tiny_dir, examples, tmp_path):
    hp = hyperparameters(dropout=0.1, epochs=3)
    full, _ = run(tiny_dir, examples, hp, checkpoint_dir=tmp_path / "a", checkpoint_every=2)

    def crash_at_step_5(event):
        if event["type"] == "train" and event["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        run(tiny_dir, examples, hp, checkpoint_dir=tmp_path / "b", checkpoint_every=2, on_event=crash_at_step_5)
    resumed, _ = run(tiny_dir, examples, hp, checkpoint_dir=tmp_path / "b", checkpoint_every=2, resume=True)
    assert resumed.resumed_from == 4
    assert resumed.losses == full.losses
    assert resumed.train_loss == full.train_loss


def test_nan_loss_stops_with_a_clear_message(tiny_dir, examples, monkeypatch):
    real = loop.answer_loss_sum

    def nan_after_two(model, ids, labels, calls=[]):  # noqa: B006 (call counter)
        calls.append(1)
        loss, count = real(model, ids, labels)
        return (loss * float("nan") if len(calls) > 2 else loss), count

    monkeypatch.setattr(loop, "answer_loss_sum", nan_after_two)
    with pytest.raises(TrainingError) as caught:
        run(tiny_dir, examples, hyperparameters())
    assert str(caught.value) == (
        "The training loss became nan at step 2, so training was stopped: the model diverged. "
        "Lower the learning rate (now 0.005; try 0.0005)."
    )


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes. Error code 12 (Cannot allocate memory) out of memory"
        ),
    ],
)
def test_out_of_memory_says_what_to_lower(tiny_dir, examples, monkeypatch, error):
    def boom(model, ids, labels):
        raise error

    monkeypatch.setattr(loop, "answer_loss_sum", boom)
    released = []
    monkeypatch.setattr(loop, "release_memory", released.append)
    with pytest.raises(TrainingError) as caught:
        run(tiny_dir, examples, hyperparameters())
    message = str(caught.value)
    assert message.startswith("The computer ran out of memory on a batch of 4 rows of up to ")
    assert "Lower the batch size (now 4; try 2, and raise gradient accumulation to 4" in message
    assert "or the maximum length (now 128 tokens), or the adapter size (rank, now 16)." in message
    assert released == [CPU]


def test_other_runtime_errors_are_not_disguised_as_oom(tiny_dir, examples, monkeypatch):
    def boom(model, ids, labels):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(loop, "answer_loss_sum", boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(tiny_dir, examples, hyperparameters())


def test_qlora_needs_cuda(tiny_dir):
    with pytest.raises(TrainingError, match=r"4-bit training \(QLoRA\) needs a CUDA GPU"):
        load_model_for_training(tiny_dir, hyperparameters(quantization="4bit"), device=CPU)


def test_unknown_target_module(tiny_dir):
    with pytest.raises(TrainingError) as caught:
        load_model_for_training(tiny_dir, hyperparameters(target_modules=["c_attn"]), device=CPU)
    assert str(caught.value) == (
        "This model has no layers named c_attn; its adaptable layers are "
        "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj."
    )


def test_only_lora_parameters_train(tiny_dir, examples):
    hp = hyperparameters(epochs=1)
    model, tokenizer = fresh_model(tiny_dir, hp)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, examples, hp, device=CPU, pad_id=tokenizer.pad_token_id)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_resume_without_a_checkpoint_starts_from_scratch(tiny_dir, examples, tmp_path):
    hp = hyperparameters(dropout=0.1)
    plain, _ = run(tiny_dir, examples, hp)
    resumed, _ = run(tiny_dir, examples, hp, checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from == 0
    assert resumed.losses == plain.losses


def _pass_shapes(monkeypatch) -> list[tuple[int, int]]:
    """(rows, width) of every training forward pass from now on (evaluations go through eval_loss, not here)."""
    widths = []
    real = loop.answer_loss_sum

    def spy(model, ids, labels):
        widths.append(tuple(ids.shape))
        return real(model, ids, labels)

    monkeypatch.setattr(loop, "answer_loss_sum", spy)
    return widths


def test_a_memory_budget_splits_batches_into_passes_with_the_same_learning(tiny_dir, examples, monkeypatch):
    """Under a budget that fits FLOOR_TOKENS tokens, no forward pass holds more than that (or one row), and the
    batches' gradients, summed over their parts, train the same adapter as whole batches."""
    hp = hyperparameters(dropout=0.0)
    whole, whole_model = run(tiny_dir, examples, hp)
    widths = _pass_shapes(monkeypatch)
    parted, parted_model = run(tiny_dir, examples, hp, memory_budget=0)
    training = widths  # the training passes only: evaluations go through eval_loss
    assert all(rows * width <= 64 or rows == 1 for rows, width in training)
    assert len(training) > whole.steps * 2  # batches of 4 rows went through in parts
    assert sum(rows for rows, _ in training) == len(examples) * 2  # every row once per epoch
    assert parted.losses == pytest.approx(whole.losses, rel=1e-4)
    for a, b in zip(whole_model.parameters(), parted_model.parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # float rounding, scaled by AdamW's steps


def test_a_pass_holds_no_more_tokens_than_the_budget_buys_with_the_adapters_own_cost(tiny_dir, examples, monkeypatch):
    """The budget is divided by the training pass's whole per-token cost (memory.training_bytes_per_token: the
    model's activations, the adapter's inputs and outputs, its dropout copies), not by the model's alone."""
    hp = hyperparameters(dropout=0.1, rank=8, target_modules="all_linear")
    config = json.loads((tiny_dir / "config.json").read_text())
    targets = resolve_target_modules("all_linear", config["architectures"][0])
    per_token = memory.training_bytes_per_token(config, rank=8, targets=targets, dropout=0.1)
    assert per_token > 1.5 * memory.activation_bytes_per_token(config)  # the adapter's part is not small
    widths = _pass_shapes(monkeypatch)
    run(tiny_dir, examples, hp)
    assert max(rows * width for rows, width in widths) > 150  # whole batches: more than the old cost would split
    widths.clear()
    run(tiny_dir, examples, hp, memory_budget=int(100 * per_token))
    assert max(rows * width for rows, width in widths) <= 100
