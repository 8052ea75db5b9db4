"""ASGI entry point: HTTP through Django, WebSockets through Channels (video signalling)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from video.origin import SameHostOriginValidator  # noqa: E402
from video.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origin checked against ALLOWED_HOSTS (no cross-site socket) and against the socket's own host (no
        # socket from another clinic's portal, video/origin.py); the session cookie or a bearer token
        # authenticates (video.services.authenticate).
        "websocket": AllowedHostsOriginValidator(
            SameHostOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
