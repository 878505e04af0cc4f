"""Inference, the worker's side: generate with the warm base model and the version's adapter, publish the text
on the answer's stream channel, and complete the inference (the fee owed) or fail it (its hold released); and the
sweep that fails inferences nobody answered. The billing rule is in inference_requests."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone

from common.retry import retry
from ledger.services import hold_release
from modelfactory import hooks, streams
from modelfactory.models import Inference
from modelfactory.services.publishing import fee_for_tokens

logger = logging.getLogger(__name__)
timing_logger = logging.getLogger("modelfactory.timing")


def _channel(inference_id: int) -> str:
    """Unique even if ids are reused (a fresh database next to an old cache): the row's creation time is part."""
    created = Inference.objects.filter(pk=inference_id).values_list("created_at", flat=True).first()
    return f"inference-{inference_id}-{int(created.timestamp() * 1_000_000) if created else 0}"


def _generation_error_message(exc: BaseException) -> tuple[str, str]:
    from modelfactory.serving import ServingError  # the serving package imports torch

    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, TimeoutError):
        return "timeout", "The model took too long to answer; nothing was charged. Try a shorter answer."
    return "generation_failed", "The model server failed while answering; nothing was charged. Try again."


class _ClientGone(Exception):
    """Raised from the delta callback when the streaming client has gone: the engine cancels that answer."""


def _delta_sink(
    publisher: streams.Publisher, *, stream: bool, deltas: list[str], first: list[float]
) -> Callable[[str], None]:
    """The engine's on_delta: keeps each text delta, publishes it (with the time it was sent, for the web side's
    timing of the hop), and (streamed answers) checks every 50 ms whether the web side says the client went away.
    `first` gets the time of the first delta."""
    last_check = [time.monotonic()]

    def on_delta(text: str) -> None:
        deltas.append(text)
        now = time.time()
        if not first:
            first.append(now)
        publisher.publish({"type": "delta", "text": text, "t": now})
        now = time.monotonic()
        if stream and now - last_check[0] >= 0.05:
            last_check[0] = now
            ack = publisher.ack()
            if ack is not None and ack["cancelled"]:
                raise _ClientGone

    return on_delta


def _controls(params: dict) -> dict:
    """The serving engine's per-answer controls stored with the inference (see inference_start)."""
    controls = {key: params[key] for key in CONTROLS if params.get(key) is not None}
    if "logit_bias" in controls:
        controls["logit_bias"] = {int(token): bias for token, bias in controls["logit_bias"].items()}
    for key in ("json_schema", "tools"):  # stored as text, keeping the order of their keys
        if key in controls:
            controls[key] = json.loads(controls[key])
    return controls


CONTROLS = ("stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "top_logprobs", "json_schema",
            "tools", "tool_choice")  # fmt: skip


def inference_generate(*, inference_id: int) -> str:
    """The inference worker's job (the Celery task calls this; tests call it in a thread): generates with the
    warm base model and the version's adapter, publishes text deltas to the stream channel, and completes or fails
    the inference. Returns the final status."""
    from modelfactory import serving_runtime  # torch: only the inference worker loads the model
    from modelfactory.serving import GenerationRequest  # torch, as above

    picked_up = time.time()
    inference = Inference.objects.select_related("model_version", "model__base_model").get(pk=inference_id)
    if inference.status != Inference.Status.PENDING:
        return inference.status  # the web process gave up on it (timeout): nothing to do
    publisher = streams.Publisher(_channel(inference_id))
    publisher.publish({"type": "started"})
    params = inference.parameters
    stream = bool(params.get("stream"))
    deltas: list[str] = []
    first: list[float] = []
    on_delta = _delta_sink(publisher, stream=stream, deltas=deltas, first=first)
    began = time.monotonic()
    try:
        batcher = serving_runtime.batcher_for(inference.model.base_model.path)
        result = batcher.generate(
            GenerationRequest(
                prompt=(inference.retrieval or {}).get("prompt_messages") or inference.messages,
                adapter=inference.model_version.adapter_path,
                max_new_tokens=int(params["max_new_tokens"]),
                temperature=float(params.get("temperature") or 0.0),
                top_p=params.get("top_p"),
                on_delta=on_delta,
                **_controls(params),
            ),
            timeout=settings.MF_INFERENCE_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        logger.exception("inference %s failed", inference_id)
        code, message = _generation_error_message(exc)
        inference_fail(inference_id=inference_id, error=message)
        publisher.publish({"type": "error", "code": code, "message": message})
        return Inference.Status.FAILED
    latency_ms = int((time.monotonic() - began) * 1000)
    _log_timing(inference, picked_up=picked_up, first=first[0] if first else None, tokens=len(result.token_ids))
    text, token_ids, finish_reason = result.text, list(result.token_ids), result.finish_reason
    if stream:
        text, token_ids, finish_reason = _delivered_part(
            publisher, batcher, deltas=deltas, text=text, token_ids=token_ids, finish_reason=finish_reason
        )
    return _record_answer(
        publisher,
        inference_id=inference_id,
        output=text,
        output_token_ids=token_ids,
        finish_reason=finish_reason,
        latency_ms=latency_ms,
        logprobs=None if result.logprobs is None else list(result.logprobs[: len(token_ids)]),
    )


def _log_timing(inference: Inference, *, picked_up: float, first: float | None, tokens: int) -> None:
    """One line per answer on the `modelfactory.timing` logger: where its time went on the worker's side, in ms.
    queue: the row's creation to this worker taking the job (commit, enqueue, broker, a free thread); first_token:
    then to the first text delta (waiting for a place in the batch, prefill, first decode step); generate: first to
    last token."""
    now = time.time()
    timing_logger.info(
        "worker %s",
        json.dumps(
            {
                "inference": inference.pk,
                "queue_ms": round((picked_up - inference.created_at.timestamp()) * 1000),
                "first_token_ms": round(((first or now) - picked_up) * 1000),
                "generate_ms": round((now - (first or now)) * 1000),
                "tokens": tokens,
            }
        ),
    )


def _delivered_part(
    publisher: streams.Publisher, batcher, *, deltas: list[str], text: str, token_ids: list[int], finish_reason: str
) -> tuple[str, list[int], str]:
    """A streamed answer's (text, token ids, finish reason) cut to what the web side says reached the client."""
    from modelfactory import serving_runtime  # torch, as in inference_generate
    from modelfactory.serving import FINISH_CANCELLED

    publisher.publish({"type": "end", "finish_reason": finish_reason})
    ack = publisher.ack() or publisher.wait_ack(settings.MF_STREAM_ACK_SECONDS)
    if ack is not None and ack["delivered"] < len(deltas):
        text = "".join(deltas[: ack["delivered"]])
        token_ids = token_ids[: serving_runtime.delivered_prefix(batcher, token_ids, text)]
    if ack is not None and ack["cancelled"]:
        finish_reason = FINISH_CANCELLED
    return text, token_ids, finish_reason


def _record_answer(
    publisher: streams.Publisher,
    *,
    inference_id: int,
    output: str,
    output_token_ids: list[int],
    finish_reason: str,
    latency_ms: int,
    logprobs: list[dict] | None = None,
) -> str:
    """Completes the inference and publishes `done` with what was billed (and the answer's log-probabilities when
    asked for: they are not stored); returns the inference's status."""
    try:
        done = inference_complete(
            inference_id=inference_id,
            output=output,
            output_token_ids=output_token_ids,
            finish_reason=finish_reason,
            latency_ms=latency_ms,
        )
    except Exception:  # the database is unusable: inference_reap_stale fails it and releases the hold later
        logger.exception("could not record inference %s", inference_id)
        publisher.publish({"type": "error", "code": "generation_failed", "message": _generation_error_message(None)[1]})
        return Inference.Status.PENDING
    if done is None:
        return Inference.objects.get(pk=inference_id).status
    publisher.publish(
        {
            "type": "done",
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "finish_reason": done.finish_reason,
            "fee_micro": done.fee_micro,
            "logprobs": logprobs,
        }  # fmt: skip
    )
    return done.status


def _retry_transient(function):
    """Runs a whole durable transaction again after a transient database error (a deadlock, a serialization
    failure, SQLite's "locked"), up to 5 times with a growing random wait; the functions retried only change rows
    still pending, so a retry is safe."""

    def run(**kwargs):
        return retry(
            lambda: function(**kwargs),
            retryable=lambda exc: isinstance(exc, OperationalError),
            attempts=5,
            delay=lambda failed: random.uniform(0.005, 0.02) * failed,  # noqa: S311 (jitter, not security)
        )

    run.__doc__ = function.__doc__
    return run


@_retry_transient
def inference_complete(
    *, inference_id: int, output: str, output_token_ids: list[int], finish_reason: str, latency_ms: int
) -> Inference | None:
    """Records the answer and the fee owed for the prompt and the delivered tokens (never above the hold), and
    runs the inference-completed handlers in the same transaction. None if the inference was no longer pending
    (the web process had given up on it and released the hold)."""
    with transaction.atomic(durable=True):
        inference = Inference.objects.select_for_update().filter(pk=inference_id, status=Inference.Status.PENDING)
        inference = inference.first()
        if inference is None:
            return None
        # A model may emit a NUL character (tiny or badly tuned ones babble any token); PostgreSQL text cannot hold
        # it, so the record keeps U+FFFD in its place instead of losing the whole answer.
        inference.output = output.replace("\x00", "\ufffd")
        inference.output_token_ids = list(output_token_ids)
        inference.completion_tokens = len(output_token_ids)
        inference.finish_reason = finish_reason
        inference.latency_ms = latency_ms
        owed = fee_for_tokens(
            price_per_1k_tokens=inference.price_per_1k_tokens,
            tokens=inference.prompt_tokens + inference.completion_tokens,
        )
        inference.fee_micro = min(owed, inference.fee_reserved_micro)
        inference.status = Inference.Status.COMPLETED
        inference.completed_at = timezone.now()
        inference.save()
        for handler in hooks.inference_completed_handlers:
            handler(inference=inference)
    return inference


@_retry_transient
def inference_fail(*, inference_id: int, error: str) -> Inference | None:
    """Marks a pending inference failed and gives its hold back in full. None if it was no longer pending."""
    with transaction.atomic(durable=True):
        inference = Inference.objects.select_for_update().filter(pk=inference_id, status=Inference.Status.PENDING)
        inference = inference.first()
        if inference is None:
            return None
        inference.status = Inference.Status.FAILED
        inference.error = error
        inference.fee_micro = 0
        inference.completed_at = timezone.now()
        inference.save(update_fields=["status", "error", "fee_micro", "completed_at"])
        if inference.hold_key:
            hold_release(hold_key=inference.hold_key, memo="Answer failed: fee reservation released")
    return inference


def inference_reap_stale() -> list[int]:
    """Fails (and releases the holds of) inferences left pending long after any answer could still come, e.g. when
    both the web process and the worker died. Cheap: one indexed query, normally empty."""
    limit = settings.MF_INFERENCE_TIMEOUT_SECONDS + settings.MF_STREAM_ACK_SECONDS + 60
    stale = Inference.objects.filter(
        status=Inference.Status.PENDING, created_at__lt=timezone.now() - timedelta(seconds=limit)
    ).values_list("pk", flat=True)
    reaped = []
    for inference_id in list(stale[:100]):
        if inference_fail(inference_id=inference_id, error="No answer came in time; the reservation was released."):
            reaped.append(inference_id)
    return reaped
