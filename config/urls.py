from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from accounts.api import TokenObtainView
from attribution.api import (
    ContributionFindingView,
    DatanetPoolView,
    DatanetReputationView,
    InferenceAttributionView,
    InferenceReceiptView,
)
from config import views as config_views
from core import views as core_views
from core.api import api_not_found
from datanets.api import ContributionViewSet, DatanetViewSet
from modelfactory.api import (
    BaseModelViewSet,
    EvaluationCancelView,
    EvaluationDetailView,
    ExportDetailView,
    FineTuneViewSet,
    InferenceDetailView,
    TrainedModelViewSet,
)
from modelfactory.openai_api import ChatCompletionsView, ModelDetailView, ModelListView, openai_not_found

router = DefaultRouter()
router.register("base-models", BaseModelViewSet, basename="base-model")
router.register("datanets", DatanetViewSet, basename="datanet")
router.register("contributions", ContributionViewSet, basename="contribution")
router.register("finetunes", FineTuneViewSet, basename="finetune")
router.register("models", TrainedModelViewSet, basename="trained-model")

api_v1 = [
    path("auth/token/", TokenObtainView.as_view(), name="api-token-obtain"),
    path("datanets/<slug:slug>/reputation/", DatanetReputationView.as_view(), name="datanet-reputation"),
    path("datanets/<slug:slug>/pool/", DatanetPoolView.as_view(), name="datanet-pool"),
    path(
        "contributions/<int:contribution_id>/finding/", ContributionFindingView.as_view(), name="contribution-finding"
    ),
    path("", include(router.urls)),
    path("ledger/", include("ledger.api_urls")),
    path("inferences/<int:inference_id>/", InferenceDetailView.as_view(), name="inference-detail"),
    path("exports/<int:export_id>/", ExportDetailView.as_view(), name="export-detail"),
    path("evaluations/<int:evaluation_id>/", EvaluationDetailView.as_view(), name="evaluation-detail"),
    path("evaluations/<int:evaluation_id>/cancel/", EvaluationCancelView.as_view(), name="evaluation-cancel"),
    path(
        "inferences/<int:inference_id>/attribution/", InferenceAttributionView.as_view(), name="inference-attribution"
    ),
    path("inferences/<int:inference_id>/receipt/", InferenceReceiptView.as_view(), name="inference-receipt"),
]

urlpatterns = [
    path("", config_views.home, name="home"),
    path("healthz", core_views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("", include("modelfactory.urls")),
    path("admin/", admin.site.urls),
    path("datanets/", include("datanets.urls")),
    path("wallet/", include("ledger.urls")),
    path("attribution/", include("attribution.urls")),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file, so the page runs under script-src 'self'.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="core/swagger_ui.html"),
        name="api-docs",
    ),
    # Unknown API routes answer in the API's JSON error shape, even with DEBUG on.
    re_path(r"^api/", api_not_found),
    # OpenAI-compatible API: answers and errors in OpenAI's shapes.
    path("v1/chat/completions", ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("v1/models", ModelListView.as_view(), name="openai-models"),
    path("v1/models/<str:slug>", ModelDetailView.as_view(), name="openai-model"),
    re_path(r"^v1/", openai_not_found),
]

admin.site.site_header = "ModelFactory operations"
admin.site.site_title = "ModelFactory admin"
