"""`manage.py video_selftest` against a local coturn: relay works, and clear failures when it cannot.

coturn missing: skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from devstack.coturn import prepare_local_turn, turnserver_binary
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    require_tool(turnserver_binary(), "turnserver is not installed (apt-get install coturn)")
    secret = os.urandom(24).hex()
    server = prepare_local_turn(tmp_path_factory.mktemp("coturn-selftest"), [secret])
    server.start()
    yield server
    server.stop()


def udp_url(server) -> str:
    return f"turn:{server.listening_ip}:{server.ports.listening}?transport=udp"


def test_the_selftest_calls_relay_only_through_the_configured_turn_server(settings, coturn):
    settings.TURN_SHARED_SECRETS = coturn.secrets
    settings.TURN_URLS = [udp_url(coturn), *coturn.urls()[1:]]
    out = io.StringIO()
    call_command("video_selftest", pings=3, timeout=20, stdout=out)
    text = out.getvalue()
    print(text)
    assert "Relay works" in text
    assert f"selected pair relay {coturn.relay_ip}:" in text and f"-> relay {coturn.relay_ip}:" in text
    assert "caller:" in text and "callee:" in text
    assert "Data-channel round trip: median" in text


def test_no_turn_configuration_is_a_clear_error(settings):
    settings.TURN_SHARED_SECRETS = []
    settings.TURN_URLS = []
    with pytest.raises(CommandError, match="TURN is not configured"):
        call_command("video_selftest", stdout=io.StringIO())


def test_an_unreachable_turn_server_is_a_clear_error(settings):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    settings.TURN_SHARED_SECRETS = ["x" * 40]
    settings.TURN_URLS = [f"turn:127.0.0.1:{port}?transport=udp"]
    with pytest.raises(CommandError, match=r"TURN server|No relayed connection"):
        call_command("video_selftest", timeout=4, stdout=io.StringIO())


def test_credentials_under_a_secret_coturn_does_not_know_are_a_clear_error(settings, coturn):
    settings.TURN_SHARED_SECRETS = ["not-the-coturn-secret-" + "y" * 20]
    settings.TURN_URLS = [udp_url(coturn)]
    with pytest.raises(CommandError, match=r"TURN server|No relayed connection"):
        call_command("video_selftest", timeout=6, stdout=io.StringIO())


def test_the_command_exits_non_zero_with_a_message_when_turn_is_not_configured():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURN_")}
    result = subprocess.run(
        [sys.executable, "manage.py", "video_selftest"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "TURN is not configured" in result.stderr
