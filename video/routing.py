"""WebSocket routes: one signalling socket per participant per encounter."""

from django.urls import re_path

from .consumers import SignalConsumer

websocket_urlpatterns = [
    re_path(r"^ws/v1/encounters/(?P<encounter_id>[0-9a-fA-F-]{36})/signal$", SignalConsumer.as_asgi()),
]
