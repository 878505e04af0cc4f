"""Per-row controls of the decode loop, applied inside a batch row by row: stop strings (text held back while it may
still turn into one), presence/frequency penalties and logit bias (as OpenAI documents them), log-probabilities
of the chosen and the likeliest tokens, and sampling. Plain torch, no Django."""

from __future__ import annotations

import math
from collections import Counter

import torch

from .types import GenerationRequest, InvalidRequest

MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_controls(request: GenerationRequest, *, vocab_size: int) -> None:
    """Raises InvalidRequest naming the first control that is out of range."""
    stop = request.stop
    if not isinstance(stop, (list, tuple)) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest(f"stop must be up to {MAX_STOPS} non-empty strings (got {stop!r}).", code="invalid_stop")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if not _number(value) or not -2 <= value <= 2:
            raise InvalidRequest(f"{name} must be a number from -2 to 2 (got {value!r}).", code=f"invalid_{name}")
    for token, bias in (request.logit_bias or {}).items():
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            raise InvalidRequest(
                f"logit_bias keys must be token ids from 0 to {vocab_size - 1} (got {token!r}).",
                code="invalid_logit_bias",
            )
        if not _number(bias) or not -100 <= bias <= 100:
            raise InvalidRequest(
                f"logit_bias values must be numbers from -100 to 100 (got {bias!r} for token {token}).",
                code="invalid_logit_bias",
            )
    top = request.top_logprobs
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise InvalidRequest(
            f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS} (got {top!r}).",
            code="invalid_top_logprobs",
        )
    seed = request.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidRequest(f"seed must be a whole number from 0 to 2^63 - 1 (got {seed!r}).", code="invalid_seed")


def adjust_logits(logits: torch.Tensor, request: GenerationRequest, generated: list[int]) -> torch.Tensor:
    """One row's logits after logit_bias and the penalties: for each token j already in the answer c[j] times,
    logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty."""
    if request.logit_bias:
        ids = torch.tensor(list(request.logit_bias), device=logits.device)
        bias = torch.tensor(list(request.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        logits = logits.index_add(0, ids, bias)
    if (request.presence_penalty or request.frequency_penalty) and generated:
        counts = Counter(generated)
        ids = torch.tensor(list(counts), device=logits.device)
        seen = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
        penalty = seen * request.frequency_penalty + request.presence_penalty
        logits = logits.index_add(0, ids, -penalty)
    return logits


def needs_adjusting(request: GenerationRequest) -> bool:
    return bool(request.logit_bias or request.presence_penalty or request.frequency_penalty)


def sample(logits: torch.Tensor, temperature: float, top_p: float | None, generator) -> int:
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        pick = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def token_logprobs(logits: torch.Tensor, chosen: int, top: int, tokenizer) -> dict:
    """OpenAI's logprobs entry for one generated token: the chosen token's log-probability (of the logits after bias
    and penalties, before temperature) and the `top` likeliest tokens'."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    entry = _token_entry(tokenizer, chosen, float(logprobs[chosen]))
    values, ids = logprobs.topk(top) if top else (logprobs[:0], logprobs[:0].long())
    entry["top_logprobs"] = [
        _token_entry(tokenizer, int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
    ]
    return entry


class StopFilter:
    """Releases an answer's text while holding back any tail that may still become a stop string. `push` returns
    (text to release, stopped); once stopped, the text from the stop string on is dropped."""

    def __init__(self, stops):
        self.stops = tuple(stops)
        self.held = ""
        self.stopped = False

    def push(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self.held + delta
        found = [text.find(s) for s in self.stops if s in text]
        if found:
            self.held, self.stopped = "", True
            return text[: min(found)], True
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])),
                   default=0)  # fmt: skip
        self.held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held
