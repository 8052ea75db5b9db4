"""WebSocket routes (signalling arrives with the video issue)."""

websocket_urlpatterns: list = []
