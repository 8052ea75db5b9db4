from django.urls import path

from . import views

urlpatterns = [
    path("video/turn-credentials", views.TurnCredentialsView.as_view(), name="turn-credentials"),
]
