"""Held-out evaluation: loss and perplexity over answer tokens, and greedy answers, for base and fine-tuned.

Both sides use the same peft model: the base is the same weights with the adapter switched off through peft's
`disable_adapter()` context, so only one copy of the base model is ever in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from modelfactory.training.data import Example, prompt_and_reference

MAX_ANSWERS = 64  # held-out rows answered and scored, base and tuned


def perplexity(loss: float) -> float | None:
    """exp(loss); None when it would overflow (JSON has no infinity)."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else None


@torch.no_grad()
@torch.no_grad()  # no graph kept: an evaluation batch needs less memory than the training batch of its rows
def eval_loss(
    model,
    examples: list[Example],
    *,
    device: torch.device,
    pad_id: int,
    batch_size: int = 8,
    on_batch: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over the answer tokens of `examples`, and the number of those tokens.
    `on_batch()` is called before each batch (the caller's cancel check: it may raise)."""
    from modelfactory.training.loop import answer_loss_sum, autocast, collate

    if not examples:
        return float("nan"), 0
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: examples[i].n_tokens)
    total, count = 0.0, 0
    try:
        for start in range(0, len(order), batch_size):
            if on_batch:
                on_batch()
            group = [examples[i] for i in order[start : start + batch_size]]
            ids, labels = collate(group, pad_id=pad_id, device=device)
            with autocast(device):
                loss_sum, n = answer_loss_sum(model, ids, labels)
            total += float(loss_sum)
            count += n
    finally:
        model.train(was_training)
    return total / count, count


@torch.no_grad()
def greedy_answer(model, tokenizer, rendered_prompt: str, *, device: torch.device, max_new_tokens: int) -> str:
    return greedy_answers(model, tokenizer, [rendered_prompt], device=device, max_new_tokens=max_new_tokens)[0]


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    rendered_prompts: list[str],
    *,
    device: torch.device,
    max_new_tokens: int,
    batch_size: int = 16,
    on_batch: Callable[[], None] | None = None,
) -> list[str]:
    """Greedy answers to many prompts, `batch_size` at a time (left-padded, prompts of similar length together):
    one forward pass per new token for a whole batch instead of one per row."""
    from modelfactory.training.loop import autocast

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in rendered_prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        if on_batch:
            on_batch()
        group = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with autocast(device):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row, i in enumerate(group):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return answers


def compare_base_and_tuned(
    model,
    tokenizer,
    eval_examples: list[Example],
    eval_rows: list[dict[str, Any]],
    *,
    device: torch.device,
    max_answers: int = MAX_ANSWERS,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Held-out loss/perplexity with the adapter off (base) and on (tuned), and greedy answers from both to up to
    `max_answers` held-out rows, each scored against the row's answer (verdict.score_rows): {"base_eval_loss",
    "eval_loss", "base_perplexity", "perplexity", "eval_tokens", "answers_scored", "base_exact_match",
    "exact_match", "base_token_f1", "token_f1", "samples": [{"row_id", "prompt", "reference", "base", "tuned",
    "base_exact", "tuned_exact", "base_f1", "tuned_f1"}]}. Answers are capped at the longest reference's length
    plus a margin (and `max_new_tokens`), so a rambling model does not make the check slow. `on_batch()` runs
    before every batch of either side (the job's cancel check: it may raise)."""
    from modelfactory.training.verdict import score_rows

    pad_id = tokenizer.pad_token_id
    prompts = []
    for row in eval_rows:
        if len(prompts) >= max_answers:
            break
        found = prompt_and_reference(tokenizer, row)
        if found:
            prompts.append((row.get("id"), *found))
    longest = max((len(tokenizer(ref, add_special_tokens=False)["input_ids"]) for *_, ref in prompts), default=0)
    answer_tokens = min(max_new_tokens, int(longest * 1.5) + 8)
    results: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    for side in ("base", "tuned"):
        context = model.disable_adapter() if side == "base" else nullcontext()
        with context:
            loss, tokens = eval_loss(
                model, eval_examples, device=device, pad_id=pad_id, batch_size=batch_size, on_batch=on_batch
            )
            answers[side] = greedy_answers(
                model, tokenizer, [rendered for _, _, rendered, _ in prompts], device=device,
                max_new_tokens=answer_tokens, batch_size=max(batch_size, 16), on_batch=on_batch,
            )  # fmt: skip
        prefix = "base_" if side == "base" else ""
        results[f"{prefix}eval_loss"] = loss if tokens else None
        results[f"{prefix}perplexity"] = perplexity(loss) if tokens else None
        results["eval_tokens"] = tokens
    rows = [
        {"row_id": row_id, "prompt": shown, "reference": reference, "base": base, "tuned": tuned}
        for (row_id, shown, _, reference), base, tuned in zip(prompts, answers["base"], answers["tuned"], strict=True)
    ]
    results["samples"], totals = score_rows(rows)
    results.update(totals)
    return results
