"""The batched decode loop: left-padded prefill, a KV cache, one forward pass per step for every running row
whatever its adapter, per-row sampling, streaming and cancellation. New rows can join a running batch between
steps (their prefill runs alone, then their cache is left-padded and concatenated onto the running one).

An Engine is driven by one thread at a time (`generate`, or the Batcher's worker thread)."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch

from . import controls, guided, tools
from .adapters import AdapterCache, adapter_key, check_adapter_folder
from .decoding import IncrementalDecoder
from .lora import LoraRunner
from .types import (
    BASE,
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
)
from .warm import WarmModel

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
TOOL_ROLE = "tool"  # a tool's result, in a conversation with tool calls (see tools.py)


@dataclass
class Prepared:
    """A validated, tokenized request. `tag` is free for the caller (the Batcher keeps its ticket there)."""

    request: GenerationRequest
    prompt_ids: list[int]
    adapter_key: str | None
    tag: object = None
    grammar: str | None = None  # the compiled JSON constraint (response_format), if any


@dataclass
class _Row:
    prepared: Prepared
    adapter_name: str
    decoder: IncrementalDecoder
    generator: torch.Generator | None
    stop: controls.StopFilter
    guide: object = None  # a grammar matcher (response_format), or None
    generated: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # the decoder's text length after each generated token
    logprobs: list[dict] = field(default_factory=list)
    text: str = ""  # what has been released to the caller
    finish_reason: str | None = None

    @property
    def last_token(self) -> int:
        return self.generated[-1]


Finished = list[tuple[Prepared, GenerationResult]]


class Engine:
    """Validates requests and runs the decode loop. `generate(requests)` is the synchronous entry point; `admit`,
    `step` and `abort` are the step-level API the Batcher uses for continuous batching."""

    def __init__(
        self,
        warm: WarmModel,
        adapters: AdapterCache | None = None,
        *,
        max_new_tokens_cap: int = 1024,
        lora_mode: str = "gathered",
    ):
        if max_new_tokens_cap < 1:
            raise ValueError(f"max_new_tokens_cap must be at least 1 (got {max_new_tokens_cap}).")
        self.warm = warm
        self.adapters = adapters
        self.max_new_tokens_cap = max_new_tokens_cap
        self.runner = LoraRunner(warm, adapters, mode=lora_mode)
        self.can_join = True  # cleared if the model's cache cannot be merged (see _merge_cache)
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [rows, cached length] 1 = real token
        self._positions: torch.Tensor | None = None  # [rows] position of each row's next token
        self.forward_passes = 0
        self.prefills = 0
        self._guide_tokenizer: guided.GuideTokenizer | None = None

    # --- validation --------------------------------------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Checks and tokenizes a request; raises InvalidRequest (or AdapterLoadError for a missing adapter)."""
        max_new = request.max_new_tokens
        if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= self.max_new_tokens_cap:
            raise InvalidRequest(
                f"max_new_tokens must be a whole number from 1 to {self.max_new_tokens_cap} (got {max_new!r}).",
                code="invalid_max_new_tokens",
            )
        temperature = request.temperature
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise InvalidRequest(
                f"temperature must be a number >= 0; 0 means greedy decoding (got {temperature!r}).",
                code="invalid_temperature",
            )
        top_p = request.top_p
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise InvalidRequest(f"top_p must be > 0 and <= 1 (got {top_p!r}).", code="invalid_top_p")
        controls.validate_controls(request, vocab_size=self.warm.model.config.vocab_size)
        text = self._prompt_text(request)
        with self.warm.tokenizer_lock:
            ids = self.warm.tokenizer(text, add_special_tokens=isinstance(request.prompt, str))["input_ids"]
        context = self.warm.context_length
        if len(ids) >= context:
            raise InvalidRequest(
                f"The prompt is {len(ids)} tokens long; this model's context length is {context} tokens.",
                code="prompt_too_long",
            )
        if len(ids) + max_new > context:
            raise InvalidRequest(
                f"The prompt ({len(ids)} tokens) plus max_new_tokens ({max_new}) is {len(ids) + max_new} tokens, "
                f"over this model's context length of {context} tokens: ask for at most {context - len(ids)} "
                f"new tokens or shorten the prompt.",
                code="prompt_too_long",
            )
        key = None
        if request.adapter is not None:
            if self.adapters is None:
                raise InvalidRequest("This engine serves the base model only (no adapter cache).", code="no_adapters")
            key = adapter_key(check_adapter_folder(request.adapter))
        grammar = None if request.json_schema is None else guided.grammar_for(request.json_schema)
        if request.tools:
            if grammar is not None and request.tool_choice != "none":
                raise InvalidRequest("A JSON response format cannot be combined with tool calls.", code="invalid_tools")
            grammar = grammar or tools.tool_grammar(request.tools, request.tool_choice)
        return Prepared(request=request, prompt_ids=list(ids), adapter_key=key, grammar=grammar)

    def _prompt_text(self, request: GenerationRequest) -> str:
        prompt = request.prompt
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidRequest("The prompt is empty.", code="empty_prompt")
            return prompt
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise InvalidRequest("The prompt is empty: give text or a list of chat messages.", code="empty_prompt")
        for index, message in enumerate(prompt):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise InvalidRequest(
                    f"Message {index} must be an object with a text 'content'.", code="invalid_messages"
                )
            if message.get("role") not in (*ROLES, TOOL_ROLE):
                raise InvalidRequest(
                    f"Message {index} has role {message.get('role')!r}; use one of {', '.join(ROLES)}.",
                    code="invalid_messages",
                )
        if not any(message["content"].strip() for message in prompt):
            raise InvalidRequest("The prompt is empty: every message has empty content.", code="empty_prompt")
        with self.warm.tokenizer_lock:
            return self.warm.tokenizer.apply_chat_template(
                tools.template_messages(prompt), tools=request.tools or None, tokenize=False, add_generation_prompt=True
            )

    def _guides(self) -> guided.GuideTokenizer:
        if self._guide_tokenizer is None:
            self._guide_tokenizer = guided.GuideTokenizer(
                self.warm.tokenizer, vocab_size=self.warm.model.config.vocab_size, eos_token_ids=self.warm.eos_token_ids
            )
        return self._guide_tokenizer

    # --- synchronous API ---------------------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Runs the requests as one batch; results in request order. Every request is validated before any work."""
        if self._rows:
            raise RuntimeError("This engine is already running a batch (use a Batcher for concurrent callers).")
        prepared = [self.prepare(request) for request in requests]
        for index, item in enumerate(prepared):
            item.tag = index
        results: list[GenerationResult | None] = [None] * len(prepared)
        try:
            done, failed = self.admit(prepared)
            if failed:
                raise failed[0][1]
            while True:
                for item, result in done:
                    results[item.tag] = result
                if not self._rows:
                    break
                done = self.step()
        except BaseException:
            self.abort()
            raise
        return results

    # --- step-level API ----------------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._rows)

    def admit(self, prepared: list[Prepared]) -> tuple[Finished, list[tuple[Prepared, Exception]]]:
        """Prefills new requests and adds them to the running batch. Returns the requests already finished (cancelled
        before starting, or done after one token) and those whose adapter failed to load (with the error)."""
        if self._rows and not self.can_join:
            raise RuntimeError("This model's cache cannot take new rows mid-batch; admit only when idle.")
        finished: Finished = []
        failed: list[tuple[Prepared, Exception]] = []
        rows: list[_Row] = []
        for item in prepared:
            if item.request.cancelled.is_set():
                finished.append((item, self.cancelled_result(item)))
                continue
            try:
                name = self.adapters.acquire(item.adapter_key) if item.adapter_key else BASE
            except Exception as exc:  # the adapter failed to load: only this request fails
                failed.append((item, exc))
                continue
            generator = None
            if item.request.seed is not None:
                generator = torch.Generator(device=self.warm.device).manual_seed(item.request.seed)
            decoder = IncrementalDecoder(self.warm.tokenizer)
            row = _Row(item, name, decoder, generator, controls.StopFilter(item.request.stop))
            row.guide = None if item.grammar is None else guided.Guide(self._guides(), item.grammar)
            rows.append(row)
        if not rows:
            return finished, failed
        try:
            cache, mask, positions, logits = self._prefill(rows)
        except BaseException:
            for row in rows:
                self._release(row)
            raise
        self._sample_and_stream(rows, logits)
        keep = [i for i, row in enumerate(rows) if row.finish_reason is None]
        finished += [self._finish(row) for row in rows if row.finish_reason is not None]
        if keep:
            if len(keep) < len(rows):
                cache, mask, positions = _select(cache, mask, positions, keep)
            self._merge(cache, mask, positions, [rows[i] for i in keep])
        return finished, failed

    def step(self) -> Finished:
        """One decode step for every running row (one forward pass)."""
        finished: Finished = []
        cancelled = [i for i, row in enumerate(self._rows) if row.prepared.request.cancelled.is_set()]
        if cancelled:
            for i in cancelled:
                self._rows[i].finish_reason = FINISH_CANCELLED
            finished += self._remove_finished()
        if not self._rows:
            return finished
        device = self.warm.device
        tokens = torch.tensor([[row.last_token] for row in self._rows], device=device)
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=device)], dim=1)
        with torch.inference_mode():
            out = self.runner.forward(
                [row.adapter_name for row in self._rows],
                input_ids=tokens,
                attention_mask=mask,
                position_ids=self._positions.view(-1, 1),
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.forward_passes += 1
        self._cache = out.past_key_values
        self._mask = mask
        self._positions = self._positions + 1
        self._sample_and_stream(self._rows, out.logits[:, -1, :])
        finished += self._remove_finished()
        return finished

    def abort(self) -> list[Prepared]:
        """Drops every running row (after an error in a forward pass); returns their requests."""
        rows, self._rows = self._rows, []
        for row in rows:
            self._release(row)
        self._cache = self._mask = self._positions = None
        return [row.prepared for row in rows]

    # --- internals ---------------------------------------------------------------------------------------------

    def _prefill(self, rows: list[_Row]):
        device = self.warm.device
        length = max(len(row.prepared.prompt_ids) for row in rows)
        ids = torch.full((len(rows), length), self.warm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            prompt = row.prepared.prompt_ids
            ids[i, length - len(prompt) :] = torch.tensor(prompt)
            mask[i, length - len(prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.runner.forward(
                [row.adapter_name for row in rows],
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
        self.forward_passes += 1
        self.prefills += 1
        from transformers.cache_utils import DynamicLayer

        # Joining rows means padding and concatenating plain growing caches; other layouts run batch by batch.
        self.can_join = all(type(layer) is DynamicLayer for layer in out.past_key_values.layers)
        positions = mask.sum(-1)
        return out.past_key_values, mask, positions, out.logits[:, -1, :]

    def _merge(self, cache, mask, positions, rows: list[_Row]) -> None:
        if not self._rows:
            self._cache, self._mask, self._positions, self._rows = cache, mask, positions, rows
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        length = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            for attr in ("keys", "values"):
                merged = torch.cat(
                    [
                        _pad_left(getattr(old_layer, attr), length, dim=2),
                        _pad_left(getattr(new_layer, attr), length, dim=2),
                    ]
                )
                setattr(old_layer, attr, merged)
        self._mask = torch.cat([_pad_left(self._mask, length, dim=1), _pad_left(mask, length, dim=1)])
        self._positions = torch.cat([self._positions, positions])
        self._rows = self._rows + rows

    def _remove_finished(self) -> Finished:
        keep = [i for i, row in enumerate(self._rows) if row.finish_reason is None]
        if len(keep) == len(self._rows):
            return []
        done = [self._finish(row) for row in self._rows if row.finish_reason is not None]
        if keep:
            self._cache, self._mask, self._positions = _select(self._cache, self._mask, self._positions, keep)
            self._rows = [self._rows[i] for i in keep]
            self._trim()
        else:
            self._rows = []
            self._cache = self._mask = self._positions = None
        return done

    def _trim(self) -> None:
        """Drops leading cache columns that are padding for every remaining row."""
        real = self._mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else 0
        if start == 0:
            return
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[:, :, start:]
            layer.values = layer.values[:, :, start:]

    def _sample_and_stream(self, rows: list[_Row], logits: torch.Tensor) -> None:
        logits = logits.float()
        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):  # per-row controls, inside the batch
            request = row.prepared.request
            row_logits = logits[i]
            if controls.needs_adjusting(request):
                row_logits = controls.adjust_logits(row_logits, request, row.generated)
            if row.guide is not None:
                row_logits = row.guide.mask(row_logits)
            if controls.needs_adjusting(request) or row.guide is not None:
                chosen[i] = int(row_logits.argmax())
            if request.temperature > 0:
                chosen[i] = controls.sample(row_logits, request.temperature, request.top_p, row.generator)
            if row.guide is not None:
                row.guide.consume(chosen[i])
            if request.top_logprobs is not None:
                with self.warm.tokenizer_lock:
                    entry = controls.token_logprobs(row_logits, chosen[i], request.top_logprobs, self.warm.tokenizer)
                row.logprobs.append(entry)
        eos = self.warm.eos_token_ids
        for token, row in zip(chosen, rows, strict=True):
            request = row.prepared.request
            if token in eos:
                row.finish_reason = FINISH_STOP
                row.logprobs[len(row.generated) :] = []
                continue
            row.generated.append(token)
            delta = row.decoder.push(token)
            row.lengths.append(len(row.decoder.text))
            if delta and not self._release_text(row, delta):
                continue
            if row.finish_reason is None and row.guide is not None and row.guide.done:
                row.finish_reason = FINISH_STOP
            if row.finish_reason is None and len(row.generated) >= request.max_new_tokens:
                row.finish_reason = FINISH_LENGTH

    def _release_text(self, row: _Row, delta: str) -> bool:
        """Passes decoded text through the row's stop strings to the caller; False if the consumer is gone."""
        text, stopped = row.stop.push(delta)
        return self._emit(row, text, stopped=stopped)

    def _emit(self, row: _Row, text: str, *, stopped: bool) -> bool:
        """Hands released text to the caller. At a stop string the row ends (finish "stop") and keeps only the
        tokens that made the released text: the caller pays for nothing after it."""
        row.text += text
        delivered = not text or row.prepared.request.on_delta is None or self._deliver(row, text)
        if stopped and row.finish_reason != FINISH_CANCELLED:
            row.finish_reason = FINISH_STOP
            keep = (
                next((n + 1 for n, length in enumerate(row.lengths) if length >= len(row.text)), 0) if row.text else 0
            )
            del row.generated[keep:], row.logprobs[keep:]
        return delivered

    def _deliver(self, row: _Row, delta: str) -> bool:
        try:
            row.prepared.request.on_delta(delta)
            return True
        except Exception:  # the consumer is gone (e.g. a closed connection): stop this row only
            logger.info("stream consumer failed; cancelling that request", exc_info=True)
            row.prepared.request.cancel()
            row.finish_reason = FINISH_CANCELLED
            return False

    def _finish(self, row: _Row) -> tuple[Prepared, GenerationResult]:
        self._release(row)
        if row.finish_reason != FINISH_CANCELLED and not row.stop.stopped:
            tail = row.decoder.flush()
            if tail and row.lengths:
                row.lengths[-1] = len(row.decoder.text)
            text, stopped = row.stop.push(tail)
            self._emit(row, text if stopped else text + row.stop.flush(), stopped=stopped)
        result = self._result(row.prepared, row.generated, row.text, row.finish_reason)
        if row.prepared.request.top_logprobs is not None:
            result = dataclasses.replace(result, logprobs=tuple(row.logprobs[: len(row.generated)]))
        return row.prepared, result

    def _release(self, row: _Row) -> None:
        if row.adapter_name != BASE:
            self.adapters.release(row.adapter_name)
            row.adapter_name = BASE

    @classmethod
    def cancelled_result(cls, item: Prepared) -> GenerationResult:
        return cls._result(item, [], "", FINISH_CANCELLED)

    @staticmethod
    def _result(item: Prepared, generated: list[int], text: str, reason: str) -> GenerationResult:
        return GenerationResult(
            text=text,
            token_ids=tuple(generated),
            prompt_tokens=len(item.prompt_ids),
            completion_tokens=len(generated),
            finish_reason=reason,
            adapter=item.adapter_key,
        )


def _pad_left(tensor: torch.Tensor, length: int, *, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _select(cache, mask, positions, keep: list[int]):
    index = torch.tensor(keep, device=mask.device)
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
    return cache, mask.index_select(0, index), positions.index_select(0, index)
