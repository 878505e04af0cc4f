from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from core.api import (
    IDEMPOTENCY_KEY_HEADER,
    IdempotencyConflict,
    created,
    error_responses,
    idempotency_key,
)
from core.throttling import ScopedRateThrottle
from datanets import hooks, selectors, services
from datanets.models import Contribution, Datanet, Record
from datanets.serializers import (
    ContributionRowSerializer,
    ContributionSerializer,
    ContributionUploadSerializer,
    DatanetCreateSerializer,
    DatanetSerializer,
    DatanetUpdateSerializer,
    RecordSerializer,
    RejectSerializer,
    ReviewSerializer,
    VersionPublishSerializer,
    VersionSerializer,
)
from datanets.uploads import install_upload_limit


def refused(exc: services.DatanetError) -> APIException:
    error = APIException(detail=exc.message, code=exc.code)
    error.status_code = exc.status
    return error


class WriteThrottleMixin:
    """Unsafe methods are also limited by the shared `writes` rate (MF_THROTTLE_WRITES)."""

    def get_throttles(self):
        throttles = super().get_throttles()
        if self.request.method not in SAFE_METHODS:
            self.throttle_scope = "writes"
            throttles.append(ScopedRateThrottle())
        return throttles


class DatanetViewSet(
    WriteThrottleMixin,
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Datanets the caller can see: public ones, and private ones they own or curate."""

    serializer_class = DatanetSerializer
    queryset = Datanet.objects.none()
    lookup_field = "slug"
    lookup_value_regex = "[-a-zA-Z0-9_]+"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def initialize_request(self, request, *args, **kwargs):
        # Stop an over-limit upload while it streams in: before authentication (and CSRF) read the body.
        install_upload_limit(request, settings.MF_UPLOAD_MAX_BYTES)
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self):
        return selectors.datanet_list_visible(
            user=self.request.user,
            q=self.request.query_params.get("q", ""),
            tag=self.request.query_params.get("tag", ""),
        ).prefetch_related("curators")  # the serializer lists them: one query for the page, not one per datanet

    def get_object(self) -> Datanet:
        try:
            return selectors.datanet_get_visible(user=self.request.user, slug=self.kwargs["slug"])
        except Datanet.DoesNotExist:
            raise NotFound("No such datanet.") from None

    @extend_schema(
        parameters=[OpenApiParameter("q", str, description="Search name and summary"), OpenApiParameter("tag", str)]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=DatanetCreateSerializer,
        responses={
            201: DatanetSerializer,
            **error_responses(
                _409="The address (slug) is taken, or the Idempotency-Key was used before with a different request."
            ),
        },
        parameters=[IDEMPOTENCY_KEY_HEADER],
    )
    def create(self, request, *args, **kwargs):
        """Create a datanet. A replay (same Idempotency-Key, same request) answers 201 with the datanet created
        the first time."""
        data = DatanetCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = idempotency_key(request) or ""
        try:
            datanet = services.datanet_create(owner=request.user, idempotency_key=key, **data.validated_data)
        except services.DatanetError as exc:
            if exc.code == "idempotency_conflict":
                raise IdempotencyConflict(key) from None
            raise refused(exc) from None
        return created(request, DatanetSerializer(datanet).data, location=f"/api/v1/datanets/{datanet.slug}/")

    @extend_schema(request=DatanetUpdateSerializer, responses=DatanetSerializer)
    def partial_update(self, request, *args, **kwargs):
        datanet = self.get_object()
        data = DatanetUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            datanet = services.datanet_update(datanet=datanet, actor=request.user, **data.validated_data)
        except services.DatanetError as exc:
            raise refused(exc) from None
        return Response(DatanetSerializer(datanet).data)

    @extend_schema(
        request=ContributionUploadSerializer,
        responses={
            201: ContributionSerializer,
            **error_responses(_409="The same file is already in this datanet.", _413="The file is too large."),
        },
    )
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser, FormParser])
    def contributions(self, request, slug=None):
        """Upload a file (multipart field `file`). The ingest runs in the background: poll the contribution."""
        datanet = self.get_object()
        data = ContributionUploadSerializer(data=request.data)
        if getattr(request._request, "upload_too_large", False):
            raise refused(services.DatanetError(services._too_large_message(), code="file_too_large"))
        data.is_valid(raise_exception=True)
        try:
            contribution = services.contribution_create(
                datanet=datanet,
                contributor=request.user,
                upload=data.validated_data["file"],
                column_mapping=data.validated_data.get("column_mapping"),
            )
        except services.DatanetError as exc:
            raise refused(exc) from None
        location = f"/api/v1/contributions/{contribution.pk}/"
        return created(request, ContributionSerializer(contribution).data, location=location)

    @extend_schema(methods=["GET"], request=None, responses=VersionSerializer(many=True))
    @extend_schema(methods=["POST"], request=VersionPublishSerializer, responses={201: VersionSerializer})
    @action(detail=True, methods=["get", "post"])
    def versions(self, request, slug=None):
        """GET: the datanet's versions, newest first. POST: publish a new version of the accepted rows (curators)."""
        datanet = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(selectors.version_list(datanet=datanet))
            return self.get_paginated_response(VersionSerializer(page, many=True).data)
        data = VersionPublishSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            version = services.version_publish(datanet=datanet, actor=request.user, notes=data.validated_data["notes"])
        except services.DatanetError as exc:
            raise refused(exc) from None
        location = f"/api/v1/datanets/{datanet.slug}/versions/{version.number}/"
        return created(request, VersionSerializer(version).data, location=location)

    @extend_schema(request=None, responses=VersionSerializer)
    @action(detail=True, methods=["get"], url_path=r"versions/(?P<number>[0-9]{1,9})", url_name="version")
    def version(self, request, slug=None, number=None):
        """One version of the datanet (where a new version's `Location` points)."""
        datanet = self.get_object()
        version = selectors.version_list(datanet=datanet).filter(number=int(number)).first()
        if version is None:
            raise NotFound("This datanet has no version with that number.")
        return Response(VersionSerializer(version).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="Search the rows' text"),
            OpenApiParameter("status", str, enum=["accepted", "pending"], description="pending: curators only"),
        ],
        responses=RecordSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def records(self, request, slug=None):
        """Accepted rows (curators may also list rows waiting for review)."""
        datanet = self.get_object()
        statuses = (Record.Status.ACCEPTED,)
        wanted = request.query_params.get("status", "accepted")
        if wanted not in ("accepted", "pending"):
            raise ValidationError({"status": [f"“{wanted}” is not one of: accepted, pending."]})
        if wanted == "pending":
            if not selectors.datanet_can_curate(user=request.user, datanet=datanet):
                raise refused(services.NotAllowed("Only curators can see rows waiting for review."))
            statuses = (Record.Status.PENDING,)
        records = selectors.record_list(datanet=datanet, q=request.query_params.get("q", ""), statuses=statuses)
        page = self.paginate_queryset(records)
        return self.get_paginated_response(RecordSerializer(page, many=True).data)


class ContributionViewSet(WriteThrottleMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A contribution, seen by its contributor and the datanet's curators."""

    lookup_value_regex = r"\d+"  # ids are numbers; anything else is the API's JSON 404, not a 500
    serializer_class = ContributionSerializer
    queryset = Contribution.objects.none()

    def get_object(self) -> Contribution:
        try:
            contribution = selectors.contribution_get_visible(user=self.request.user, contribution_id=self.kwargs["pk"])
        except (Contribution.DoesNotExist, ValueError):
            raise NotFound("No such contribution.") from None
        return contribution

    @extend_schema(request=ReviewSerializer, responses=ContributionSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        contribution = self.get_object()
        data = ReviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            contribution = services.contribution_approve(
                contribution=contribution, curator=request.user, note=data.validated_data["reason"]
            )
        except services.DatanetError as exc:
            raise refused(exc) from None
        return Response(ContributionSerializer(contribution).data)

    @extend_schema(request=RejectSerializer, responses=ContributionSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Rejects the contribution as not a fit for the datanet (its bond goes back) or as spam (its bond is
        forfeited to the datanet's pool); the reason is shown to the contributor."""
        contribution = self.get_object()
        data = RejectSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            contribution = services.contribution_reject(
                contribution=contribution,
                curator=request.user,
                reason=data.validated_data["reason"],
                grounds=data.validated_data["grounds"],
            )
        except services.DatanetError as exc:
            raise refused(exc) from None
        return Response(ContributionSerializer(contribution).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status", str, enum=list(selectors.CONTRIBUTION_ROW_STATUSES), description="Only rows in this state"
            )
        ],
        responses=ContributionRowSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def rows(self, request, pk=None):
        """The contribution's rows in file order, with their state, flags and the versions that hold them (the
        contributor and the datanet's curators). To the contributor, each row also says what it earned them
        (`earned`; null for curators)."""
        contribution = self.get_object()
        wanted = request.query_params.get("status", "")
        if wanted and wanted not in selectors.CONTRIBUTION_ROW_STATUSES:
            choices = ", ".join(selectors.CONTRIBUTION_ROW_STATUSES)
            raise ValidationError({"status": [f"“{wanted}” is not one of: {choices}."]})
        page = self.paginate_queryset(selectors.contribution_rows(contribution=contribution, status=wanted))
        versions = selectors.record_version_numbers(record_ids=[record.pk for record in page])
        earnings = None
        if contribution.contributor_id == request.user.pk:
            earnings = hooks.row_earnings(
                user=request.user, contribution_id=contribution.pk, record_ids=[record.pk for record in page]
            )
        context = {"versions": versions, "earned": earnings["rows"] if earnings else None}
        return self.get_paginated_response(ContributionRowSerializer(page, many=True, context=context).data)
