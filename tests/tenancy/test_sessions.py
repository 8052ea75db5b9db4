"""Someone who reads the session table (SQL injection, a backup) still cannot sign in as anyone."""

import pytest
from django.db import connection

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def sign_in(api, clinic):
    portal = api(clinic.host, enforce_csrf_checks=True)
    token = portal.get("/api/v1/auth/csrf").json()["csrf_token"]
    response = portal.post(
        "/api/v1/auth/login",
        {"email": clinic.email("practitioner"), "password": PASSWORD},
        **{"X-CSRFToken": token},
    )
    assert response.status_code == 200, response.content
    return portal


def test_the_session_table_holds_only_hashes_of_session_keys(api, alpha):
    portal = sign_in(api, alpha)
    cookie = portal.client.cookies["sessionid"].value
    with connection.cursor() as cursor:
        cursor.execute("SELECT session_key FROM tenancy_portal_session")
        stored = [row[0] for row in cursor.fetchall()]
    assert stored and all(key.startswith("h1:") and len(key) == 67 for key in stored)
    assert cookie not in "".join(stored)
    assert portal.get("/api/v1/auth/me").status_code == 200


def test_a_stored_key_used_as_a_cookie_signs_no_one_in(api, alpha):
    sign_in(api, alpha)
    with connection.cursor() as cursor:
        cursor.execute("SELECT session_key FROM tenancy_portal_session")
        stolen = [row[0] for row in cursor.fetchall()]
    for key in stolen:
        thief = api(alpha.host)
        thief.client.cookies["sessionid"] = key
        assert thief.get("/api/v1/auth/me").status_code in (401, 403)


def test_signing_out_deletes_the_session(api, alpha):
    import hashlib

    portal = sign_in(api, alpha)
    key = portal.client.cookies["sessionid"].value
    stored = "h1:" + hashlib.sha256(key.encode()).hexdigest()
    token = portal.client.cookies["csrftoken"].value
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tenancy_portal_session WHERE session_key = %s", [stored])
        assert cursor.fetchone() == (1,)
    assert portal.post("/api/v1/auth/logout", **{"X-CSRFToken": token}).status_code == 204
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tenancy_portal_session WHERE session_key = %s", [stored])
        assert cursor.fetchone() == (0,)
