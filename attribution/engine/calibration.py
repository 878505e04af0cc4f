"""The noise floor's calibration queries: permutation nulls (`null_queries`) and fluent ones (`fluent_queries`:
the tuned model's own greedy answers to everyday questions).

Every answer the engine attributes is an answer the model generated: fluent text in the model's own style, with
the low loss such text has. Answers of random tokens (the permutation nulls of `index.null_queries`) sit far
below what any fluent answer reaches, so a floor calibrated on them alone credits every fluent answer, related to
the data or not. The model's greedy answers to `CALIBRATION_PROMPTS`, general questions that a datanet is unlikely
to be about, are the unrelated answers the floor is measured on as well.

Deterministic: greedy decoding (no sampling) of fixed prompts; the index stores the token ids it scored, so an
auditor can recompute their features from the stored tokens and regenerate the tokens from the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from attribution.engine.lora import IGNORE_INDEX, EngineError

# General questions, many subjects, one to a line. Never change this list in place: the index records its digest
# (`prompts_digest`) and a changed list is a new calibration set (write a new list and a new index format).
CALIBRATION_PROMPTS = (
    "What is photosynthesis?",
    "How do I make a cup of coffee with a French press?",
    "Write two sentences about the sea at night.",
    "What causes the seasons on Earth?",
    "How do I add two numbers in JavaScript?",
    "What is the capital of Japan?",
    "Give me three tips for sleeping better.",
    "Who was Albert Einstein?",
    "What is a noun?",
    "How does a rainbow form?",
    "Write a haiku about snow.",
    "What is the square root of 81?",
    "How do vaccines work?",
    "Suggest a name for a small bakery.",
    "What is the speed of light?",
    "How do I boil an egg?",
    "What is the difference between a virus and a bacterium?",
    "Describe a cat in one sentence.",
    "What year did the Second World War end?",
    "How can I save money on groceries?",
    "What is gravity?",
    "Explain what an API is in simple words.",
    "What is the longest river in Africa?",
    "How do I say thank you in Spanish?",
    "What are the three states of matter?",
    "Write a short thank-you note to a teacher.",
    "Why do leaves change colour in autumn?",
    "What is a democracy?",
    "How many continents are there?",
    "What does a heart do?",
    "Give me a fun fact about octopuses.",
    "How do I centre text in HTML?",
    "What is inflation in economics?",
    "Who discovered penicillin?",
    "What is the main ingredient of guacamole?",
    "How far is the Moon from the Earth?",
    "What should I pack for a beach holiday?",
    "What is a verb? Give an example.",
    "How do solar panels make electricity?",
    "Tell me a short joke.",
    "What is the freezing point of water in Fahrenheit?",
    "Which planet is closest to the Sun?",
    "How do I stay focused while studying?",
    "What is the plural of mouse?",
    "Summarise the story of Cinderella in two sentences.",
    "What is 15 plus 27?",
    "Why do we need to drink water?",
    "What is the capital of Canada?",
)
CALIBRATION_MAX_NEW_TOKENS = 48
Row = tuple[int, Sequence[int], Sequence[int]]  # (row_id, input_ids, labels), as index.Row


def null_queries(rows: Sequence[Row], count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Permutation-null queries: the prompt of a random training row followed by an answer of a random row's
    length whose tokens are drawn at random from all rows' answer tokens. Such an answer uses the datanet's own
    vocabulary (and so shares its generic gradient directions) but repeats no row's content: whatever credit it
    gets is noise. Fixed seed: an auditor regenerates the same queries."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 2])))
    pool = np.asarray([t for _, ids, labels in rows for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    starts = [next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX) for _, _, labels in rows]
    lengths = [sum(lab != IGNORE_INDEX for lab in labels) for _, _, labels in rows]
    queries = []
    for _ in range(count):
        prompt_row, length_row = rng.integers(len(rows), size=2)
        prompt = list(rows[prompt_row][1][: starts[prompt_row]])
        answer = rng.choice(pool, size=lengths[length_row]).tolist()
        queries.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    return queries


def prompts_digest(prompts: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


CALIBRATION_BATCH = 16  # prompts generated together, in list order (fixed: an auditor regroups them the same way)


@torch.no_grad()
def fluent_queries(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int = CALIBRATION_MAX_NEW_TOKENS,
    batch: int = CALIBRATION_BATCH,
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per prompt: the prompt's tokens, then the model's greedy answer (labels on the answer
    only, without the end-of-sequence token, as the serving engine records answers). Prompts go through in groups
    of `batch`, in the order given, left-padded, with cached keys and values: one prompt at a time took minutes of
    a CPU index build for 48 prompts. The grouping is fixed, so the same model regenerates the same tokens."""
    if not eos_ids:
        raise EngineError("Fluent calibration needs the tokenizer's end-of-sequence token id.")
    if any(not prompt for prompt in prompts):
        raise EngineError("A calibration prompt has no tokens.")
    stop = {int(t) for t in eos_ids}
    was_training = model.training
    model.eval()
    queries = []
    try:
        for start in range(0, len(prompts), batch):
            group = [list(p) for p in prompts[start : start + batch]]
            for prompt, answer in zip(group, _greedy(model, group, stop, int(eos_ids[0]), max_new_tokens), strict=True):
                answer = answer or [int(eos_ids[0])]
                queries.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    finally:
        model.train(was_training)
    return queries


def _greedy(model: nn.Module, prompts: list[list[int]], stop: set[int], pad: int, max_new_tokens: int):
    """Greedy answers to left-padded prompts, each ending at its first stop token (not included)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    answers: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    past, step_ids, step_positions = None, ids, positions
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_positions, past_key_values=past, use_cache=True
        )
        past = out.past_key_values
        chosen = out.logits[:, -1].float().argmax(-1).tolist()
        for i, token in enumerate(chosen):
            if not finished[i]:
                if token in stop:
                    finished[i] = True
                else:
                    answers[i].append(token)
        if all(finished):
            break
        step_ids = torch.tensor([[pad if done else t] for t, done in zip(chosen, finished, strict=True)], device=device)
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        step_positions = step_positions[:, -1:] + 1
    return answers


def calibration_prompt_ids(tokenizer, prompts: Sequence[str] = CALIBRATION_PROMPTS) -> list[list[int]]:
    """The prompts' token ids as the product records an answer's prompt: the tokenizer's chat template with the
    assistant turn open (modelfactory.services.inference_requests), or "Q: ...\\nA: " for a model without one."""
    out = []
    for prompt in prompts:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"Q: {prompt}\nA: "
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def eos_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """The tokens that end an answer, as the serving engine stops on them (generation config, then tokenizer)."""
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    return ids


def calibration_inputs(model: nn.Module, tokenizer) -> dict:
    """What `build_index` needs for the fluent calibration of this model: the prompts' token ids, the end tokens,
    and the record of how they were made (stored with the index: an auditor regenerates the same queries)."""
    return {
        "calibration_prompts": calibration_prompt_ids(tokenizer),
        "eos_ids": eos_token_ids(model, tokenizer),
        "calibration": {
            "prompts": len(CALIBRATION_PROMPTS),
            "prompts_sha256": prompts_digest(CALIBRATION_PROMPTS),
            "decoding": "greedy",
            "max_new_tokens": CALIBRATION_MAX_NEW_TOKENS,
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        },
    }
