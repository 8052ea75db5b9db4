from django.urls import path

from . import views

urlpatterns = [
    path("video/turn-credentials", views.TurnCredentialsView.as_view(), name="turn-credentials"),
]

# The portal page, at the site root (config/urls.py mounts this list there, the API list under /api/v1/).
page_urlpatterns = [
    path("visit/<uuid:encounter_id>", views.visit_page, name="video-visit"),
]
