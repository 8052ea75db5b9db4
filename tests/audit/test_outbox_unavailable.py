"""An access that cannot be recorded does not happen (DESIGN.md, invariant 6; ADR 0010).

PostgreSQL itself refuses the outbox write: the test takes INSERT on audit_outboxevent away from the runtime
role through the owner's connection, and gives it back afterwards. A read and a write of health information
then answer 503 with the error body, serve no health information and leave no change behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from clinic.models import Patient
from tests.conftest import in_context, owner_conninfo

pytestmark = pytest.mark.django_db


@contextmanager
def outbox_refused() -> Iterator[None]:
    """The runtime role may not INSERT into the outbox inside the block. The grant is restored whatever
    happens: the database is shared by every test that follows."""
    runtime = sql.Identifier(settings.DATABASES["default"]["USER"])
    with psycopg.connect(owner_conninfo(), autocommit=True) as owner:
        owner.execute(sql.SQL("REVOKE INSERT ON audit_outboxevent FROM {}").format(runtime))
        try:
            yield
        finally:
            owner.execute(sql.SQL("GRANT INSERT ON audit_outboxevent TO {}").format(runtime))


def assert_audit_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response.json() == {
        "error": {
            "code": "service_unavailable",
            "message": "The audit log cannot record this access; try again shortly.",
            "fields": {},
        }
    }


def patient_client(api, alpha):
    patient = alpha.patients[0]
    client = api(alpha.host)
    client.sign_in_token(patient.email)  # before the outbox is refused: a sign-in is recorded too
    return client, patient


def test_a_read_that_cannot_be_recorded_answers_503_and_serves_nothing(api, alpha):
    client, patient = patient_client(api, alpha)
    assert client.get(f"/api/v1/patients/{patient.pk}").status_code == 200  # served while it can be recorded
    with outbox_refused():
        one = client.get(f"/api/v1/patients/{patient.pk}")
        page = client.get("/api/v1/patients")
    for response in (one, page):
        assert_audit_unavailable(response)
        assert patient.given_name not in response.content.decode()
        assert patient.health_card_number not in response.content.decode()
    assert client.get(f"/api/v1/patients/{patient.pk}").status_code == 200  # and again once it can


def test_a_write_that_cannot_be_recorded_answers_503_and_changes_nothing(api, alpha):
    client, patient = patient_client(api, alpha)
    # Written once first: the organization's data keys are then in memory, so what fails below is the write's
    # own record (unwrapping a key is recorded too, and would fail first).
    assert client.patch(f"/api/v1/patients/{patient.pk}", {"phone": patient.phone}).status_code == 200
    with outbox_refused():
        response = client.patch(f"/api/v1/patients/{patient.pk}", {"phone": "+1-555-0000"})
    assert_audit_unavailable(response)
    with in_context(alpha.org, role="platform"):
        assert Patient.objects.get(pk=patient.pk).phone == patient.phone
