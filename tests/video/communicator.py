"""A WebSocket test client for ASGI apps (channels.testing needs daphne, which this project does not use)."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlparse

from asgiref.testing import ApplicationCommunicator


class WebsocketCommunicator(ApplicationCommunicator):
    def __init__(self, application, path: str, headers=None, scheme: str = "ws"):
        parsed = urlparse(path)
        scope = {
            "type": "websocket",
            "scheme": scheme,  # "wss" behind TLS, or as uvicorn sets it from a trusted X-Forwarded-Proto
            "path": unquote(parsed.path),
            "query_string": parsed.query.encode("utf-8"),
            "headers": headers or [],
            "subprotocols": [],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        super().__init__(application, scope)

    async def connect(self, timeout: float = 5):
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        return True, response.get("subprotocol")

    async def send_json_to(self, data) -> None:
        await self.send_input({"type": "websocket.receive", "text": json.dumps(data)})

    async def receive_json_from(self, timeout: float = 5):
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            raise ConnectionError(f"closed with code {response.get('code')}")
        return json.loads(response["text"])

    async def receive_close(self, timeout: float = 5) -> int:
        """The code of the next close (any messages sent before it are skipped)."""
        while True:
            response = await self.receive_output(timeout)
            if response["type"] == "websocket.close":
                return response.get("code", 1000)

    async def disconnect(self, code: int = 1000, timeout: float = 5) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(timeout)
