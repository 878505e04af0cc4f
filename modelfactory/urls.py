from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from accounts.api import TokenObtainView
from core import views as core_views
from core.api import api_not_found
from modelfactory.api import BaseModelViewSet

router = DefaultRouter()
router.register("base-models", BaseModelViewSet, basename="base-model")

api_v1 = [
    path("auth/token/", TokenObtainView.as_view(), name="api-token-obtain"),
    path("", include(router.urls)),
    path("ledger/", include("ledger.api_urls")),
]

urlpatterns = [
    path("", core_views.home, name="home"),
    path("healthz", core_views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("wallet/", include("ledger.urls")),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Unknown API routes answer in the API's JSON error shape, even with DEBUG on.
    re_path(r"^api/", api_not_found),
]

admin.site.site_header = "ModelFactory operations"
admin.site.site_title = "ModelFactory admin"
