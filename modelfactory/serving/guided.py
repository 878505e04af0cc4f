"""Constrained decoding for JSON answers (OpenAI's response_format json_object / json_schema): llguidance computes,
before each token, which tokens keep the answer a valid prefix of JSON matching the schema; the others are masked
out of that row's logits. JSON is written compactly (no free whitespace), so a small model cannot wander off into
blank space. Plain torch, no Django."""

from __future__ import annotations

import json
import threading

import torch

from .types import InvalidRequest

ANY_OBJECT = {"type": "object"}
_JSON_OPTIONS = {"whitespace_flexible": False}


def grammar_for(schema: dict) -> str:
    """The llguidance grammar for a JSON schema, or InvalidRequest naming what the schema gets wrong."""
    import llguidance

    if not isinstance(schema, dict):
        raise InvalidRequest("The JSON schema must be an object.", code="invalid_response_format")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_JSON_OPTIONS)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"The JSON schema cannot be used: {exc}", code="invalid_response_format") from None
    if is_error:
        raise InvalidRequest(f"The JSON schema cannot be used: {'; '.join(messages)}", code="invalid_response_format")
    return grammar


class GuideTokenizer:
    """llguidance's view of a warm model's vocabulary: built once per model (about a second), shared by rows."""

    _lock = threading.Lock()

    def __init__(self, tokenizer, *, vocab_size: int, eos_token_ids):
        import llguidance.hf

        self.vocab_size = vocab_size
        with self._lock:
            self.lltokenizer = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=vocab_size, eos_token=list(eos_token_ids)
            )


class Guide:
    """One row's grammar state: `mask(logits)` before choosing, `consume(token)` after; `done` once the JSON is
    complete (the row then ends with finish "stop")."""

    def __init__(self, tokenizer: GuideTokenizer, grammar: str):
        import llguidance

        self.vocab_size = tokenizer.vocab_size
        self.matcher = llguidance.LLMatcher(tokenizer.lltokenizer, grammar)
        self.bitmask = torch.zeros((1, (self.vocab_size + 31) // 32), dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        row = self.bitmask[0]  # llguidance writes the allowed-token bits straight into this CPU buffer
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        allowed = ((self.bitmask[0].unsqueeze(-1) >> self._bits) & 1).flatten()[: logits.shape[-1]].bool()
        if not allowed.any():  # the grammar has nothing left to allow: leave the logits (the row stops)
            return logits
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()
