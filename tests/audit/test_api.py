"""Auditors search their own organization's log over HTTP; a patient sees who accessed their record."""

from __future__ import annotations

import pytest

from tenancy.context import tenant_context
from tenancy.services import ensure_member
from tests.audit.test_shipper import committed, new_org, record, ship
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def make_member(org_id, email: str, role: str):
    def make():
        from tenancy.models import Organization

        with tenant_context(org_id=org_id, role="platform"):
            org = Organization.objects.get(pk=org_id)
            return ensure_member(org=org, email=email, role=role, password=PASSWORD)[0]

    return committed(make)


def host_of(org_id) -> str:
    from tenancy.context import platform_context
    from tenancy.models import Domain

    def host():
        with platform_context():
            return Domain.objects.get(org_id=org_id).hostname

    return committed(host)


def test_an_auditor_searches_only_their_organizations_log(clinics, api):
    org_id, other = new_org(), new_org()
    make_member(org_id, "auditor@audit-api.test", "auditor")
    record(org_id, 4)
    record(other, 4)
    ship(org_id)
    ship(other)
    client = api(host_of(org_id))
    client.sign_in_token("auditor@audit-api.test")
    response = client.get("/api/v1/audit/events?action=read")
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert len(results) == 4 and {r["org"] for r in results} == {str(org_id)}
    assert client.get("/api/v1/audit/events?patient=not-a-uuid").status_code == 400
    assert client.get("/api/v1/audit/events?after_seq=-1").status_code == 400


def test_only_auditors_search_the_log(clinics, api, alpha):
    client = api(alpha.host)
    client.sign_in_token(alpha.email("practitioner"))
    assert client.get("/api/v1/audit/events").status_code == 403


def test_a_checkpoint_is_served_with_its_keys(clinics, api):
    from audit import shipper

    org_id = new_org()
    make_member(org_id, "auditor2@audit-api.test", "auditor")
    record(org_id, 2)
    ship(org_id)
    committed(shipper.checkpoint, org_id, None, True)
    client = api(host_of(org_id))
    client.sign_in_token("auditor2@audit-api.test")
    body = client.get("/api/v1/audit/checkpoint").json()
    from audit import tlog

    checkpoint = tlog.verify_checkpoint(body["checkpoint"], tlog.keys_from_vkeys(body["keys"]))
    assert checkpoint.size == body["size"] >= 2


def test_an_unreachable_audit_database_answers_503_not_500(clinics, api, alpha, settings):
    """The audit database down (restarting, failed over): the auditor's search and the patient's access log
    say so, with Retry-After, instead of a 500."""
    settings.AUDIT_READER_DATABASE_URL = "postgresql://nobody@127.0.0.1:1/audit?connect_timeout=2"
    auditor = api(alpha.host)
    auditor.sign_in_token(alpha.email("auditor"))
    response = auditor.get("/api/v1/audit/events")
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response["Retry-After"] == "5"
    patient = api(alpha.host)
    patient.sign_in_token(alpha.patients[0].email)  # a portal user with a record, so the log is searched
    response = patient.get("/api/v1/me/access-log")
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "database_unavailable"
