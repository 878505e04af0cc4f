"""Held-out evaluation: loss and perplexity over answer tokens, and greedy answers, for base and fine-tuned.

Both sides use the same peft model: the base is the same weights with the adapter switched off through peft's
`disable_adapter()` context, so only one copy of the base model is ever in memory.

Passes are bounded by the batch size and, given a memory budget, by what fits in it (`pass_limits`): a batch that
does not fit goes through in parts of the same rows, so its losses and answers are the same, and the stage's peak
memory depends on the budget, not on how many rows there are or how long they are. A row that cannot fit even
alone in all the memory free is refused before any pass runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from modelfactory.training import memory
from modelfactory.training.data import Example, prompt_and_reference

MAX_ANSWERS = 64  # held-out rows answered and scored, base and tuned
ANSWER_BATCH = 16  # greedy answers are batched by at least this many rows


class _Sized(NamedTuple):
    index: int
    n_tokens: int


@dataclass(frozen=True)
class PassLimits:
    """What one evaluation pass may hold within a memory budget, and what a token of it costs (bytes): a loss
    pass, padded tokens (every token counted as an answer token, whose logits are formed); a generation batch,
    padded tokens of prompt plus answer (the prompt pass with its attention scores over the longest prompt plus
    answer, and the key/value cache), each row counting `answer_row_tokens` more (each step's logits of a row)."""

    loss_tokens: int
    answer_tokens: int
    answer_row_tokens: int
    per_loss_token: float
    per_answer_token: float


def pass_limits(model, budget: int, *, device: torch.device, answer_width: int = 0) -> PassLimits:
    """The limits in `budget` bytes for `model` on `device`; `answer_width`: the longest prompt plus answer."""
    from modelfactory.training.loop import autocast_dtype

    config = model.config.to_dict() if hasattr(model, "config") else {}
    act = 2 if autocast_dtype(device) else 4
    per_loss = memory.forward_bytes_per_token(config, act_bytes=act)
    per_answer = memory.forward_bytes_per_token(config, act_bytes=act, answer_share=0.0)
    per_answer += memory.kv_cache_bytes_per_token(config, act_bytes=act)
    per_answer += memory.attention_scores_bytes_per_token(config, width=answer_width)
    row_tokens = math.ceil(int(config.get("vocab_size", 0)) * memory.LOGIT_BYTES / per_answer)  # a row's logits
    loss_tokens = memory.rows_and_tokens(budget, per_token=per_loss)[1]
    answer_tokens = memory.rows_and_tokens(budget, per_token=per_answer)[1]
    return PassLimits(loss_tokens, answer_tokens, row_tokens, per_loss, per_answer)


def loss_passes(lengths: list[int], *, batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of the rows of each loss pass: sorted by length, `batch_size` at a time, each batch cut into parts
    of at most `max_tokens` padded tokens (memory.split_by_tokens; at least one row a part)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    passes = []
    for start in range(0, len(order), batch_size):
        batch = [_Sized(i, lengths[i]) for i in order[start : start + batch_size]]
        passes += [[item.index for item in part] for part in memory.split_by_tokens(batch, max_tokens)]
    return passes


def answer_batches(
    lengths: list[int],
    *,
    batch_size: int,
    new_tokens: int,
    row_tokens: int = 0,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Indices of the prompts of each generation batch: sorted by prompt length, `batch_size` at a time, each cut
    into parts whose rows x (longest prompt + `new_tokens` + `row_tokens`) stay within `max_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = []
    for start in range(0, len(order), batch_size):
        batch = [_Sized(i, lengths[i] + new_tokens + row_tokens) for i in order[start : start + batch_size]]
        batches += [[item.index for item in part] for part in memory.split_by_tokens(batch, max_tokens)]
    return batches


def perplexity(loss: float) -> float | None:
    """exp(loss); None when it would overflow (JSON has no infinity)."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else None


@torch.no_grad()  # no graph kept: an evaluation batch needs less memory than the training batch of its rows
def eval_loss(
    model,
    examples: list[Example],
    *,
    device: torch.device,
    pad_id: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    on_batch: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over the answer tokens of `examples`, and the number of those tokens.
    No pass holds more than `batch_size` rows, nor more than `max_tokens` padded tokens (but one row). `on_batch()`
    is called before each pass (the caller's cancel check: it may raise)."""
    from modelfactory.training.loop import answer_loss_sum, autocast, collate

    if not examples:
        return float("nan"), 0
    was_training = model.training
    model.eval()
    passes = loss_passes([e.n_tokens for e in examples], batch_size=batch_size, max_tokens=max_tokens)
    total, count = 0.0, 0
    try:
        for indices in passes:
            if on_batch:
                on_batch()
            group = [examples[i] for i in indices]
            ids, labels = collate(group, pad_id=pad_id, device=device)
            with autocast(device):
                loss_sum, n = answer_loss_sum(model, ids, labels)
            total += float(loss_sum)
            count += n
            del ids, labels, loss_sum
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
    batch_size: int = ANSWER_BATCH,
    max_tokens: int | None = None,
    row_tokens: int = 0,
    on_batch: Callable[[], None] | None = None,
) -> list[str]:
    """Greedy answers to many prompts, `batch_size` at a time, left-padded, prompts of similar length together:
    one forward pass per new token for a whole batch instead of one per row. A batch whose rows x (longest prompt
    + `max_new_tokens` + `row_tokens`, what a row's logits cost in tokens) is over `max_tokens` goes in parts (at
    least one row each). `on_batch()` is called before each batch (the caller's cancel check: it may raise)."""
    from modelfactory.training.loop import autocast

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in rendered_prompts]
    answers: list[str] = [""] * len(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = answer_batches(
        [len(ids) for ids in encoded], batch_size=batch_size, new_tokens=max_new_tokens, row_tokens=row_tokens,
        max_tokens=max_tokens,
    )  # fmt: skip
    for group in batches:
        if on_batch:
            on_batch()
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
        del ids, mask, out
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
    memory_budget: int | None = None,
    memory_free: int | None = None,
    phase: str = "evaluating",
    on_batch: Callable[[], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Held-out loss/perplexity with the adapter off (base) and on (tuned), and greedy answers from both to up to
    `max_answers` held-out rows, each scored against the row's answer (verdict.score_rows): {"base_eval_loss",
    "eval_loss", "base_perplexity", "perplexity", "eval_tokens", "answers_scored", "base_exact_match",
    "exact_match", "base_token_f1", "token_f1", "samples": [{"row_id", "prompt", "reference", "base", "tuned",
    "base_exact", "tuned_exact", "base_f1", "tuned_f1"}]}. Answers are capped at the longest reference's length
    plus a margin (and `max_new_tokens`), so a rambling model does not make the check slow.

    With `memory_budget` (bytes), no pass holds more than `pass_limits` allows in it (the same results, in more
    passes); with `memory_free` too (all the memory the stage could add), a row that needs more than that on its
    own raises TrainingError, naming `phase` and what to lower, before anything runs. `on_plan(passes)` is told
    the number of passes of both sides once they are planned; `on_batch()` runs before every pass of either side
    (the job's cancel check: it may raise)."""
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
    rendered = [text for _, _, text, _ in prompts]
    prompt_lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered]
    width = max(prompt_lengths, default=0) + answer_tokens
    limits = pass_limits(model, memory_budget, device=device, answer_width=width) if memory_budget is not None else None
    if limits is not None and memory_free is not None:
        _refuse_rows_too_large(eval_examples, prompt_lengths, answer_tokens, limits, free=memory_free, phase=phase)
    loss_limit = limits.loss_tokens if limits else None
    answer_limit, row_tokens = (limits.answer_tokens, limits.answer_row_tokens) if limits else (None, 0)
    answer_batch = max(batch_size, ANSWER_BATCH)
    if on_plan is not None:
        losses = loss_passes([e.n_tokens for e in eval_examples], batch_size=batch_size, max_tokens=loss_limit)
        answering = answer_batches(
            prompt_lengths, batch_size=answer_batch, new_tokens=answer_tokens, row_tokens=row_tokens,
            max_tokens=answer_limit,
        )  # fmt: skip
        on_plan(2 * (len(losses) + len(answering)))
    results: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    for side in ("base", "tuned"):
        context = model.disable_adapter() if side == "base" else nullcontext()
        with context:
            loss, tokens = eval_loss(
                model, eval_examples, device=device, pad_id=pad_id, batch_size=batch_size, max_tokens=loss_limit,
                on_batch=on_batch,
            )  # fmt: skip
            answers[side] = greedy_answers(
                model, tokenizer, rendered, device=device, max_new_tokens=answer_tokens, batch_size=answer_batch,
                max_tokens=answer_limit, row_tokens=row_tokens, on_batch=on_batch,
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


def _refuse_rows_too_large(
    examples: list[Example],
    prompt_lengths: list[int],
    answer_tokens: int,
    limits: PassLimits,
    *,
    free: int,
    phase: str,
) -> None:
    """TrainingError when the longest row's loss pass, or the longest prompt's answer, needs more memory on its own
    than the `free` memory of this stage: it could not run in any pass."""
    from modelfactory.training.loop import TrainingError

    needs = []
    if examples:
        tokens = max(e.n_tokens for e in examples)
        needs.append((tokens * limits.per_loss_token, tokens, False))
    if prompt_lengths:
        tokens = max(prompt_lengths) + answer_tokens
        needs.append(((tokens + limits.answer_row_tokens) * limits.per_answer_token, tokens, True))
    needed, tokens, answering = max(needs, default=(0.0, 0, False))
    if needed > free:
        raise TrainingError(
            memory.row_too_large_message(phase=phase, tokens=tokens, needed=needed, free=free, answering=answering)
        )
