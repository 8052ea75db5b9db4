"""Every test leaves no heartbeat-and-sweep task (video/liveness.py) behind in its event loop."""

from __future__ import annotations

import pytest

from video import liveness


@pytest.fixture(autouse=True)
async def _stop_liveness():
    yield
    await liveness.stop()
