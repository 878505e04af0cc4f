"""OpenAI-compatible endpoints under /v1/: chat completions (plain and streamed as server-sent events) and the model
list. Requests and answers follow OpenAI's shapes, errors too ({"error": {message, type, param, code}}), so the
official `openai` client works against us. Thin: parse, call the inference services, render."""

from __future__ import annotations

import json
import logging
import time

from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import known_exception
from core.throttling import ScopedRateThrottle
from modelfactory import openai_params, openai_tools, selectors, services
from modelfactory.models import Inference, TrainedModel

logger = logging.getLogger(__name__)
timing_logger = logging.getLogger("modelfactory.timing")  # per-answer hop times (bench/bench_live_serving.py)

KNOWN_PATHS = ("/v1/chat/completions", "/v1/models")

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}
QUOTA_RETRY_SECONDS = 60  # Retry-After on a lack of credit: adding credit takes a person, not a quick retry


def openai_error(message: str, *, status: int, code: str | None, param: str | None = None) -> dict:
    kind = "insufficient_quota" if code == "insufficient_quota" else TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_exception_handler(exc, context):
    exc = known_exception(exc)
    if isinstance(exc, exceptions.ParseError):
        status, code, message = 400, "invalid_json", f"We could not parse the JSON body of your request. {exc.detail}"
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        status, code = 401, "invalid_api_key"
        message = f"{exc.detail} Send your API key as `Authorization: Bearer <key>`."
    elif isinstance(exc, exceptions.Throttled):
        status, code = 429, "rate_limit_exceeded"
        message = f"Too many requests; try again in {int(exc.wait or 1)} seconds."
    elif isinstance(exc, exceptions.APIException):
        status, code, message = (
            exc.status_code,
            exc.get_codes() if isinstance(exc.get_codes(), str) else None,
            str(exc.detail),
        )
    else:
        logger.exception("unhandled error on %s", context["request"].path)
        status, code, message = 500, "server_error", "Something went wrong on our side; it has been logged."
    response = Response(openai_error(message, status=status, code=code), status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    if status == 429:
        response["Retry-After"] = str(int(exc.wait or 1))
    return response


class OpenAIView(APIView):
    def get_exception_handler(self):
        return openai_exception_handler


def _refused(exc: services.ServingRefused) -> JsonResponse:
    param = {"max_new_tokens": "max_tokens"}.get(exc.param, exc.param)
    if exc.code == "insufficient_credit":  # OpenAI's answer to "no credit": 429 insufficient_quota, never retried
        body = openai_error(exc.message, status=429, code="insufficient_quota", param=param)
        response = JsonResponse(body, status=429)
        response["Retry-After"] = str(QUOTA_RETRY_SECONDS)
        response["X-Should-Retry"] = "false"  # the openai SDK otherwise retries a 429 on its own
        return response
    response = JsonResponse(openai_error(exc.message, status=exc.status, code=exc.code, param=param), status=exc.status)
    if "retry_after_seconds" in exc.details:  # a busy model server: the SDK waits this long and retries on its own
        response["Retry-After"] = str(exc.details["retry_after_seconds"])
    return response


def _invalid(message: str, param: str) -> JsonResponse:
    return JsonResponse(openai_error(message, status=400, code="invalid_value", param=param), status=400)


def _completion_id(inference: Inference) -> str:
    return f"chatcmpl-{inference.pk}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


class ChatCompletionsView(OpenAIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "generate"

    @extend_schema(exclude=True)
    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            return _invalid("The request body must be a JSON object.", "body")
        slug = data.get("model")
        if not isinstance(slug, str) or not slug:
            return _invalid("`model` is required: the slug of a published model (GET /v1/models).", "model")
        try:
            messages = openai_params.chat_messages(data.get("messages"))
            arguments = openai_params.chat_arguments(data)
        except openai_params.ParamError as exc:
            return _invalid(exc.message, exc.param)
        include_usage = arguments.pop("include_usage")
        try:
            inference = services.inference_start(
                user=request.user, slug=slug, source=Inference.Source.OPENAI, messages=messages, **arguments
            )
            if arguments["stream"]:
                return _sse_response(_stream_chunks(inference, include_usage=include_usage))
            inference = services.inference_wait(inference=inference)
        except services.ServingRefused as exc:
            return _refused(exc)
        message, finish_reason = _answer(inference)
        return JsonResponse(
            _with_citations(inference)
            | {
                "id": _completion_id(inference),
                "object": "chat.completion",
                "created": int(inference.created_at.timestamp()),
                "model": inference.model.slug,
                "system_fingerprint": f"{inference.model.slug}-v{inference.model_version.number}",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None
                        if inference.logprobs is None
                        else {"content": inference.logprobs, "refusal": None},
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": _usage(inference.prompt_tokens, inference.completion_tokens),
            }
        )


def _tool_choice(inference: Inference):
    """How the answer was constrained by tools, or None when it was given without them (or with "none")."""
    parameters = inference.parameters or {}
    choice = parameters.get("tool_choice")
    return None if "tools" not in parameters or choice == "none" else choice


def _answer(inference: Inference) -> tuple[dict, str]:
    """The assistant message (a tool call or text) and OpenAI's finish reason."""
    choice = _tool_choice(inference)
    if choice is None:
        message = {"role": "assistant", "content": inference.output, "refusal": None}
        return message, _finish(inference.finish_reason)
    return openai_tools.answer_message(
        text=inference.output,
        finish_reason=inference.finish_reason,
        call_id=openai_tools.call_id(inference.pk),
        tool_choice=choice,
    )


def _with_citations(inference: Inference) -> dict:
    """{"citations": [...]} when the model answered with retrieval (see the generate API), else {}: an extension
    of OpenAI's shape that its clients ignore."""
    citations = services.citations_for(inference=inference, user=inference.caller)
    return {} if citations is None else {"citations": citations}


def _sse_response(chunks) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _sse(data) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


def relay(inference: Inference, *, on_delta, on_done, on_error, on_end=None):
    """Relays the worker's events for a streamed inference as SSE chunks (made by the callbacks) and tells the
    worker how many deltas reached the client: all of them at the end, or those it read before it hung up.
    `on_delta` may return None to hold a delta back (a tool call's text until its name is complete); a held delta
    counts as delivered once a later chunk goes out. `on_end(event)` may return a last chunk of held text.

    The server closes this generator at the `yield` whose write failed. A write to a connection the client has
    already closed still succeeds once (the bytes go out; the client's side answers with a reset), so the chunk
    written just before the failed one never reached a reader: the deltas it carried are not counted."""
    delivered = 0
    held = 0  # deltas received but not yet written
    last_write = 0  # deltas carried by the last chunk written
    finished = False
    lags: list[float] = []  # worker's send -> read here, per delta (the broker-free hop back)
    try:
        channel = services.inference_channel(inference.pk)
        for event in services.inference_events(channel=channel, inference_id=inference.pk):
            kind = event["type"]
            if kind == "delta":
                if "t" in event:
                    lags.append(time.time() - event["t"])
                held += 1
                chunk = on_delta(event["text"])
                if chunk is not None:
                    yield chunk
                    delivered, last_write, held = delivered + held, held, 0
            elif kind == "end":
                chunk = on_end(event) if on_end is not None else None
                if chunk:
                    yield chunk
                    delivered, last_write, held = delivered + held, held, 0
                services.inference_stream_ack(inference_id=inference.pk, delivered=delivered, cancelled=False)
            elif kind == "done":
                finished = True
                yield from on_done(event)
            elif kind == "error":
                finished = True
                yield on_error(event)
    finally:
        if not finished:
            services.inference_stream_ack(inference_id=inference.pk, delivered=delivered - last_write, cancelled=True)
        if lags:
            timing = {"inference": inference.pk, "delta_lag_ms_mean": round(1000 * sum(lags) / len(lags)),
                      "delta_lag_ms_max": round(1000 * max(lags)), "deltas": len(lags)}  # fmt: skip
            timing_logger.info("web %s", json.dumps(timing))


def _stream_chunks(inference: Inference, *, include_usage: bool):
    created = int(time.time())
    base = {"id": _completion_id(inference), "object": "chat.completion.chunk", "created": created,
            "model": inference.model.slug}  # fmt: skip
    choice = _tool_choice(inference)
    splitter = None if choice is None else openai_tools.AnswerSplitter(
        call_id=openai_tools.call_id(inference.pk), tool_choice=choice
    )  # fmt: skip
    finish = {}

    def chunk(delta: dict, finish_reason=None) -> str:
        return _sse(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )

    def on_delta(text: str) -> str | None:
        if splitter is None:
            return chunk({"content": text})
        return "".join(chunk(delta) for delta in splitter.push(text)) or None

    def on_end(event) -> str | None:
        if splitter is None:
            return None
        deltas, finish["reason"] = splitter.finish(event["finish_reason"])
        return "".join(chunk(delta) for delta in deltas) or None

    def on_done(event):
        # The answer's citations ride on the finishing chunk and, when usage is asked for, on the last one too.
        cited = _with_citations(inference)
        reason = _finish(event["finish_reason"]) if splitter is None else finish.get("reason", "stop")
        if event["finish_reason"] == "cancelled":
            reason = "stop"
        finishing = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}]}
        yield _sse({**finishing, **cited})
        if include_usage:
            usage = _usage(event["prompt_tokens"], event["completion_tokens"])
            yield _sse({**base, "choices": [], "usage": usage, **cited})
        yield _sse("[DONE]")

    def on_error(event):
        status = services.ERROR_STATUS.get(event["code"], 400)
        return _sse(openai_error(event["message"], status=status, code=event["code"]))

    first = {"role": "assistant", "content": None if splitter is not None and choice != "auto" else ""}
    yield chunk(first)
    yield from relay(inference, on_delta=on_delta, on_done=on_done, on_error=on_error, on_end=on_end)


def _callable_models(user):
    models = selectors.trained_models_visible(user=user).filter(status=TrainedModel.Status.PUBLISHED)
    if not user.is_staff:
        models = models.filter(visibility=TrainedModel.Visibility.PUBLIC) | models.filter(owner=user)
    return models


def _model_payload(model: TrainedModel) -> dict:
    created = int((model.published_at or model.created_at).timestamp())
    return {"id": model.slug, "object": "model", "created": created, "owned_by": model.owner.username}


class ModelListView(OpenAIView):
    @extend_schema(exclude=True)
    def get(self, request):
        data = [_model_payload(m) for m in _callable_models(request.user)]
        return JsonResponse({"object": "list", "data": data})


class ModelDetailView(OpenAIView):
    @extend_schema(exclude=True)
    def get(self, request, slug: str):
        model = _callable_models(request.user).filter(slug=slug).first()
        if model is None:
            message = f"There is no published model called “{slug}”."
            return JsonResponse(openai_error(message, status=404, code="model_not_found", param="model"), status=404)
        return JsonResponse(_model_payload(model))


@csrf_exempt  # it changes nothing; without this a POST to an unknown /v1 path got Django's HTML CSRF page
def openai_not_found(request, *args, **kwargs) -> JsonResponse:
    message = f"Unknown request URL: {request.method} {request.path}."
    if request.path.endswith("/") and request.path.rstrip("/") in KNOWN_PATHS:
        message += f" Did you mean {request.path.rstrip('/')} (no trailing slash)?"
    else:
        message += " See /v1/chat/completions, /v1/models and /v1/models/{model}."
    return JsonResponse(openai_error(message, status=404, code="unknown_url"), status=404)
