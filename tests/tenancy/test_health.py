"""Liveness and readiness: /healthz says the process runs, /readyz names every dependency it cannot reach.

Unreachable dependencies are real ones: a Redis URL and a Vault address on a port nothing listens on, and a
server process whose DATABASE_URL points at such a port.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from tenancy import health

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture
def checks():
    """The registered checks, restored after the test whatever it registered."""
    saved, required = dict(health._checks), set(health._required)
    yield health._checks
    health._checks.clear()
    health._checks.update(saved)
    health._required.clear()
    health._required.update(required)


def assert_names(body: dict, *dependencies: str, status: str = "unavailable") -> None:
    assert body["status"] == status
    error = body["error"]
    assert set(error) == {"code", "message", "fields"} and error["code"] == "dependency_unavailable"
    assert set(error["fields"]) == set(dependencies)
    for name in dependencies:
        assert name in error["message"]
        assert body["checks"][name]["status"] == "unavailable" and body["checks"][name]["error"]
    for name, result in body["checks"].items():
        if name not in dependencies:
            assert result["status"] == "ok"


def test_healthz_answers_while_the_process_runs(api, clinics):
    response = api("testserver").get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_checks_the_database(api, clinics):
    response = api("testserver").get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok" and body["checks"]["database"]["status"] == "ok"


def test_readyz_names_an_unreachable_redis(api, clinics, checks):
    health.register_check("redis", health._redis)
    with override_settings(REDIS_URL=f"redis://{CLOSED}/0"):
        response = api("testserver").get("/readyz")
    # Shared by every worker: degraded, not unready, so the load balancer keeps the worker (module docstring).
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert_names(response.json(), "redis", status="degraded")


def test_readyz_names_an_unreachable_vault(api, clinics, checks):
    health.register_check("vault", health._vault)
    with override_settings(VAULT_ADDR=f"http://{CLOSED}"):
        response = api("testserver").get("/readyz")
    assert response.status_code == 200
    assert_names(response.json(), "vault", status="degraded")


def test_readyz_names_every_dependency_that_is_down(api, clinics, checks):
    health.register_check("redis", health._redis)
    health.register_check("vault", health._vault)
    with override_settings(REDIS_URL=f"redis://{CLOSED}/0", VAULT_ADDR=f"http://{CLOSED}"):
        response = api("testserver").get("/readyz")
    assert response.status_code == 200
    assert_names(response.json(), "redis", "vault", status="degraded")


def test_readyz_is_503_when_a_required_dependency_fails_beside_degraded_ones(api, clinics, checks):
    def broken_database():
        return "connection refused"

    health.register_check("database", broken_database, required=True)
    health.register_check("vault", health._vault)
    with override_settings(VAULT_ADDR=f"http://{CLOSED}"):
        response = api("testserver").get("/readyz")
    assert response.status_code == 503
    assert_names(response.json(), "database", "vault")


def test_a_check_that_raises_is_a_report_not_a_500(api, clinics, checks):
    def broken():
        raise RuntimeError("x" * 10_000)

    health.register_check("broken", broken, required=True)
    response = api("testserver").get("/readyz")
    assert response.status_code == 503
    assert_names(response.json(), "broken")
    assert len(response.json()["checks"]["broken"]["error"]) < 300


def run_server_code(env_overrides: dict, code: str) -> dict:
    """Run requests through the whole stack in a fresh process configured by environment variables."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "DJANGO_ALLOWED_HOSTS": ".localhost,testserver",
        **env_overrides,
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


REQUESTS = """
import json, logging, django
django.setup()
logging.disable(logging.CRITICAL)
from django.test import Client
out = {}
for host, path in [("testserver", "/healthz"), ("testserver", "/readyz"), ("alpha.localhost", "/api/v1/portal/branding")]:
    r = Client(HTTP_HOST=host, raise_request_exception=False).get(path)
    out[path] = [r.status_code, r.content.decode()]
print(json.dumps(out))
"""


def test_with_the_database_unreachable_liveness_holds_and_readiness_names_it():
    out = run_server_code({"DATABASE_URL": f"postgresql://nobody:nothing@{CLOSED}/nothing"}, REQUESTS)
    status, body = out["/healthz"]
    assert status == 200, body  # a liveness probe must not restart every worker because the database is down
    status, body = out["/readyz"]
    assert status == 503, body
    assert_names(json.loads(body), "database")
    status, body = out["/api/v1/portal/branding"]
    assert status == 503, body
    assert json.loads(body)["error"]["code"] == "database_unavailable"


def test_readyz_names_a_vault_that_is_up_but_refuses_the_applications_credential(api, clinics, checks):
    """A revoked token or an expired secret id: Vault answers its health check, yet every cold read fails."""
    from tenancy.crypto import vault

    saved = (vault._app_client, vault._ops_client)
    vault.set_clients(vault.VaultClient(settings.VAULT_ADDR, token="hvs.revoked-or-never-issued"), saved[1])
    health.register_check("vault", health._vault)
    try:
        response = api("testserver").get("/readyz")
    finally:
        vault.set_clients(*saved)
    assert response.status_code == 200
    assert_names(response.json(), "vault", status="degraded")
    assert "credential was refused" in response.json()["checks"]["vault"]["error"]
    # And with the real credential the same check is green again.
    assert api("testserver").get("/readyz").json()["checks"]["vault"]["status"] == "ok"
