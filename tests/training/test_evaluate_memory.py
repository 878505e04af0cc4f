"""The evaluation stage (held-out loss and greedy answers, base and tuned) within a memory budget: passes hold no more
rows and tokens than the budget allows, the results are those of unbounded passes, and a row that cannot fit even
alone is refused before anything runs."""

import re

import pytest
import torch

from modelfactory.training import evaluate, memory
from modelfactory.training.data import build_examples, prompt_and_reference
from modelfactory.training.evaluate import answer_batches, compare_base_and_tuned, loss_passes, pass_limits
from modelfactory.training.finetune import FinetuneSpec, run_finetune
from modelfactory.training.loop import TrainingError

from .conftest import CPU, fresh_model, hyperparameters

SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "vocab_size": 49152, "intermediate_size": 1536}  # fmt: skip
FILLER = "river copper lantern meadow signal harbor orchid granite"


def varied_rows(n: int) -> list[dict]:
    """Rows whose prompts and answers have many lengths, so that batches are padded and parts differ."""
    rows = []
    for i in range(n):
        words = FILLER.split()
        question = f"Item {i}: " + " ".join(words[: i % 8]) + "?"
        answer = ["red it is.", "blue it is."][i % 2] + " " + " ".join(words[: (i * 3) % 8])
        rows.append({"id": i + 1, "kind": "instruction", "content": {"instruction": question, "output": answer}})
    return rows


@pytest.fixture(scope="module")
def setup(tiny_dir):
    hp = hyperparameters()
    model, tokenizer = fresh_model(tiny_dir, hp)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an adapter that changes the answers, so base and tuned differ
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    rows = varied_rows(24)
    examples, report = build_examples(tokenizer, rows, max_length=128)
    assert report.rows_used == 24
    return model, tokenizer, examples, rows


def shapes(monkeypatch, model):
    """Records the (rows, width) of every loss pass and (rows, prompt width, new tokens) of every generation."""
    from modelfactory.training import loop

    seen = {"loss": [], "answers": []}
    real_loss, real_generate = loop.answer_loss_sum, model.generate

    def loss(model, ids, labels):
        seen["loss"].append(tuple(ids.shape))
        return real_loss(model, ids, labels)

    def generate(**kwargs):
        rows, width = kwargs["input_ids"].shape
        seen["answers"].append((rows, width, kwargs["max_new_tokens"]))
        return real_generate(**kwargs)

    monkeypatch.setattr(loop, "answer_loss_sum", loss)
    monkeypatch.setattr(model, "generate", generate)
    return seen


def compare(setup, **kwargs):
    model, tokenizer, examples, rows = setup
    return compare_base_and_tuned(
        model, tokenizer, examples, rows, device=CPU, max_answers=12, max_new_tokens=16, batch_size=8, **kwargs
    )


def test_the_memory_figures_of_a_smollm2_shaped_config():
    assert memory.kv_cache_bytes_per_token(SMOLLM2) == 2 * 30 * 3 * 64 * 4 == 46080
    assert memory.kv_cache_bytes_per_token(SMOLLM2, act_bytes=2) == 23040
    assert memory.forward_bytes_per_token(SMOLLM2, answer_share=0.0) == 3 * 576 * 34 * 2 == 117504
    assert memory.forward_bytes_per_token(SMOLLM2) == 117504 + 49152 * 12
    assert memory.attention_scores_bytes_per_token(SMOLLM2, width=1024) == 9 * 1024 * 32


def test_passes_are_planned_by_length_within_the_batch_size_and_the_tokens():
    lengths = [10, 50, 20, 40, 30]
    assert loss_passes(lengths, batch_size=4) == [[0, 2, 4, 3], [1]]
    assert loss_passes(lengths, batch_size=4, max_tokens=90) == [[0, 2, 4], [3], [1]]
    assert loss_passes(lengths, batch_size=4, max_tokens=1) == [[0], [2], [4], [3], [1]]  # one row at least
    assert answer_batches([5, 30, 10], batch_size=16, new_tokens=10) == [[0, 2, 1]]
    assert answer_batches([5, 30, 10], batch_size=2, new_tokens=10, max_tokens=50) == [[0, 2], [1]]
    assert answer_batches([5, 30, 10], batch_size=16, new_tokens=10, max_tokens=40) == [[0, 2], [1]]
    assert answer_batches([5, 30, 10], batch_size=16, new_tokens=10, row_tokens=1, max_tokens=40) == [[0], [2], [1]]
    assert answer_batches([5, 30, 10], batch_size=16, new_tokens=10, max_tokens=30) == [[0], [2], [1]]


def test_a_budget_gives_the_same_losses_and_answers_as_unbounded_passes(setup, monkeypatch):
    model = setup[0]
    seen = shapes(monkeypatch, model)
    unbounded = compare(setup)
    whole = {key: list(value) for key, value in seen.items()}
    seen["loss"].clear(), seen["answers"].clear()
    limits = pass_limits(model, 1, device=CPU)
    budget = int(400 * limits.per_loss_token)  # 400 padded tokens a loss pass: batches of 8 rows go in parts
    plans = []
    bounded = compare(setup, memory_budget=budget, memory_free=10 * budget, on_plan=plans.append)
    assert len(seen["loss"]) > len(whole["loss"]) and len(seen["answers"]) > len(whole["answers"])
    assert plans == [len(seen["loss"]) + len(seen["answers"])]  # both sides, every pass told in advance
    for key in ("base_eval_loss", "eval_loss", "base_perplexity", "perplexity"):
        assert bounded[key] == pytest.approx(unbounded[key], rel=1e-5)
    assert bounded["eval_tokens"] == unbounded["eval_tokens"] > 0
    assert bounded["samples"] == unbounded["samples"]  # the same greedy answers, scored the same
    assert len(bounded["samples"]) == 12
    assert [s["base"] for s in bounded["samples"]] != [s["tuned"] for s in bounded["samples"]]
    assert sum(rows for rows, _ in seen["loss"]) == 2 * 24  # every row once a side


def test_no_pass_holds_more_rows_or_tokens_than_a_small_budget_allows(setup, monkeypatch):
    model, tokenizer, examples, _ = setup
    seen = shapes(monkeypatch, model)
    per_loss = pass_limits(model, 1, device=CPU).per_loss_token
    budget = int(300 * per_loss)
    compare(setup, memory_budget=budget, memory_free=10 * budget)
    longest = max(width + new for _, width, new in seen["answers"])
    limits = pass_limits(model, budget, device=CPU, answer_width=longest)
    assert limits.loss_tokens == 300 and limits.answer_tokens < 300  # the key/value cache and scores cost too
    assert max(e.n_tokens for e in examples) <= limits.loss_tokens  # every row fits alone
    for rows, width in seen["loss"]:
        assert rows * width * limits.per_loss_token <= budget
    assert max(rows for rows, _ in seen["loss"]) > 1  # the budget is not met by one row a pass
    for rows, width, new in seen["answers"]:
        logits = rows * limits.answer_row_tokens * limits.per_answer_token  # each step's logits of every row
        assert rows == 1 or rows * (width + new) * limits.per_answer_token + logits <= budget
    assert len(seen["answers"]) > 2 and max(rows for rows, _, _ in seen["answers"]) > 1


def test_a_row_that_cannot_fit_alone_is_refused_before_any_pass(setup, monkeypatch):
    model, tokenizer, examples, rows = setup
    seen = shapes(monkeypatch, model)
    with pytest.raises(TrainingError) as caught:
        compare(setup, memory_budget=0, memory_free=2 * 2**20, phase="evaluating_again")
    assert seen == {"loss": [], "answers": []}  # nothing ran
    prompts = [prompt_and_reference(tokenizer, row) for row in rows[:12]]
    longest_answer = max(len(tokenizer(ref, add_special_tokens=False)["input_ids"]) for *_, ref in prompts)
    width = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for _, p, _ in prompts)
    width += min(16, int(longest_answer * 1.5) + 8)
    limits = pass_limits(model, 0, device=CPU, answer_width=width)
    answering = (width + limits.answer_row_tokens) * limits.per_answer_token
    loss = max(e.n_tokens for e in examples) * limits.per_loss_token
    assert 2 * 2**20 < loss < answering  # the longest answer is what does not fit
    assert str(caught.value) == (
        "There is not enough memory for comparing the base model and the fine-tuned one on the test set: answering "
        f"its longest prompt ({width} tokens with the answer) needs about {answering / 2**20:.0f} MB on its own, and "
        "the worker has 2 MB free, so nothing was evaluated. Lower the maximum length (rows longer than it are left "
        "out) or leave the longest rows out, then launch it again."
    )
    with pytest.raises(TrainingError) as caught:  # no prompt to answer: the loss pass of the longest row
        compare_base_and_tuned(model, tokenizer, examples, [], device=CPU, memory_budget=0, memory_free=2**20)
    assert str(caught.value) == (
        "There is not enough memory for comparing the base model and the fine-tuned one on held-out rows: its longest "
        f"row ({max(e.n_tokens for e in examples)} tokens) needs about {loss / 2**20:.0f} MB on its own, and the "
        "worker has 1 MB free, so nothing was evaluated. Lower the maximum length (rows longer than it are left out) "
        "or leave the longest rows out, then launch it again."
    )
    assert seen == {"loss": [], "answers": []}


def test_a_training_job_whose_held_out_rows_cannot_fit_fails_at_evaluation_and_keeps_no_adapter(
    tiny_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(memory, "free_bytes", lambda **_: 2**20)  # 1 MB free once training is done
    spec = FinetuneSpec(
        base_model_dir=tiny_dir, rows=varied_rows(20), max_answers=2, max_new_tokens=6, checkpoint_every=0,
        hyperparameters={"min_steps": 0, "batch_size": 4, "grad_accum": 1, "epochs": 1, "max_length": 128,
                         "eval_split": 0.2},
    )  # fmt: skip
    phases = []
    with pytest.raises(TrainingError) as caught:
        run_finetune(spec, workdir=tmp_path, on_event=lambda e: phases.append(e.get("phase")))
    assert re.fullmatch(
        r"There is not enough memory for comparing the base model and the fine-tuned one on held-out rows: its "
        r"longest row \(\d+ tokens\) needs about \d+ MB on its own, and the worker has 1 MB free, so nothing was "
        r"evaluated\. Lower the maximum length \(rows longer than it are left out\) or leave the longest rows out, "
        r"then launch it again\.",
        str(caught.value),
    )
    assert [p for p in phases if p][-1] == "evaluating"
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "adapter.zip").exists()


def test_the_training_loops_evaluations_keep_to_its_pass_bound(tiny_dir, setup, monkeypatch):
    from modelfactory.training import loop

    model, tokenizer, examples, _ = setup
    hp = hyperparameters(epochs=2)
    fresh, _ = fresh_model(tiny_dir, hp)
    seen = shapes(monkeypatch, fresh)
    evaluated = []
    real_eval = loop.eval_loss

    def spy(*args, **kwargs):
        evaluated.append(kwargs["max_tokens"])
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(loop, "eval_loss", spy)
    loop.train(fresh, examples[:16], hp, device=CPU, pad_id=tokenizer.pad_token_id, eval_examples=examples[16:],
               memory_budget=0)  # fmt: skip
    assert evaluated == [memory.FLOOR_TOKENS, memory.FLOOR_TOKENS]  # between the epochs and at the end
    assert all(rows * width <= memory.FLOOR_TOKENS or rows == 1 for rows, width in seen["loss"])
    assert evaluate.MAX_ANSWERS == 64
