"""A bearer token a worker already knows skips its lookup, and the database still confirms it on every request.

A read with a token this worker found in force less than an idle-touch interval ago sends no lookup: the
database checks the token (`tenancy_token_in_force()`) in the round trip of the request's first statement,
for exactly the context the request runs under. So whatever ends a token, on this worker, on another one or
straight in the database, ends it on the very next request everywhere (issue 13, THREAT_MODEL control 109).
Each test makes one read first, so the token is known, and checks that it was.
"""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenancy import services
from tenancy.context import (
    ContextRefused,
    TenantContext,
    activate,
    deactivate,
    sign_context_body,
    tenant_context,
)
from tenancy.models import ApiToken, Membership, Organization, User
from tests.audit.test_shipper import committed
from tests.conftest import in_context
from tests.tenancy.test_auth import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_known_tokens():
    services.forget_token()
    yield
    services.forget_token()


def known_reader(api, clinic, role: str = "staff"):
    """A client whose token this worker now knows (one read made), and the token's row."""
    client = api(clinic.host)
    raw = client.sign_in_token(clinic.email(role))
    assert client.get("/api/v1/auth/me").status_code == 200
    key_hash = services.hash_token(raw)
    assert key_hash in services._known_tokens
    with in_context(clinic.org):
        return client, ApiToken.objects.get(key_hash=key_hash)


def token_queries(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "tenancy_apitoken" in q["sql"]]


def test_a_known_token_s_read_sends_no_lookup_and_still_answers(api, alpha):
    client, _ = known_reader(api, alpha)
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/v1/auth/me")
    assert response.status_code == 200 and response.json()["role"] == "staff"
    assert token_queries(captured) == []  # no lookup; the confirmation rides with the context


def test_a_token_revoked_in_the_database_is_refused_on_the_next_read(api, alpha):
    """What another worker's sign-out, or an operator, does: the row changes, this worker's memory does not."""
    client, token = known_reader(api, alpha)
    with in_context(alpha.org):
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")
    assert token.key_hash not in services._known_tokens  # refused, and forgotten
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")


@pytest.mark.parametrize(
    "end",
    ["expired", "idle", "membership_deactivated", "user_deactivated", "locked_out", "role_changed"],
)
def test_whatever_ends_a_known_token_in_the_database_ends_it_on_the_next_read(api, alpha, end):
    client, token = known_reader(api, alpha)
    membership = alpha.membership("staff")
    now = timezone.now()
    with in_context(alpha.org):
        if end == "expired":
            ApiToken.objects.filter(pk=token.pk).update(expires_at=now - timedelta(seconds=1))
        elif end == "idle":
            minutes = Organization.objects.get(pk=alpha.org.id).idle_timeout_minutes
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now - timedelta(minutes=minutes + 1))
        elif end == "membership_deactivated":
            Membership.objects.filter(pk=membership.pk).update(is_active=False)
        elif end == "locked_out":
            Membership.objects.filter(pk=membership.pk).update(sessions_revoked_at=now)
        elif end == "role_changed":
            # The context was signed for the old role: a demotion must not keep its powers for a minute.
            Membership.objects.filter(pk=membership.pk).update(role="patient")
    if end == "user_deactivated":
        User.objects.filter(pk=token.user_id).update(is_active=False)
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")


def test_a_known_token_read_that_touches_the_record_is_refused_before_any_row_is_served(api, alpha):
    """The check travels ahead of the view's first statement in the same pipeline: its failure aborts the
    statement, so the view never sees a row (and nothing is recorded as read)."""
    client, token = known_reader(api, alpha, role="practitioner")
    assert client.get("/api/v1/patients").status_code == 200
    with in_context(alpha.org):
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert_error(client.get("/api/v1/patients"), 401, "invalid_token")


def test_a_write_looks_the_token_up_afresh(api, alpha):
    client, token = known_reader(api, alpha)
    with CaptureQueriesContext(connection) as captured:
        client.post("/api/v1/auth/logout")
    assert token_queries(captured)  # looked up (and then revoked)
    assert token.key_hash not in services._known_tokens
    assert_error(client.get("/api/v1/auth/me"), 401, "invalid_token")


def test_a_nested_context_before_any_statement_still_sends_the_check_with_its_own_context(alpha):
    """A view that opens another context first: the waiting check goes out then, with the context it was
    made for, instead of being replaced unsent."""
    member = alpha.membership("staff")
    with transaction.atomic():
        token = activate(
            TenantContext(org_id=alpha.org.id, role="staff", user_id=member.user_id),
            checks=(("public.tenancy_token_in_force(%s)", ["0" * 64]),),
        )
        try:
            with pytest.raises(ContextRefused):
                with tenant_context(org_id=alpha.org.id, role="platform"):
                    pass
        finally:
            deactivate(token, outer_blocks=len(connection.atomic_blocks))


def test_the_check_is_no_oracle_for_another_clinic_s_or_another_user_s_token(
    clinics, raw_runtime, alpha, beta
):
    """Called straight from SQL under alpha's staff context: alpha's staff token passes; beta's token, alpha's
    practitioner's and a made-up hash are refused the same way, so it tells nothing outside the caller's own."""

    def issue(clinic, role: str) -> str:
        with in_context(clinic.org):
            return services.issue_api_token(membership=clinic.membership(role))[1].key_hash

    own, others = committed(issue, alpha, "staff"), [committed(issue, beta, "staff"), "0" * 64]
    others.append(committed(issue, alpha, "practitioner"))
    user = alpha.membership("staff").user_id
    body = "|".join(["v1", str(alpha.org.id), str(user), "staff", "operations", str(int(time.time()) + 600)])
    context = body + "|" + sign_context_body(body)
    with raw_runtime.transaction():
        raw_runtime.execute("SELECT set_config('app.context', %s, true)", [context])
        raw_runtime.execute("SELECT public.tenancy_token_in_force(%s)", [own])  # in force: no error
    for key_hash in others:
        with raw_runtime.transaction():
            raw_runtime.execute("SELECT set_config('app.context', %s, true)", [context])
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification), raw_runtime.transaction():
                raw_runtime.execute("SELECT public.tenancy_token_in_force(%s)", [key_hash])
