"""WebSocket routes: one signalling socket per participant per encounter.

Anything else (another path, an encounter id that is not a UUID) is refused at the handshake, which the server
answers with HTTP 403, before any authentication or lookup: Channels' router would raise ValueError ("No route
found") instead, which the server answers with a 500.
"""

from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from .consumers import SignalConsumer

UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

websocket_urlpatterns = [
    re_path(rf"^ws/v1/encounters/(?P<encounter_id>{UUID})/signal$", SignalConsumer.as_asgi()),
    re_path(r"", WebsocketDenier.as_asgi()),
]
