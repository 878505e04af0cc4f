"""Plain request/result types and errors of the serving core. No Django, no torch at import time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BASE = "__base__"  # peft's name for "no adapter" rows in a mixed batch

FINISH_STOP = "stop"  # the model emitted an end-of-sequence token
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_CANCELLED = "cancelled"  # the caller cancelled (e.g. a streaming client disconnected)


class ServingError(Exception):
    """Base class of every error the serving core raises on purpose. `code` is a short machine-readable name."""

    code = "serving_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(ServingError, ValueError):
    """The request itself is wrong (empty prompt, too long, bad parameter); the message says what and by how much."""

    code = "invalid_request"


class AdapterLoadError(ServingError):
    """An adapter folder cannot be served (missing files, not a plain LoRA adapter, weights that do not fit)."""

    code = "adapter_load_error"


@dataclass
class GenerationRequest:
    """One generation. `prompt` is raw text or chat messages [{"role": ..., "content": ...}] (the model's chat
    template is applied, with the assistant turn opened). `adapter` is the folder of a peft LoRA adapter trained on
    this base model, or None for the base model. temperature 0 is greedy decoding; `seed` makes sampling repeatable.
    `stop`: up to 4 strings; the answer ends before the first one (finish "stop", the stop text not included).
    `presence_penalty`, `frequency_penalty` (-2..2) and `logit_bias` ({token id: -100..100}) as OpenAI applies them.
    `tools` with `tool_choice`: the answer may be (or must be) one tool call as compact JSON (see tools.py); chat
    messages may then carry assistant `tool_calls` and `tool` results.
    `on_delta` receives each new piece
    of text as soon as it is complete (never half a multi-byte character); if it raises, the request is cancelled.
    Call `cancel()` from any thread to stop generating for this request only."""

    prompt: str | list[dict]
    adapter: str | Path | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | list[str] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    top_logprobs: int | None = None  # None: no log-probabilities; 0: the chosen token's only
    json_schema: dict | None = None  # the answer must be JSON matching it ({} or {"type": "object"}: any object)
    tools: list[dict] | None = None  # OpenAI's tool definitions, rendered by the chat template (see tools.py)
    tool_choice: str | dict = "auto"  # "auto" | "required" | "none" | {"name": tool}: how the answer is constrained
    on_delta: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(frozen=True)
class GenerationResult:
    """`text` is exactly the concatenation of the deltas streamed to `on_delta`. `completion_tokens` counts the tokens
    generated and handed to the stream (for a cancelled request: those delivered before it stopped)."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    adapter: str | None
    logprobs: tuple[dict, ...] | None = None  # per token: {token, logprob, bytes, top_logprobs} (top_logprobs set)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
