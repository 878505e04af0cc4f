"""Held-out evaluation: loss and perplexity over answer tokens, and greedy answers, for base and fine-tuned.

Both sides use the same peft model: the base is the same weights with the adapter switched off through peft's
`disable_adapter()` context, so only one copy of the base model is ever in memory.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from modelfactory.training.data import Example, prompt_and_reference


def perplexity(loss: float) -> float | None:
    """exp(loss); None when it would overflow (JSON has no infinity)."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else None


@torch.no_grad()
def eval_loss(
    model, examples: list[Example], *, device: torch.device, pad_id: int, batch_size: int = 8
) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over the answer tokens of `examples`, and the number of those tokens."""
    from modelfactory.training.loop import answer_loss_sum, autocast, collate

    if not examples:
        return float("nan"), 0
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: examples[i].n_tokens)
    total, count = 0.0, 0
    try:
        for start in range(0, len(order), batch_size):
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
    from modelfactory.training.loop import autocast

    ids = tokenizer(rendered_prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    with autocast(device):
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def compare_base_and_tuned(
    model,
    tokenizer,
    eval_examples: list[Example],
    eval_rows: list[dict[str, Any]],
    *,
    device: torch.device,
    sample_prompts: int = 5,
    max_new_tokens: int = 96,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Held-out loss/perplexity with the adapter off (base) and on (tuned), and up to `sample_prompts` greedy
    answers from both: {"base_eval_loss", "eval_loss", "base_perplexity", "perplexity", "eval_tokens",
    "samples": [{"row_id", "prompt", "reference", "base", "tuned"}]}."""
    pad_id = tokenizer.pad_token_id
    prompts = []
    for row in eval_rows:
        if len(prompts) >= min(sample_prompts, 5):
            break
        found = prompt_and_reference(tokenizer, row)
        if found:
            prompts.append((row.get("id"), *found))
    results: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    for side in ("base", "tuned"):
        context = model.disable_adapter() if side == "base" else nullcontext()
        with context:
            loss, tokens = eval_loss(model, eval_examples, device=device, pad_id=pad_id, batch_size=batch_size)
            answers[side] = [
                greedy_answer(model, tokenizer, rendered, device=device, max_new_tokens=max_new_tokens)
                for _, _, rendered, _ in prompts
            ]
        prefix = "base_" if side == "base" else ""
        results[f"{prefix}eval_loss"] = loss if tokens else None
        results[f"{prefix}perplexity"] = perplexity(loss) if tokens else None
        results["eval_tokens"] = tokens
    results["samples"] = [
        {"row_id": row_id, "prompt": shown, "reference": reference, "base": base, "tuned": tuned}
        for (row_id, shown, _, reference), base, tuned in zip(prompts, answers["base"], answers["tuned"], strict=True)
    ]
    return results
