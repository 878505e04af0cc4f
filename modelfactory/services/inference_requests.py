"""Inference, the caller's side: validate a call, count its prompt's tokens, hold the most it can cost, and hand
it to the inference queue when that transaction commits.

Who pays what, and when:
- A caller pays for the tokens of its own prompt plus the tokens of the answer that reached it, at the model's
  price when the call was made: fee = ceil(price_per_1k_tokens * (prompt_tokens + completion_tokens) / 1000)
  micro-credits. Before generating, the most the call can cost (the answer at max_new_tokens) is held from the
  caller's wallet in the transaction that creates the Inference row; a caller who cannot cover it gets nothing.
- Owners pay for their own models like anyone else (the fee goes mostly back to them at settlement) and may also
  call their draft (unpublished) models, e.g. in the playground; other people call only published public models.
- A failed generation, a worker that never answers, or a timeout: the Inference is failed and the hold released
  in full. Nothing is owed.
- A streaming client that goes away mid-answer: generation stops, and the fee covers only the fewest tokens whose
  text reached the client's connection; the Inference is completed with finish_reason "cancelled" so that
  attribution settles the delivered part. If the web process dies without saying what it delivered, the tokens
  the worker generated are billed.
- A model answering with retrieval puts the rows it retrieved into the prompt (services.retrieval): their tokens
  are prompt tokens like any other.
- The playground's base-model comparison is free, not recorded as an Inference and not attributed.
- Settlement (hold -> owner, contributors, platform; the unused rest back to the caller) is done by the
  inference-completed handlers (the attribution app), not here.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core.jobs import enqueue_or_fail
from core.models import WorkerHeartbeat
from ledger.calc.money import format_credits
from ledger.calc.money import format_credits_exact as _credits
from ledger.services import InsufficientFunds, hold_create
from modelfactory import selectors, streams
from modelfactory.models import BaseModel, Inference, ModelVersion, ServingPolicy, TrainedModel
from modelfactory.services.errors import ServingRefused
from modelfactory.services.inference_worker import _channel, inference_fail, inference_generate
from modelfactory.services.publishing import fee_for_tokens
from modelfactory.services.retrieval import retrieval_prepare

UNREACHABLE = (
    "The model server is not reachable right now, so nothing was generated and nothing was charged. "
    "Try again in a minute."
)

_tokenizer_lock = threading.Lock()
TOOL_KEYS = ("tool_calls", "tool_call_id", "name")
NO_TOOL_FORMAT = (
    "This model's chat template has no tool-calling format, so it cannot be given tools or tool results: "
    "call it without `tools`, or use a base model whose chat template renders tools."
)


def _count_prompt_tokens(*, base: BaseModel, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The prompt's token ids exactly as the inference worker builds them (chat template with the tools, assistant
    turn open)."""
    from modelfactory.serving.tools import template_messages  # the serving package imports torch: only on a call

    with _tokenizer_lock:
        tokenizer = selectors.base_tokenizer(base.path)
        text = tokenizer.apply_chat_template(
            template_messages(messages), tools=tools or None, tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _clean_messages(*, messages, prompt) -> list[dict]:
    """The conversation as the worker gets it: {role, content}, plus an assistant turn's `tool_calls` and a tool
    result's `tool_call_id` (and `name`) when the OpenAI endpoint sent them (checked there)."""
    from modelfactory.serving.engine import ROLES, TOOL_ROLE  # the serving package imports torch: only on a call

    if messages is not None and prompt is not None:
        raise ServingRefused("Send either messages or prompt, not both.", code="invalid_request", param="messages")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ServingRefused("The prompt must be text.", code="invalid_request", param="prompt")
        messages = [{"role": "user", "content": prompt}]
    if not messages:
        raise ServingRefused(
            "The prompt is empty: send a prompt or at least one message.", code="empty_prompt", param="messages"
        )
    if not isinstance(messages, list):
        raise ServingRefused("messages must be a list of {role, content}.", code="invalid_messages", param="messages")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ServingRefused(
                f"Message {index} must be an object with a text content.", code="invalid_messages", param="messages"
            )
        if message.get("role") not in (*ROLES, TOOL_ROLE):
            raise ServingRefused(
                f"Message {index} has role “{message.get('role')}”; use one of {', '.join(ROLES)}.",
                code="invalid_messages",
                param="messages",
            )
        clean.append({"role": message["role"], "content": message["content"]}
                     | {key: message[key] for key in TOOL_KEYS if message.get(key) is not None})  # fmt: skip
    if not any(message["content"].strip() for message in clean):
        raise ServingRefused("The prompt is empty: every message is blank.", code="empty_prompt", param="messages")
    return clean


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _inference_workers() -> int:
    """Live workers listening on the inference queue (1 when generation runs in-process, in tests)."""
    if settings.MF_INFERENCE_INLINE:
        return 1
    fresh_after = timezone.now() - timedelta(seconds=settings.MF_WORKER_STALE_SECONDS)
    return sum("inference" in w.queues for w in WorkerHeartbeat.objects.filter(last_seen__gte=fresh_after))


def inference_worker_alive() -> bool:
    """Whether a live worker listens on the inference queue (or generation runs in-process, in tests)."""
    return _inference_workers() > 0


def inference_admit(*, workers: int) -> None:
    """Admission control: ServingRefused (429, Retry-After) when MF_INFERENCE_QUEUE_MAX answers or more already wait
    for a place in a batch, counting every answer not finished yet beyond the MF_INFERENCE_BATCH_SIZE each of the
    `workers` live inference workers generates at once. Answers older than the inference timeout are not counted
    (the sweep fails them). Calls that arrive together may each see the last free place: the bound is a ceiling on
    waiting, give or take those."""
    since = timezone.now() - timedelta(seconds=settings.MF_INFERENCE_TIMEOUT_SECONDS)
    in_flight = Inference.objects.filter(status=Inference.Status.PENDING, created_at__gte=since).count()
    waiting = in_flight - workers * settings.MF_INFERENCE_BATCH_SIZE
    if waiting >= settings.MF_INFERENCE_QUEUE_MAX:
        retry_after = settings.MF_INFERENCE_RETRY_AFTER_SECONDS
        raise ServingRefused(
            "The model server is busy with other answers right now. Nothing was generated and nothing was "
            f"charged; try again in {retry_after} second{'' if retry_after == 1 else 's'}.",
            code="server_busy",
            status=429,
            details={"retry_after_seconds": retry_after},
        )


def model_servable(*, user, slug: str) -> TrainedModel:
    """A model the user may call: published and public, or their own (drafts included)."""
    model = TrainedModel.objects.select_related("base_model").filter(slug=slug).first()
    public = model is not None and model.status == TrainedModel.Status.PUBLISHED
    public = public and model.visibility == TrainedModel.Visibility.PUBLIC
    if model is None or not (public or model.owner_id == user.pk):
        raise ServingRefused(f"There is no published model called “{slug}”.", code="model_not_found", status=404)
    return model


def inference_start(
    *,
    user,
    slug: str,
    source: str,
    messages: list[dict] | None = None,
    prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    stream: bool = False,
    controls: dict[str, Any] | None = None,
) -> Inference:
    """Validates the call, counts the prompt's tokens, and in one transaction creates the pending Inference and
    holds the most it can cost; the worker is handed the job when that transaction commits. `controls`: the
    serving engine's per-answer controls (stop, seed, presence_penalty, frequency_penalty, logit_bias {token id:
    bias}, top_logprobs, json_schema, tools, tool_choice). Raises ServingRefused (nothing created, nothing held)."""
    model = model_servable(user=user, slug=slug)
    version = model.latest_version
    if version is None:
        raise ServingRefused("This model has no trained version to answer with.", code="model_not_found", status=404)
    clean = _clean_messages(messages=messages, prompt=prompt)
    temperature = _checked_sampling(temperature=temperature, top_p=top_p)
    controls = _checked_controls(controls or {}, base=model.base_model, messages=clean)
    policy = ServingPolicy.current()
    _check_max_new_tokens(max_new_tokens, policy=policy)
    retrieval = retrieval_prepare(model=model, messages=clean)  # the rows go into the prompt the caller pays for
    prompt_ids = _count_prompt_tokens(
        base=model.base_model,
        messages=retrieval["prompt_messages"] if retrieval else clean,
        tools=json.loads(controls["tools"]) if "tools" in controls else None,
    )
    max_new_tokens = _answer_room(
        prompt_tokens=len(prompt_ids),
        max_new_tokens=max_new_tokens,
        context=model.base_model.context_length,
        policy=policy,
    )
    workers = _inference_workers()
    if not workers:
        raise ServingRefused(UNREACHABLE, code="server_unreachable", status=503)
    inference_admit(workers=workers)
    parameters = {"max_new_tokens": max_new_tokens, "temperature": float(temperature), "top_p": top_p, "stream": stream,
                  **controls}  # fmt: skip
    return _create_with_hold(
        user=user,
        model=model,
        version=version,
        source=source,
        messages=clean,
        prompt_ids=prompt_ids,
        parameters=parameters,
        retrieval=retrieval,
    )


def _checked_controls(controls: dict[str, Any], *, base: BaseModel, messages: list[dict]) -> dict[str, Any]:
    """The controls as the worker will get them (JSON: logit_bias keys as text, schemas as text), or
    ServingRefused naming the parameter at fault; checked here, before anything is held, by the serving engine's
    own rules."""
    from modelfactory.serving import GenerationRequest, InvalidRequest  # torch: only when a call comes
    from modelfactory.serving.controls import validate_controls
    from modelfactory.serving.guided import grammar_for
    from modelfactory.serving.tools import tool_grammar

    with _tokenizer_lock:
        vocab_size = len(selectors.base_tokenizer(base.path))
    _check_tool_support(controls, base=base, messages=messages)
    try:
        request = GenerationRequest(prompt="", **controls)
        validate_controls(request, vocab_size=vocab_size)
        if request.json_schema is not None:
            grammar_for(request.json_schema)
        if request.tools:
            tool_grammar(request.tools, request.tool_choice)
    except InvalidRequest as exc:
        param = {"invalid_response_format": "response_format", "invalid_tools": "tools"}.get(exc.code)
        raise ServingRefused(exc.message, code=exc.code, param=param or exc.code.removeprefix("invalid_")) from None
    clean = {key: value for key, value in controls.items() if value is not None}
    if "logit_bias" in clean:
        clean["logit_bias"] = {str(token): bias for token, bias in clean["logit_bias"].items()}
    if "stop" in clean:
        clean["stop"] = list(clean["stop"])
    for key in ("json_schema", "tools"):  # as text: PostgreSQL's jsonb reorders keys, and schemas' order matters
        if key in clean:
            clean[key] = json.dumps(clean[key])
    return clean


def _check_tool_support(controls: dict[str, Any], *, base: BaseModel, messages: list[dict]) -> None:
    """Tools, and conversations with tool calls or results, only for a base model whose chat template renders
    them; a JSON response format and a tool call do not go together."""
    from modelfactory.serving.tools import template_supports_tools  # torch, as above

    tool_turns = any(key in message for message in messages for key in ("tool_calls", "tool_call_id"))
    if not controls.get("tools") and not tool_turns:
        return
    with _tokenizer_lock:
        supported = template_supports_tools(selectors.base_tokenizer(base.path))
    if not supported:
        param = "tools" if controls.get("tools") else "messages"
        raise ServingRefused(NO_TOOL_FORMAT, code="tools_unsupported", param=param)
    if controls.get("tools") and controls.get("json_schema") and controls.get("tool_choice") != "none":
        raise ServingRefused(
            "A JSON response format cannot be combined with tool calls: send `response_format` with "
            '`tool_choice: "none"`, or leave it out.',
            code="invalid_response_format",
            param="response_format",
        )


def _checked_sampling(*, temperature: float | None, top_p: float | None) -> float:
    """The temperature to use (None means 0), or ServingRefused naming the sampling setting at fault."""
    if temperature is None:
        temperature = 0.0
    if not _is_number(temperature) or temperature < 0:
        raise ServingRefused(
            f"temperature must be a number of 0 or more; 0 always picks the likeliest word (got {temperature!r}).",
            code="invalid_temperature",
            param="temperature",
        )
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ServingRefused(
            f"top_p must be above 0 and at most 1 (got {top_p!r}).", code="invalid_top_p", param="top_p"
        )
    return temperature


def _check_max_new_tokens(max_new_tokens: int | None, *, policy: ServingPolicy) -> None:
    """max_new_tokens left out, or a whole number within the operators' cap (checked before counting tokens)."""
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or not 1 <= max_new_tokens <= policy.max_new_tokens_cap
    ):
        raise ServingRefused(
            f"max_new_tokens must be a whole number from 1 to {policy.max_new_tokens_cap} (got {max_new_tokens!r}).",
            code="invalid_max_new_tokens",
            param="max_new_tokens",
        )


def _answer_room(*, prompt_tokens: int, max_new_tokens: int | None, context: int, policy: ServingPolicy) -> int:
    """The answer's token budget: the one asked for if prompt and answer fit the model's context, else
    ServingRefused; when none was asked for, the policy's default cut to what the context leaves."""
    if prompt_tokens >= context:
        raise ServingRefused(
            f"The prompt is {prompt_tokens} tokens long; this model reads at most {context} tokens. "
            "Shorten it or start a new conversation.",
            code="prompt_too_long",
            param="messages",
        )
    if max_new_tokens is None:
        return min(policy.default_max_new_tokens, policy.max_new_tokens_cap, context - prompt_tokens)
    if prompt_tokens + max_new_tokens > context:
        raise ServingRefused(
            f"The prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) is "
            f"{prompt_tokens + max_new_tokens} tokens, over this model's context length of {context}: ask for at "
            f"most {context - prompt_tokens} new tokens or shorten the prompt.",
            code="prompt_too_long",
            param="max_new_tokens",
        )
    return max_new_tokens


def _create_with_hold(
    *,
    user,
    model: TrainedModel,
    version: ModelVersion,
    source: str,
    messages: list[dict],
    prompt_ids: list[int],
    parameters: dict[str, Any],
    retrieval: dict | None = None,
) -> Inference:
    """One transaction: the pending Inference and the hold of the most it can cost (prompt plus max_new_tokens at
    the model's price); the worker gets it on commit. A caller who cannot cover it gets ServingRefused (402)."""
    price = model.price_per_1k_tokens
    max_new_tokens = parameters["max_new_tokens"]
    reserved = fee_for_tokens(price_per_1k_tokens=price, tokens=len(prompt_ids) + max_new_tokens)
    try:
        with transaction.atomic(durable=True):
            inference = Inference.objects.create(
                caller=user,
                model=model,
                model_version=version,
                source=source,
                messages=messages,
                parameters=parameters,
                prompt_token_ids=prompt_ids,
                prompt_tokens=len(prompt_ids),
                price_per_1k_tokens=price,
                fee_reserved_micro=reserved,
                retrieval=retrieval,
            )
            if reserved > 0:
                inference.hold_key = f"inference:{inference.pk}"
                hold_create(
                    key=inference.hold_key,
                    payer_user_id=user.pk,
                    amount_micro=reserved,
                    memo=f"Fee reserved for an answer from {model.slug}",
                    metadata={"inference_id": inference.pk, "model": model.slug},
                )
                inference.save(update_fields=["hold_key"])
            transaction.on_commit(lambda: _dispatch(inference.pk))
    except InsufficientFunds as exc:
        raise ServingRefused(
            f"Not enough credit: this answer can cost up to {_credits(reserved)} credits ({len(prompt_ids)} prompt "
            f"tokens + up to {max_new_tokens} answer tokens at {_credits(price)} credits per 1,000 tokens), and you "
            f"have {_credits(exc.balance)} available. Add credit or ask for a shorter answer.",
            code="insufficient_credit",
            status=402,
            details={"needed": format_credits(reserved), "available": format_credits(exc.balance)},  # API: 6 places
        ) from None
    return inference


def _dispatch(inference_id: int) -> None:
    """Hands the inference to the inference queue (or, in tests, to a thread of this process running the same
    function the task runs). A broker that is down fails the inference at once, releasing its hold."""
    if settings.MF_INFERENCE_INLINE:
        _run_inline(inference_generate, inference_id=inference_id)
        return
    enqueue_or_fail(
        "modelfactory.tasks.inference_generate_task",
        args=[inference_id],
        what=f"inference {inference_id}",
        fail=lambda exc: _unreachable(inference_id, exc),
    )


def _unreachable(inference_id: int, exc: Exception) -> None:
    inference_fail(inference_id=inference_id, error=f"queue unreachable: {exc.__class__.__name__}")
    streams.Publisher(_channel(inference_id)).publish(
        {"type": "error", "code": "server_unreachable", "message": UNREACHABLE}
    )


def _run_inline(function, **kwargs) -> None:
    def run():
        try:
            function(**kwargs)
        finally:
            connection.close()

    threading.Thread(target=run, name="inline-inference", daemon=True).start()
