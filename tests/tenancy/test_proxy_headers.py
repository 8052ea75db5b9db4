"""Forged X-Forwarded-For / X-Forwarded-Proto against the `make run` topology: uvicorn alone, no proxy in front.

The server is started with exactly the command line `make run` uses (devstack.launcher.server_command) and the
test database's environment, with TRUSTED_PROXIES unset (the default). A client on loopback, the only peer
there is, sends a failed sign-in, a sign-in and a read of a health record, each with a forged
`X-Forwarded-For: 203.0.113.9` and `X-Forwarded-Proto: https`. The audit outbox must record the address the
connection really came from (127.0.0.1) for every one of them, and no response may carry HSTS: the request
came over plain http, whatever the header says.

The loopback cluster (nginx in front of the workers) is attacked in tests/drills/test_proxy_headers.py, the
Kubernetes manifests are checked in tests/deploy/test_manifests.py (`test_proxy_trust`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from config.proxies import parse_trusted_proxies, uvicorn_proxy_arguments
from devstack import launcher
from tenancy.context import tenant_context
from tests.conftest import PASSWORD
from tests.video.test_signalling import committed

ROOT = Path(__file__).resolve().parents[2]
FORGED_IP = "203.0.113.9"  # TEST-NET-3: an address no test client has
FORGED = {"X-Forwarded-For": FORGED_IP, "X-Forwarded-Proto": "https"}

pytestmark = pytest.mark.django_db(transaction=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def make_run_server(log: Path) -> Iterator[int]:
    """uvicorn as `make run` starts it, on a free loopback port, with the test database's environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS")}
    env.update({"DJANGO_SECURE_COOKIES": "false", "PYTHONUNBUFFERED": "1"})
    with log.open("wb") as out:
        process = subprocess.Popen(
            launcher.server_command("127.0.0.1", str(port), env),
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not answer within 60 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def server_port(tmp_path_factory) -> Iterator[int]:
    with make_run_server(tmp_path_factory.mktemp("make-run") / "uvicorn.log") as port:
        yield port


def outbox_events(org_id, request_id: str) -> list[dict]:
    """The audit events the server committed for one request (read as the shipper would, before it ships)."""

    def read() -> list[dict]:
        with tenant_context(org_id=org_id, role="shipper"), connection.cursor() as cursor:
            cursor.execute(
                "SELECT payload FROM audit_outboxevent WHERE org_id = %s AND payload->>'request_id' = %s",
                [org_id, request_id],
            )
            return [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in cursor.fetchall()]

    return committed(read)


def send(port: int, host: str, method: str, path: str, **kwargs) -> tuple[requests.Response, str]:
    """One request from loopback with forged forwarding headers and a request id of its own."""
    request_id = uuid.uuid4().hex
    headers = {"Host": host, "X-Request-ID": request_id, **FORGED, **kwargs.pop("headers", {})}
    with requests.Session() as session:
        session.trust_env = False
        response = session.request(
            method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30, **kwargs
        )
    return response, request_id


def assert_recorded_from_loopback(org_id, request_id: str, response: requests.Response) -> None:
    events = outbox_events(org_id, request_id)
    assert events, f"no audit event for request {request_id} ({response.status_code} {response.text[:200]})"
    # The database's own backstop events (db_update, written by a trigger) carry no address at all.
    recorded = {event["actor"]["ip"] for event in events} - {None}
    assert recorded == {"127.0.0.1"}, f"{response.request.method} {response.request.path_url}: {recorded}"
    assert FORGED_IP not in json.dumps(events)
    # Over plain http: no HSTS, whatever X-Forwarded-Proto claims.
    assert "Strict-Transport-Security" not in response.headers


def test_make_run_records_the_real_address_not_a_forged_x_forwarded_for(server_port, alpha):
    """Failed sign-in (what lockouts and alerting count), sign-in, and a PHI read, each with forged headers."""
    failed, failed_id = send(
        server_port,
        alpha.host,
        "POST",
        "/api/v1/auth/tokens",
        json={"email": f"nobody-{uuid.uuid4().hex[:8]}@alpha.test", "password": "wrong-password-123"},
    )
    assert failed.status_code in (400, 401), failed.text
    assert_recorded_from_loopback(alpha.org.id, failed_id, failed)

    patient = alpha.patients[0]
    signed_in, signed_in_id = send(
        server_port,
        alpha.host,
        "POST",
        "/api/v1/auth/tokens",
        json={"email": patient.email, "password": PASSWORD},
    )
    assert signed_in.status_code == 201, signed_in.text
    assert_recorded_from_loopback(alpha.org.id, signed_in_id, signed_in)

    read, read_id = send(
        server_port,
        alpha.host,
        "GET",
        f"/api/v1/patients/{patient.pk}",
        headers={"Authorization": f"Bearer {signed_in.json()['token']}"},
    )
    assert read.status_code == 200, read.text
    assert_recorded_from_loopback(alpha.org.id, read_id, read)


def test_make_run_trusts_no_proxy_headers_unless_a_proxy_is_configured():
    """The command line itself: no TRUSTED_PROXIES, no forwarded-header trust in uvicorn (whose own default
    would trust 127.0.0.1)."""
    command = launcher.server_command("127.0.0.1", "8000", {})
    assert "--no-proxy-headers" in command
    assert not any(part.startswith("--forwarded-allow-ips") for part in command)
    trusted = launcher.server_command("127.0.0.1", "8000", {"TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16"})
    assert trusted[-2:] == ["--proxy-headers", "--forwarded-allow-ips=10.0.0.5,10.1.0.0/16"]


# -- the setting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "0.0.0.0/0",
        "::/0",
        "10.0.0.0/8,*",
        "ingress-nginx",
        "10.0.0.300",
        "10.244.1.7/16",  # host bits set: a typo for a network or an address
        "10.0.0.1 10.0.0.2",
    ],
)
def test_nonsense_trusted_proxies_are_refused(value):
    with pytest.raises(ImproperlyConfigured):
        parse_trusted_proxies(value)


def test_trusted_proxies_are_normalised():
    assert parse_trusted_proxies("") == []
    assert parse_trusted_proxies(" 10.244.0.0/16 , 127.0.0.4,,::1 ") == ["10.244.0.0/16", "127.0.0.4", "::1"]
    assert uvicorn_proxy_arguments([]) == ["--no-proxy-headers"]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"TRUSTED_PROXIES": "*"}, "TRUSTED_PROXIES"),
        ({"TRUSTED_PROXIES": "0.0.0.0/0"}, "TRUSTED_PROXIES"),
        ({"DJANGO_BEHIND_TLS_PROXY": "true"}, "DJANGO_BEHIND_TLS_PROXY"),
    ],
)
def test_production_settings_refuse_to_start_on_nonsense_proxy_trust(variables, message):
    """The server process itself stops at startup (config.settings), with the variable named."""
    env = {**os.environ, "DJANGO_DEBUG": "false", **variables}
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr[-2000:]


def test_django_never_reads_x_forwarded_proto_itself():
    """Only uvicorn, which checks the peer, may turn X-Forwarded-Proto into the request's scheme; Django's
    SECURE_PROXY_SSL_HEADER would believe it from any peer."""
    from django.conf import settings

    assert getattr(settings, "SECURE_PROXY_SSL_HEADER", None) is None
