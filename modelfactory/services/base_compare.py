"""The playground's comparison: the same question to the base model alone, free, not recorded, not attributed."""

from __future__ import annotations

import uuid

from django.conf import settings

from modelfactory import streams
from modelfactory.services.errors import ServingRefused
from modelfactory.services.inference_requests import UNREACHABLE, _run_inline, inference_worker_alive, model_servable
from modelfactory.services.inference_worker import _generation_error_message
from modelfactory.tasks import inference_base_task


def base_compare_start(*, user, slug: str, messages: list[dict], max_new_tokens: int, temperature: float) -> str:
    """Playground: the same question to the base model alone, free and not recorded. Returns the channel id."""
    model = model_servable(user=user, slug=slug)
    if not inference_worker_alive():
        raise ServingRefused(UNREACHABLE, code="server_unreachable", status=503)
    channel = f"base-{uuid.uuid4().hex}"
    job = {"channel": channel, "base_path": model.base_model.path, "messages": messages,
           "max_new_tokens": max_new_tokens, "temperature": temperature}  # fmt: skip
    if settings.MF_INFERENCE_INLINE:
        _run_inline(base_generate, **job)
    else:
        try:
            inference_base_task.apply_async(kwargs=job, retry=False)
        except Exception as exc:
            raise ServingRefused(UNREACHABLE, code="server_unreachable", status=503) from exc
    return channel


def base_generate(*, channel: str, base_path: str, messages: list[dict], max_new_tokens: int, temperature: float):
    """Worker side of the base-model comparison (no adapter, nothing recorded)."""
    from modelfactory import serving_runtime  # torch: only the inference worker loads the model
    from modelfactory.serving import GenerationRequest  # torch, as above

    publisher = streams.Publisher(channel)
    publisher.publish({"type": "started"})
    try:
        result = serving_runtime.batcher_for(base_path).generate(
            GenerationRequest(
                prompt=messages,
                adapter=None,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                on_delta=lambda text: publisher.publish({"type": "delta", "text": text}),
            ),
            timeout=settings.MF_INFERENCE_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        code, message = _generation_error_message(exc)
        publisher.publish({"type": "error", "code": code, "message": message})
        return
    publisher.publish(
        {
            "type": "done",
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason,
            "fee_micro": 0,
        }  # fmt: skip
    )
