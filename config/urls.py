"""URL map: the versioned API under /api/v1/, its schema and docs, and the health endpoints."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from tenancy import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
    path("api/v1/docs/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include("tenancy.urls")),
]

handler400 = "tenancy.errors.bad_request"
handler403 = "tenancy.errors.permission_denied"
handler404 = "tenancy.errors.not_found"
handler500 = "tenancy.errors.server_error"
