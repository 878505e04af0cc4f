import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from modelfactory import selectors, services
from modelfactory.models import FineTuneJob
from modelfactory.serializers import (
    BaseModelSerializer,
    FineTuneControlSerializer,
    FineTuneCreateSerializer,
    FineTuneJobSerializer,
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
        services.finetune_reap_stale()
        return selectors.job_list_for(user=self.request.user).prefetch_related("datanet_versions")

    @extend_schema(request=FineTuneCreateSerializer, responses={201: FineTuneJobSerializer, 200: FineTuneJobSerializer})
    def create(self, request):
        data = FineTuneCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = data.validated_data.get("idempotency_key") or request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        try:
            job, created = services.finetune_launch(
                user=request.user,
                base_model_slug=data.validated_data["base_model"],
                version_ids=data.validated_data["datanet_versions"],
                preset=data.validated_data["preset"],
                hyperparameters=data.validated_data["hyperparameters"],
                name=data.validated_data["name"],
                idempotency_key=key,
            )
        except services.LaunchError as exc:
            raise exceptions.ValidationError(exc.errors) from None
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(FineTuneJobSerializer(job).data, status=code)

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


class TrainedModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Trained models you own, and published public ones."""

    serializer_class = TrainedModelSerializer
    lookup_field = "slug"

    def get_queryset(self):
        return selectors.trained_models_visible(user=self.request.user).prefetch_related("versions")
