"""Configuration: with DEBUG off the settings refuse a demo's defaults, and responses carry security headers.

The refusal tests load the real settings module in a fresh process with a crafted environment, which is
what a server does at start-up.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from config.settings import DEV_SECRET_KEY
from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
LOAD = "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'; django.setup(); print('loaded')"


def production_env(**overrides: str | None) -> dict:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "DJANGO_ALLOWED_HOSTS": "portal.clinic.example,portal.other.example",
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def load_settings(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_production_settings_load_when_everything_is_set():
    result = load_settings(production_env())
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize(
    "overrides,complaint",
    [
        ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": DEV_SECRET_KEY}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "s" * 31}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECURE_COOKIES": "false"}, "DJANGO_SECURE_COOKIES"),
        ({"DJANGO_SECURE_COOKIES": "0"}, "DJANGO_SECURE_COOKIES"),
        (
            {"DJANGO_SECURE_COOKIES": "false", "DJANGO_ALLOWED_HOSTS": "localhost,portal.clinic.example"},
            "DJANGO_SECURE_COOKIES",
        ),
        ({"DJANGO_ALLOWED_HOSTS": None}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_ALLOWED_HOSTS": " , "}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_ALLOWED_HOSTS": "portal.clinic.example,*"}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": None, "DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY"),  # DEBUG is off unless said
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"DATABASE_POOL_SIZE": "-1"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_POOL_SIZE": "eight"}, "DATABASE_POOL_SIZE"),
    ],
)
def test_with_debug_off_the_settings_refuse_to_load(overrides, complaint):
    result = load_settings(production_env(**overrides))
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr, result.stderr[-3000:]


def test_every_problem_is_named_at_once():
    result = load_settings(
        production_env(
            DJANGO_SECRET_KEY=None,
            DJANGO_SECURE_COOKIES="false",
            DJANGO_ALLOWED_HOSTS="portal.clinic.example,*",
        )
    )
    assert result.returncode != 0
    for name in ("DJANGO_SECRET_KEY", "DJANGO_SECURE_COOKIES", "DJANGO_ALLOWED_HOSTS"):
        assert name in result.stderr


def test_plain_http_cookies_are_tolerated_only_when_every_host_is_loopback():
    """The demo: production settings, answering only on *.localhost over plain http."""
    env = production_env(DJANGO_SECURE_COOKIES="false", DJANGO_ALLOWED_HOSTS=".localhost,localhost,127.0.0.1")
    result = load_settings(env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_demo_loads_with_debug_on_and_its_development_defaults():
    env = production_env(
        DJANGO_DEBUG="true", DJANGO_SECRET_KEY=None, DJANGO_ALLOWED_HOSTS=None, DJANGO_SECURE_COOKIES="false"
    )
    result = load_settings(env)
    assert result.returncode == 0, result.stderr[-3000:]


# -- what the running test server is configured with (DEBUG off, like production) ------------------------------


def test_tests_run_with_debug_off_and_secure_cookies():
    assert settings.DEBUG is False
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE and settings.SESSION_COOKIE_HTTPONLY
    assert "*" not in settings.ALLOWED_HOSTS
    assert settings.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "host,path,status",
    [
        ("alpha.localhost", "/api/v1/portal/branding", 200),
        ("alpha.localhost", "/api/v1/auth/me", 401),
        ("alpha.localhost", "/api/v1/nope", 404),
        ("nobody-serves-this.localhost", "/api/v1/portal/branding", 404),
        ("testserver", "/healthz", 200),
        ("testserver", "/api/v1/schema/", 200),
    ],
)
def test_security_headers_on_every_response(api, clinics, host, path, status):
    client = api(host).client
    response = client.get(path)
    assert response.status_code == status
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    csp = response["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "Strict-Transport-Security" not in response  # only over HTTPS, where browsers honour it

    secure = client.get(path, secure=True)
    assert secure["Strict-Transport-Security"] == f"max-age={settings.SECURE_HSTS_SECONDS}; includeSubDomains"
    assert settings.SECURE_HSTS_SECONDS >= 31536000


@pytest.mark.django_db
def test_api_responses_are_not_cached(api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("staff"))
    assert "no-store" in client.get("/api/v1/auth/me")["Cache-Control"]


@pytest.mark.django_db
def test_html_pages_get_the_strict_page_policy(api, clinics):
    response = api("testserver").get("/api/v1/docs/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp and "unsafe" not in csp
    assert response["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_secure_httponly_and_same_site(api, alpha):
    portal = api(alpha.host, enforce_csrf_checks=True)
    csrf = portal.get("/api/v1/auth/csrf").cookies["csrftoken"]
    assert csrf["secure"] and csrf["samesite"] == "Strict"
    response = portal.post(
        "/api/v1/auth/login",
        {"email": alpha.email("staff"), "password": PASSWORD},
        **{"X-CSRFToken": portal.client.cookies["csrftoken"].value},
    )
    assert response.status_code == 200, response.content
    session = response.cookies["sessionid"]
    assert session["httponly"] and session["secure"] and session["samesite"] == "Lax"
    assert int(session["max-age"]) <= 12 * 3600


def test_a_pool_size_gives_each_process_a_checked_pool_instead_of_persistent_connections():
    """DATABASE_POOL_SIZE (make cluster, the Kubernetes web pods): psycopg's pool through Django, a connection
    checked when taken, none kept per thread (CONN_MAX_AGE would make Django refuse the pool)."""
    code = (
        LOAD.removesuffix("; print('loaded')")
        + "; from django.db import connection as c; print(c.settings_dict['CONN_MAX_AGE'], "
        "c.settings_dict['OPTIONS'].get('pool', {}).get('max_size'), type(c.pool).__name__)"
    )
    env = production_env(
        DATABASE_URL="postgresql://app:secret@127.0.0.1:6432/telemed", DATABASE_POOL_SIZE="3"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["0", "3", "ConnectionPool"]
    env["DATABASE_POOL_SIZE"] = "0"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split() == ["60", "None", "NoneType"], result.stderr[-3000:]
