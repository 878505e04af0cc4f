import uuid

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    IDEMPOTENCY_CONFLICT_RESPONSE,
    IDEMPOTENCY_KEY_HEADER,
    IdempotencyConflict,
    created,
    error_body,
    error_responses,
    idempotency_key,
)
from core.throttling import ScopedRateThrottle
from ledger.calc.money import format_credits
from modelfactory import selectors, services
from modelfactory.models import FineTuneJob, Inference, ModelEvaluation, ModelExport
from modelfactory.serializers import (
    BaseModelSerializer,
    EvaluationRequestSerializer,
    EvaluationSerializer,
    EvaluationSummarySerializer,
    ExportRequestSerializer,
    ExportSerializer,
    FineTuneControlSerializer,
    FineTuneCreateSerializer,
    FineTuneJobSerializer,
    GenerateRequestSerializer,
    GenerateResponseSerializer,
    InferenceSerializer,
    PublishSerializer,
    TrainedModelDetailSerializer,
    TrainedModelSerializer,
)


class BaseModelViewSet(viewsets.ReadOnlyModelViewSet):
    """Base models available for fine-tuning."""

    serializer_class = BaseModelSerializer
    lookup_field = "slug"

    def get_queryset(self):
        return selectors.base_model_list()


class FineTuneViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Fine-tuning jobs: launch, follow, stop or cancel. Only the owner sees a job."""

    lookup_value_regex = r"\d+"  # ids are numbers; anything else is the API's JSON 404, not a 500
    serializer_class = FineTuneJobSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return FineTuneJob.objects.none()
        return selectors.job_list_detailed(user=self.request.user)

    @extend_schema(
        request=FineTuneCreateSerializer,
        responses={201: FineTuneJobSerializer, **IDEMPOTENCY_CONFLICT_RESPONSE},
        parameters=[IDEMPOTENCY_KEY_HEADER],
    )
    def create(self, request):
        """Launch a job. A replay (same Idempotency-Key or body `idempotency_key`, same request) answers 201 with
        the job launched the first time; the body's key wins over the header."""
        data = FineTuneCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = idempotency_key(request, data.validated_data.get("idempotency_key")) or uuid.uuid4().hex
        try:
            job, _ = self._launch(request.user, data.validated_data, key)
        except services.IdempotencyConflict:
            raise IdempotencyConflict(key) from None
        except services.LaunchError as exc:
            raise exceptions.ValidationError(exc.errors) from None
        return created(request, FineTuneJobSerializer(job).data, location=f"/api/v1/finetunes/{job.pk}/")

    @staticmethod
    def _launch(user, data: dict, key: str):
        if data.get("from_model"):
            return services.finetune_continue(
                user=user, model_slug=data["from_model"], version_ids=data["datanet_versions"], name=data["name"],
                idempotency_key=key,
            )  # fmt: skip
        return services.finetune_launch(
            user=user,
            base_model_slug=data["base_model"],
            version_ids=data["datanet_versions"],
            preset=data["preset"],
            hyperparameters=data["hyperparameters"],
            name=data["name"],
            idempotency_key=key,
            test_version_ids=data["test_versions"],
        )

    @extend_schema(request=FineTuneControlSerializer, responses={200: FineTuneJobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        data = FineTuneControlSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            job = services.finetune_control(user=request.user, job_id=int(pk), mode=data.validated_data["mode"])
        except FineTuneJob.DoesNotExist:
            raise exceptions.NotFound("No such fine-tuning job.") from None
        except services.JobStateError as exc:
            raise exceptions.ValidationError({"status": [str(exc)]}) from None
        return Response(FineTuneJobSerializer(job).data)

    @extend_schema(
        methods=["GET"], request=None, responses={200: EvaluationSummarySerializer(many=True)},
        operation_id="finetunes_evaluations_list",
    )  # fmt: skip
    @extend_schema(
        methods=["POST"],
        request={"application/json": EvaluationRequestSerializer, "multipart/form-data": EvaluationRequestSerializer},
        responses={202: EvaluationSerializer, **error_responses(_409="The job has not made a model (yet).")},
        operation_id="finetunes_evaluations_create",
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[JSONParser, MultiPartParser])
    def evaluations(self, request, pk=None):
        """Evaluate again: the model this finished job made answers a test set you choose now (`test_versions`, or
        an uploaded `file`), base and tuned side by side, each answer scored (exact match, token F1). 202 with the
        evaluation to follow (GET /api/v1/evaluations/{id}/). A test set of the wrong kind or with no usable rows is
        a 400 and nothing is created; rows the model trained on are counted in `overlap` and left out of the score.
        GET lists the evaluations of this job's model, newest first."""
        if request.method == "GET":
            try:
                evaluations = selectors.evaluations_of_job(user=request.user, job_id=int(pk))
            except FineTuneJob.DoesNotExist:
                raise exceptions.NotFound("No such fine-tuning job.") from None
            page = self.paginate_queryset(evaluations)
            return self.get_paginated_response([evaluation_payload(e) for e in page])
        data = EvaluationRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data.get("file")
        try:
            evaluation = services.evaluation_request(
                user=request.user, job_id=int(pk), version_ids=data.validated_data["test_versions"], upload=upload
            )
        except services.EvaluationRefused as exc:
            return _evaluation_refused(exc)
        location = reverse("evaluation-detail", kwargs={"evaluation_id": evaluation.pk})
        body = EvaluationSerializer(evaluation_payload(evaluation, samples=True)).data
        return Response(body, status=202, headers={"Location": request.build_absolute_uri(location)})


def _evaluation_refused(exc):
    if exc.status == 404:
        raise exceptions.NotFound(next(iter(exc.errors.values())))
    if exc.status == 400:
        raise exceptions.ValidationError({field: [message] for field, message in exc.errors.items()})
    message = next(iter(exc.errors.values()))
    return Response(error_body("conflict", message, {k: [v] for k, v in exc.errors.items()}), status=exc.status)


TOTALS = ("answers_scored", "base_exact_match", "exact_match", "base_token_f1", "token_f1", "base_eval_loss",
          "eval_loss")  # fmt: skip


def evaluation_payload(evaluation: ModelEvaluation, *, samples: bool = False) -> dict:
    done = evaluation.status == ModelEvaluation.Status.SUCCEEDED
    payload = {
        "id": evaluation.pk,
        "model": evaluation.version.model.slug,
        "model_version": evaluation.version.number,
        "job": evaluation.version.job_id,
        "status": evaluation.status,
        "progress": evaluation.progress,
        "message": evaluation.message,
        "test_versions": sorted(v.pk for v in evaluation.test_versions.all()),
        "upload_name": evaluation.upload_name,
        "rows": evaluation.rows,
        "overlap": evaluation.overlap,
        "totals": {key: evaluation.metrics.get(key) for key in TOTALS} if done else None,
        "created_at": evaluation.created_at,
        "finished_at": evaluation.finished_at,
    }
    if samples:
        payload["samples"] = evaluation.samples
    return payload


class EvaluationDetailView(APIView):
    """One of your evaluations of a finished model: status and progress while it runs, then the totals and every
    scored row (expected, base and tuned answers). Only who asked for it sees it (others get 404)."""

    @extend_schema(responses={200: EvaluationSerializer}, operation_id="evaluation_retrieve")
    def get(self, request, evaluation_id: int):
        try:
            evaluation = selectors.evaluation_get_for(user=request.user, evaluation_id=evaluation_id)
        except ModelEvaluation.DoesNotExist:
            raise exceptions.NotFound("You have no evaluation with this id.") from None
        return Response(EvaluationSerializer(evaluation_payload(evaluation, samples=True)).data)


class EvaluationCancelView(APIView):
    """Cancel an evaluation: a queued one ends at once, a running one at its next batch (nothing is kept)."""

    @extend_schema(
        request=None,
        responses={200: EvaluationSerializer, **error_responses(_409="The evaluation has already ended.")},
        operation_id="evaluation_cancel",
    )
    def post(self, request, evaluation_id: int):
        try:
            services.evaluation_cancel(user=request.user, evaluation_id=evaluation_id)
        except ModelEvaluation.DoesNotExist:
            raise exceptions.NotFound("You have no evaluation with this id.") from None
        except services.EvaluationRefused as exc:
            return _evaluation_refused(exc)
        evaluation = selectors.evaluation_get_for(user=request.user, evaluation_id=evaluation_id)
        return Response(EvaluationSerializer(evaluation_payload(evaluation, samples=True)).data)


class TrainedModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Trained models you own, and published public ones."""

    serializer_class = TrainedModelSerializer
    lookup_field = "slug"

    def get_queryset(self):
        return selectors.trained_model_list(user=self.request.user)

    def get_serializer_class(self):
        # the detail adds the attribution quality (one query per model: not on the list)
        return TrainedModelDetailSerializer if self.action == "retrieve" else TrainedModelSerializer

    def get_throttles(self):
        if self.action in ("generate", "publish", "unpublish", "exports"):
            self.throttle_scope = "generate" if self.action == "generate" else "writes"
            return [ScopedRateThrottle()]
        return super().get_throttles()

    @extend_schema(request=PublishSerializer, responses={200: TrainedModelSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request, slug=None):
        """Publish (or re-price) your model: anyone can then call it and pays the price per 1,000 tokens. With
        `retrieval`, answers draw on rows of the data (default: the datanet versions it was trained on), cite them,
        and pay their contributors."""
        data = PublishSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            model = services.trained_model_publish(
                user=request.user,
                slug=slug,
                price_per_1k_tokens=data.validated_data["price_per_1k_tokens"],
                visibility=data.validated_data["visibility"],
                allow_exports=data.validated_data.get("allow_exports"),
                retrieval=data.validated_data.get("retrieval"),
            )
        except services.ServingRefused as exc:
            return _refused(exc)
        return Response(TrainedModelSerializer(model).data)

    @extend_schema(
        request=ExportRequestSerializer,
        responses={202: ExportSerializer, **error_responses(_403="The owner does not allow downloads.")},
    )
    @action(detail=True, methods=["post"])
    def exports(self, request, slug=None):
        """Ask for the latest version's files in a format; 202 with the export to follow (GET /api/v1/exports/{id}/).
        Made once per version and format: asking again returns the same export (a failed one is tried again)."""
        data = ExportRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            export, _ = services.export_request(user=request.user, slug=slug, format=data.validated_data["format"])
        except services.ServingRefused as exc:
            return _refused(exc)
        location = reverse("export-detail", kwargs={"export_id": export.pk})
        body = ExportSerializer(export_payload(request, export)).data
        return Response(body, status=202, headers={"Location": request.build_absolute_uri(location)})

    @extend_schema(request=None, responses={200: TrainedModelSerializer})
    @action(detail=True, methods=["post"])
    def unpublish(self, request, slug=None):
        """Back to draft: only you can call it."""
        try:
            model = services.trained_model_unpublish(user=request.user, slug=slug)
        except services.ServingRefused as exc:
            return _refused(exc)
        return Response(TrainedModelSerializer(model).data)

    @extend_schema(
        request=GenerateRequestSerializer,
        responses={
            200: GenerateResponseSerializer,
            **error_responses(
                _402="Not enough credit for the most this answer can cost (code insufficient_credit).",
                _429="Too many requests (code throttled), or the model server is busy: too many answers are "
                "waiting for it (code server_busy, MF_INFERENCE_QUEUE_MAX). Nothing was held or charged; retry "
                "after Retry-After seconds (also in details.retry_after_seconds).",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def generate(self, request, slug=None):
        """Ask the model. The most the answer can cost is held first (402 without enough credit); the fee is for
        the prompt and the answer's tokens. 429 when too many answers already wait for the model server, 503 when it is
        not reachable (nothing charged either way)."""
        data = GenerateRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        try:
            inference = services.inference_start(
                user=request.user,
                slug=slug,
                source=Inference.Source.API,
                messages=[dict(m) for m in values["messages"]] if "messages" in values else None,
                prompt=values.get("prompt"),
                max_new_tokens=values.get("max_new_tokens"),
                temperature=values["temperature"],
                top_p=values["top_p"],
            )
            inference = services.inference_wait(inference=inference)
        except services.ServingRefused as exc:
            return _refused(exc)
        return Response(GenerateResponseSerializer(generate_payload(inference)).data)


def generate_payload(inference) -> dict:
    """The answer as its caller sees it; `citations` only when the model answered with retrieval."""
    payload = {
        "inference_id": inference.pk,
        "model": inference.model.slug,
        "model_version": inference.model_version.number,
        "output": inference.output,
        "finish_reason": inference.finish_reason,
        "usage": {"prompt_tokens": inference.prompt_tokens, "completion_tokens": inference.completion_tokens},
        "fee": format_credits(inference.fee_micro),
        "fee_reserved": format_credits(inference.fee_reserved_micro),
    }
    citations = services.citations_for(inference=inference, user=inference.caller)
    if citations is not None:
        payload["citations"] = citations
    return payload


class InferenceDetailView(APIView):
    """One of your past answers: its text, tokens, fee and status, and a link to its attribution. `chatcmpl-41` from
    the OpenAI-compatible API is inference 41. Only the caller who asked sees it (others get 404)."""

    @extend_schema(responses={200: InferenceSerializer}, operation_id="inference_retrieve")
    def get(self, request, inference_id: int):
        try:
            inference = selectors.inference_get_for(user=request.user, inference_id=inference_id)
        except Inference.DoesNotExist:
            raise exceptions.NotFound("You have no answer with this id.") from None
        path = reverse("inference-attribution", kwargs={"inference_id": inference.pk})
        payload = {
            **generate_payload(inference),
            "id": inference.pk,
            "completion_id": f"chatcmpl-{inference.pk}",
            "source": inference.source,
            "status": inference.status,
            "error": inference.error,
            "created": inference.created_at,
            "completed": inference.completed_at,
            "attribution": request.build_absolute_uri(path),
        }
        return Response(InferenceSerializer(payload).data)


def export_payload(request, export: ModelExport) -> dict:
    model = export.version.model
    ready = export.status == ModelExport.Status.SUCCEEDED
    download = reverse("modelfactory:export_download", args=[model.slug, export.pk])
    return {
        "id": export.pk,
        "model": model.slug,
        "model_version": export.version.number,
        "format": export.format,
        "status": export.status,
        "progress": export.progress,
        "download_url": request.build_absolute_uri(download) if ready else None,
        "instructions_url": request.build_absolute_uri(reverse("modelfactory:export", args=[model.slug, export.pk])),
        "sha256": export.sha256,
        "bytes": export.bytes,
        "message": export.message,
    }


class ExportDetailView(APIView):
    """An export of a model version: its status and progress, then where to download it and its SHA-256. Seen by
    whoever may export the model (others get 404)."""

    @extend_schema(responses={200: ExportSerializer}, operation_id="export_retrieve")
    def get(self, request, export_id: int):
        try:
            export = selectors.export_get_for(user=request.user, export_id=export_id)
        except ModelExport.DoesNotExist:
            raise exceptions.NotFound("There is no export with this id that you may download.") from None
        return Response(ExportSerializer(export_payload(request, export)).data)


def _refused(exc):
    response = Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if "retry_after_seconds" in exc.details:  # a busy model server (admission control): when to try again
        response["Retry-After"] = str(exc.details["retry_after_seconds"])
    return response
