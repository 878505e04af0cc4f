"""Inference, the web side's wait: the worker's events for one answer (streamed to the client or awaited whole),
and the acknowledgement of how much of a streamed answer reached the client."""

from __future__ import annotations

from django.conf import settings

from modelfactory import streams
from modelfactory.models import Inference
from modelfactory.services.errors import ServingRefused
from modelfactory.services.inference_requests import UNREACHABLE
from modelfactory.services.inference_worker import _channel, _generation_error_message, inference_fail

ERROR_STATUS = {"server_unreachable": 503, "timeout": 504, "generation_failed": 500}


def inference_events(*, channel: str, inference_id: int | None = None):
    """The web side: yields the worker's events for one answer, ending with `done` or `error`. If no worker picks
    the job up (or it stops answering) within the timeouts, the inference is failed (hold released) and an
    `error` event with code server_unreachable / timeout ends the stream."""
    try:
        # An `error` event comes after the worker failed the inference (or, if its database writes failed, the
        # inference stays pending until inference_reap_stale releases it).
        yield from streams.read(
            channel,
            start_timeout=settings.MF_INFERENCE_START_TIMEOUT_SECONDS,
            timeout=settings.MF_INFERENCE_TIMEOUT_SECONDS,
        )
    except streams.ChannelTimeout as exc:
        code, message = ("timeout", _generation_error_message(TimeoutError())[1]) if exc.started else (
            "server_unreachable", UNREACHABLE)  # fmt: skip
        if inference_id is not None:
            inference_fail(inference_id=inference_id, error=message)
        yield {"type": "error", "code": code, "message": message}


def inference_stream_ack(*, inference_id: int, delivered: int, cancelled: bool) -> None:
    """The web side tells the worker how many text deltas reached the client (see the billing rule in
    inference_requests)."""
    streams.acknowledge(_channel(inference_id), delivered=delivered, cancelled=cancelled)


def inference_stream_stop(*, inference_id: int, shown: int) -> None:
    """The playground's Stop: the caller's page showed `shown` text deltas and wants no more. The worker cancels the
    answer; the answer recorded and billed is those deltas, never more (a reader's later acknowledgement included)."""
    streams.stop(_channel(inference_id), shown=max(0, shown))


def inference_wait(*, inference: Inference) -> Inference:
    """Waits for a non-streamed answer; returns the completed Inference (with `logprobs`, not stored: the answer's
    log-probabilities when asked for, else None) or raises ServingRefused."""
    logprobs = None
    for event in inference_events(channel=_channel(inference.pk), inference_id=inference.pk):
        if event["type"] == "error":
            raise ServingRefused(event["message"], code=event["code"], status=ERROR_STATUS.get(event["code"], 400))
        if event["type"] == "done":
            logprobs = event.get("logprobs")
    done = Inference.objects.select_related("model", "model_version").get(pk=inference.pk)
    done.logprobs = logprobs
    return done


def inference_channel(inference_id: int) -> str:
    return _channel(inference_id)
