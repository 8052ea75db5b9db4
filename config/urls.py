"""URL map: the versioned API under /api/v1/, its schema and docs, and the health endpoints."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from tenancy import health
from video.urls import page_urlpatterns as video_pages

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI's split view loads its start-up script from a URL, so the strict CSP holds. No Redoc page:
    # drf-spectacular's needs an inline script and fonts from Google, which that CSP (rightly) blocks.
    path("api/v1/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", include("tenancy.urls")),
    path("api/v1/", include("clinic.urls")),
    path("api/v1/", include("audit.urls")),
    path("api/v1/", include("video.urls")),
    path("", include(video_pages)),  # /visit/<encounter id>: the video visit page
]

handler400 = "tenancy.errors.bad_request"
handler403 = "tenancy.errors.permission_denied"
handler404 = "tenancy.errors.not_found"
handler500 = "tenancy.errors.server_error"
