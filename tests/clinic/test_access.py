"""Who sees what: per role and purpose, through the API and with raw SQL as the runtime role.

The world: in alpha, patient `cared` is on practitioner Ada's care team; `stranger` is on no one's; `portal` is
the record of alpha's patient user; some patients consented to analytics, one withdrew. Ada has an encounter
with `cared` and notes on it. Bo is a second practitioner with no relationship to anyone until a test gives
him one.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from clinic import services
from clinic.models import BreakGlass, CareTeamMember, ClinicalNote, Consent, Encounter, Patient
from tenancy.context import tenant_context
from tenancy.models import Membership
from tenancy.services import ensure_member
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def patient_values(given: str, family: str) -> dict:
    return {
        "given_name": given,
        "family_name": family,
        "birth_date": datetime.date(1980, 5, 17),
        "email": f"{given.lower()}.{family.lower()}@example.test",
        "phone": "+1-555-0101",
        "address": {"city": "Eastvale"},
        "health_card_number": f"HC{abs(hash((given, family))) % 10**10:010d}",
    }


@dataclass
class World:
    org: object
    ada: Membership  # practitioner on `cared`'s care team
    bo: Membership  # practitioner with no relationship to anyone
    staff: Membership
    cared: Patient
    stranger: Patient
    portal: Patient  # alpha's patient user's own record
    consenting: list
    withdrawn: Patient
    encounter: Encounter
    signed_note: ClinicalNote
    draft_note: ClinicalNote


@pytest.fixture
def world(alpha) -> World:
    org = alpha.org
    with tenant_context(org_id=org.id, role="platform", purpose="treatment"):
        ada = alpha.membership("practitioner")
        _, bo, _ = ensure_member(
            org=org, email="bo@alpha.test", role="practitioner", password=PASSWORD, full_name="Dr Bo"
        )
        staff = alpha.membership("staff")
        admin = alpha.membership("org_admin")
        cared = services.register_patient(actor=staff, data=patient_values("Cara", "Dee"))
        stranger = services.register_patient(actor=staff, data=patient_values("Stan", "Ger"))
        portal = services.register_patient(actor=staff, data=patient_values("Pat", "Ient"))
        Patient.objects.filter(pk=portal.pk).update(user=alpha.user("patient"))
        services.assign_care_team(patient=cared, practitioner=ada, actor=admin)
        consenting = [
            services.register_patient(actor=staff, data=patient_values(f"Con{i}", "Sent")) for i in range(5)
        ]
        for patient in consenting:
            services.grant_consent(patient=patient, purpose="analytics", actor=staff)
        withdrawn = services.register_patient(actor=staff, data=patient_values("Will", "Drawn"))
        consent = services.grant_consent(patient=withdrawn, purpose="analytics", actor=staff)
        services.withdraw_consent(consent=consent, actor=staff, note="no longer")
        services.assign_care_team(patient=withdrawn, practitioner=ada, actor=admin)
        encounter = services.schedule_encounter(
            patient=cared, practitioner=ada, actor=staff, scheduled_at=timezone.now(), reason="follow-up"
        )
        encounter = services.transition_encounter(encounter=encounter, action="start", actor=ada)
        signed = services.create_note(encounter=encounter, body="Signed findings.", author=ada)
        services.sign_note(note=signed, actor=ada)
        draft = services.create_note(encounter=encounter, body="Draft thoughts.", author=ada)
        portal_encounter = services.schedule_encounter(
            patient=portal, practitioner=ada, actor=staff, scheduled_at=timezone.now(), reason="check"
        )
        portal_encounter = services.transition_encounter(
            encounter=portal_encounter, action="start", actor=ada
        )
        portal_signed = services.create_note(encounter=portal_encounter, body="Your results.", author=ada)
        services.sign_note(note=portal_signed, actor=ada)
        services.create_note(encounter=portal_encounter, body="Not yet for you.", author=ada)
        services.transition_encounter(encounter=portal_encounter, action="end", actor=ada)
    return World(
        org, ada, bo, staff, cared, stranger, portal, consenting, withdrawn, encounter, signed, draft
    )


def client_for(api, alpha, email: str, purpose: str | None = None):
    client = api(alpha.host)
    client.sign_in_token(email)
    if purpose:
        client.headers["X-Purpose-Of-Use"] = purpose
    return client


def sql_count(world: World, table: str, *, role: str, user, purpose: str, where: str = "") -> int:
    """What the runtime role sees with raw SQL under a context: the database's answer, not the view's."""
    with tenant_context(org_id=world.org.id, role=role, user_id=user, purpose=purpose):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table} {where}")
            return cursor.fetchone()[0]


def patient_ids(response) -> set:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


# -- practitioners ------------------------------------------------------------------------------------


def test_a_practitioner_sees_only_patients_in_their_care(api, alpha, world):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    seen = patient_ids(ada.get("/api/v1/patients"))
    assert str(world.cared.pk) in seen and str(world.withdrawn.pk) in seen
    assert str(world.stranger.pk) not in seen
    assert ada.get(f"/api/v1/patients/{world.cared.pk}").json()["family_name"] == "Dee"
    assert ada.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404
    assert (
        sql_count(
            world,
            "clinic_patient",
            role="practitioner",
            user=world.ada.user_id,
            purpose="treatment",
            where=f"WHERE id = '{world.stranger.pk}'",
        )
        == 0
    )


def test_ending_the_care_team_assignment_revokes_access_on_the_next_request(api, alpha, world):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    assert ada.get(f"/api/v1/patients/{world.withdrawn.pk}").status_code == 200
    staff = client_for(api, alpha, alpha.email("staff"))
    team = staff.get(f"/api/v1/patients/{world.withdrawn.pk}/care-team").json()["results"]
    assert (
        staff.post(f"/api/v1/patients/{world.withdrawn.pk}/care-team/{team[0]['id']}/end").status_code == 200
    )
    assert ada.get(f"/api/v1/patients/{world.withdrawn.pk}").status_code == 404


def test_an_active_encounter_grants_access_and_closing_it_revokes_it(api, alpha, world):
    with tenant_context(org_id=world.org.id, role="platform"):
        encounter = services.schedule_encounter(
            patient=world.stranger,
            practitioner=world.bo,
            actor=world.staff,
            scheduled_at=timezone.now(),
            reason="walk-in",
        )
    bo = client_for(api, alpha, "bo@alpha.test")
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404  # planned is not active
    assert bo.post(f"/api/v1/encounters/{encounter.pk}/start").status_code == 200
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 200
    assert bo.post(f"/api/v1/encounters/{encounter.pk}/end").status_code == 200
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404


def test_a_practitioner_reads_notes_only_of_patients_in_their_care(api, alpha, world):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    notes = ada.get(f"/api/v1/encounters/{world.encounter.pk}/notes").json()["results"]
    assert {n["id"] for n in notes} == {str(world.signed_note.pk), str(world.draft_note.pk)}
    bo = client_for(api, alpha, "bo@alpha.test")
    assert bo.get(f"/api/v1/notes/{world.signed_note.pk}").status_code == 404
    assert (
        sql_count(
            world, "clinic_clinicalnote", role="practitioner", user=world.bo.user_id, purpose="treatment"
        )
        == 0
    )


def test_operations_purpose_gives_a_practitioner_no_clinical_reads(api, alpha, world):
    ada = client_for(api, alpha, alpha.email("practitioner"), purpose="operations")
    assert ada.get(f"/api/v1/patients/{world.cared.pk}").status_code == 404
    assert ada.get(f"/api/v1/notes/{world.signed_note.pk}").status_code == 404


# -- staff, patients, administrators, auditors --------------------------------------------------------


def test_front_desk_sees_demographics_and_schedules_never_notes(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"))
    assert str(world.stranger.pk) in patient_ids(staff.get("/api/v1/patients"))
    assert staff.get(f"/api/v1/encounters/{world.encounter.pk}").status_code == 200
    assert staff.get(f"/api/v1/notes/{world.signed_note.pk}").status_code == 404
    listed = staff.get(f"/api/v1/encounters/{world.encounter.pk}/notes")
    assert listed.status_code == 200 and listed.json()["results"] == []
    assert (
        sql_count(world, "clinic_clinicalnote", role="staff", user=world.staff.user_id, purpose="operations")
        == 0
    )


def test_a_patient_sees_their_own_record_encounters_signed_notes_and_consents(api, alpha, world):
    me = client_for(api, alpha, alpha.email("patient"))
    assert patient_ids(me.get("/api/v1/patients")) == {str(world.portal.pk)}
    assert me.get(f"/api/v1/patients/{world.cared.pk}").status_code == 404
    encounters = me.get("/api/v1/encounters").json()["results"]
    assert encounters and {e["patient"] for e in encounters} == {str(world.portal.pk)}
    notes = me.get(f"/api/v1/encounters/{encounters[0]['id']}/notes").json()["results"]
    assert [n["status"] for n in notes] == ["signed"]  # the draft stays the practitioner's
    assert me.get(f"/api/v1/patients/{world.portal.pk}/consents").status_code == 200
    patient_user = alpha.user("patient").pk
    assert sql_count(world, "clinic_patient", role="patient", user=patient_user, purpose="treatment") == 1
    assert (
        sql_count(
            world,
            "clinic_clinicalnote",
            role="patient",
            user=patient_user,
            purpose="treatment",
            where="WHERE status = 'draft'",
        )
        == 0
    )


def test_a_patient_changes_only_their_contact_details(api, alpha, world):
    me = client_for(api, alpha, alpha.email("patient"))
    ok = me.patch(f"/api/v1/patients/{world.portal.pk}", {"phone": "+1-555-7777"})
    assert ok.status_code == 200 and ok.json()["phone"] == "+1-555-7777"
    refused = me.patch(f"/api/v1/patients/{world.portal.pk}", {"birth_date": "1999-01-01"})
    assert refused.status_code == 403 and "birth_date" in refused.json()["error"]["fields"]


@pytest.mark.parametrize("role", ["org_admin", "auditor"])
def test_administrators_and_auditors_see_no_clinical_data(api, alpha, world, role):
    client = client_for(api, alpha, alpha.email(role))
    assert client.get("/api/v1/patients").status_code == 403
    assert client.get(f"/api/v1/patients/{world.cared.pk}").status_code == 403
    purpose = "operations" if role == "org_admin" else "audit"
    user = alpha.user(role).pk
    for table in ("clinic_patient", "clinic_clinicalnote", "clinic_encounter", "clinic_consent"):
        assert sql_count(world, table, role=role, user=user, purpose=purpose) == 0, table


# -- consent and analytics ----------------------------------------------------------------------------


def analytics_count(world, alpha) -> int:
    return sql_count(
        world, "clinic_patient", role="org_admin", user=alpha.user("org_admin").pk, purpose="analytics"
    )


def test_analytics_sees_only_patients_with_active_analytics_consent(alpha, world):
    assert analytics_count(world, alpha) == len(world.consenting)
    # Even the platform context cannot widen it: the consent policy is restrictive.
    with tenant_context(org_id=world.org.id, role="platform", purpose="analytics"):
        assert Patient.objects.filter(pk=world.withdrawn.pk).count() == 0


def test_withdrawal_takes_effect_on_the_next_query_and_regrant_restores(api, alpha, world):
    patient = world.consenting[0]
    staff = client_for(api, alpha, alpha.email("staff"))
    consent = next(
        c
        for c in staff.get(f"/api/v1/patients/{patient.pk}/consents").json()["results"]
        if c["purpose"] == "analytics"
    )
    withdrawn = staff.post(
        f"/api/v1/patients/{patient.pk}/consents/{consent['id']}/withdraw", {"note": "asked"}
    )
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert analytics_count(world, alpha) == len(world.consenting) - 1
    # Still there for direct care by the practitioners treating them.
    with tenant_context(org_id=world.org.id, role="platform"):
        services.assign_care_team(patient=patient, practitioner=world.ada, actor=world.staff)
    ada = client_for(api, alpha, alpha.email("practitioner"))
    assert ada.get(f"/api/v1/patients/{patient.pk}").status_code == 200
    regranted = staff.post(f"/api/v1/patients/{patient.pk}/consents", {"purpose": "analytics"})
    assert regranted.status_code == 201 and regranted.json()["status"] == "active"
    assert analytics_count(world, alpha) == len(world.consenting)
    history = staff.get(f"/api/v1/patients/{patient.pk}/consents/{consent['id']}/history").json()
    assert [h["action"] for h in history] == ["grant", "withdraw", "regrant"]


def test_withdrawing_twice_is_a_clear_conflict(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"))
    consent = staff.get(f"/api/v1/patients/{world.withdrawn.pk}/consents").json()["results"][0]
    response = staff.post(f"/api/v1/patients/{world.withdrawn.pk}/consents/{consent['id']}/withdraw")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_active"


def test_reports_are_aggregates_with_small_counts_suppressed(api, alpha, world):
    admin = client_for(api, alpha, alpha.email("org_admin"), purpose="analytics")
    report = admin.get("/api/v1/reports/summary")
    assert report.status_code == 200, report.content
    body = report.json()
    assert body["patients"] == len(world.consenting) == 5
    assert body["patients_by_age_band"] == {"0-17": None, "18-39": None, "40-64": 5, "65+": None}
    assert body["encounters_by_status"]["in-progress"] is None  # fewer than 5: suppressed
    assert "given_name" not in report.content.decode()
    # Withdrawal drops the total below the threshold: suppressed rather than shown.
    with tenant_context(org_id=world.org.id, role="platform"):
        consent = Consent.objects.get(patient=world.consenting[0], purpose="analytics")
        services.withdraw_consent(consent=consent, actor=world.staff)
    assert admin.get("/api/v1/reports/summary").json()["patients"] is None


def test_analytics_cannot_read_records_only_aggregates(api, alpha, world):
    admin = client_for(api, alpha, alpha.email("org_admin"), purpose="analytics")
    assert admin.get("/api/v1/patients").status_code == 403
    assert client_for(api, alpha, alpha.email("org_admin")).get("/api/v1/reports/summary").status_code == 403


# -- break-glass --------------------------------------------------------------------------------------


def test_break_glass_opens_a_time_boxed_audited_access_listed_for_the_privacy_officer(api, alpha, world):
    bo = client_for(api, alpha, "bo@alpha.test", purpose="emergency")
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404
    opened = bo.post(
        "/api/v1/break-glass", {"patient": str(world.stranger.pk), "reason": "Unconscious in ER, no history"}
    )
    assert opened.status_code == 201, opened.content
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 200
    officer = client_for(api, alpha, alpha.email("org_admin"))
    listed = officer.get("/api/v1/break-glass").json()["results"]
    assert [g["id"] for g in listed] == [opened.json()["id"]] and listed[0]["reason"].startswith(
        "Unconscious"
    )
    # Time-boxed: once expired, access is gone without anyone closing it.
    with tenant_context(org_id=world.org.id, role="platform"):
        BreakGlass.objects.filter(pk=opened.json()["id"]).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404


def test_break_glass_needs_the_emergency_purpose_and_a_reason(api, alpha, world):
    bo = client_for(api, alpha, "bo@alpha.test")  # treatment
    refused = bo.post(
        "/api/v1/break-glass", {"patient": str(world.stranger.pk), "reason": "Unconscious in ER"}
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "purpose_not_permitted"
    bo.headers["X-Purpose-Of-Use"] = "emergency"
    short = bo.post("/api/v1/break-glass", {"patient": str(world.stranger.pk), "reason": "x"})
    assert short.status_code == 400


def test_break_glass_is_refused_for_analytics(alpha, world):
    with tenant_context(org_id=world.org.id, role="platform"):
        grant = BreakGlass(
            org_id=world.org.id,
            practitioner=world.bo,
            patient=world.stranger,
            reason="test",
            expires_at=timezone.now() + timedelta(minutes=30),
        )
        grant.save(force_insert=True)
    assert (
        sql_count(
            world,
            "clinic_patient",
            role="practitioner",
            user=world.bo.user_id,
            purpose="emergency",
            where=f"WHERE id = '{world.stranger.pk}'",
        )
        == 1
    )
    assert "analytics" not in services_allowed_purposes("practitioner")
    # Even if a practitioner context claimed analytics, the grant does not apply to it.
    assert (
        sql_count(
            world,
            "clinic_patient",
            role="practitioner",
            user=world.bo.user_id,
            purpose="analytics",
            where=f"WHERE id = '{world.stranger.pk}'",
        )
        == 0
    )


def services_allowed_purposes(role: str):
    from tenancy.services import ALLOWED_PURPOSES

    return ALLOWED_PURPOSES[role]


def test_closing_break_glass_ends_access(api, alpha, world):
    bo = client_for(api, alpha, "bo@alpha.test", purpose="emergency")
    grant = bo.post(
        "/api/v1/break-glass", {"patient": str(world.stranger.pk), "reason": "Chest pain, unknown meds"}
    )
    assert bo.post(f"/api/v1/break-glass/{grant.json()['id']}/close").status_code == 200
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404


# -- notes and encounters -----------------------------------------------------------------------------


def test_a_signed_note_is_amended_never_edited(api, alpha, world):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    edited = ada.patch(f"/api/v1/notes/{world.signed_note.pk}", {"body": "rewritten"})
    assert edited.status_code == 409 and edited.json()["error"]["code"] == "note_signed"
    amended = ada.post(f"/api/v1/notes/{world.signed_note.pk}/amend", {"body": "Addendum: BP rechecked."})
    assert amended.status_code == 201 and amended.json()["version"] == 2
    assert amended.json()["amends"] == str(world.signed_note.pk)
    assert ada.get(f"/api/v1/notes/{world.signed_note.pk}").json()["body"] == "Signed findings."


def test_the_database_refuses_to_change_a_signed_note(alpha, world):
    with tenant_context(
        org_id=world.org.id, role="practitioner", user_id=world.ada.user_id, purpose="treatment"
    ):
        assert ClinicalNote.objects.filter(pk=world.signed_note.pk).update(status="draft") == 0
    with tenant_context(org_id=world.org.id, role="platform"):
        with pytest.raises(Exception, match="signed note is final"):
            with transaction.atomic():
                ClinicalNote.objects.filter(pk=world.signed_note.pk).update(status="draft")


def test_no_note_on_a_cancelled_encounter_and_no_finishing_twice(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"))
    created = staff.post(
        "/api/v1/encounters",
        {
            "patient": str(world.cared.pk),
            "practitioner": str(world.ada.pk),
            "scheduled_at": (timezone.now() + timedelta(days=1)).isoformat(),
            "reason": "review",
        },
    )
    assert created.status_code == 201, created.content
    encounter_id = created.json()["id"]
    assert staff.post(f"/api/v1/encounters/{encounter_id}/cancel").status_code == 200
    ada = client_for(api, alpha, alpha.email("practitioner"))
    note = ada.post(f"/api/v1/encounters/{encounter_id}/notes", {"body": "Too late"})
    assert note.status_code == 409 and note.json()["error"]["code"] == "invalid_state"
    assert ada.post(f"/api/v1/encounters/{world.encounter.pk}/end").status_code == 200
    again = ada.post(f"/api/v1/encounters/{world.encounter.pk}/end")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"


def test_only_the_encounters_practitioner_ends_it(api, alpha, world):
    with tenant_context(org_id=world.org.id, role="platform"):
        services.assign_care_team(patient=world.cared, practitioner=world.bo, actor=world.staff)
    bo = client_for(api, alpha, "bo@alpha.test")
    response = bo.post(f"/api/v1/encounters/{world.encounter.pk}/end")
    assert response.status_code == 403
    staff = client_for(api, alpha, alpha.email("staff"))
    assert staff.post(f"/api/v1/encounters/{world.encounter.pk}/end").status_code == 403


def test_documentation_required_stays_listed_until_a_note_is_signed(api, alpha, world):
    with tenant_context(org_id=world.org.id, role="platform"):
        services.flag_documentation_required(
            encounter=world.encounter, reason="video dropped, grace period over"
        )
    ada = client_for(api, alpha, alpha.email("practitioner"))
    pending = ada.get("/api/v1/encounters?documentation_required=true").json()["results"]
    assert [e["id"] for e in pending] == [str(world.encounter.pk)]
    assert pending[0]["status"] == "finished"
    note = ada.post(f"/api/v1/encounters/{world.encounter.pk}/notes", {"body": "Documented after the drop."})
    assert ada.post(f"/api/v1/notes/{note.json()['id']}/sign").status_code == 200
    assert ada.get("/api/v1/encounters?documentation_required=true").json()["results"] == []
    timeline = [e["kind"] for e in ada.get(f"/api/v1/encounters/{world.encounter.pk}/timeline").json()]
    assert "documentation_required" in timeline and timeline[-1] == "documented"


def test_searching_patients_by_blind_index_stays_in_scope(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"))
    found = staff.get("/api/v1/patients?email=CARA.DEE@example.test").json()["results"]
    assert [p["id"] for p in found] == [str(world.cared.pk)]
    ada = client_for(api, alpha, alpha.email("practitioner"))
    assert ada.get("/api/v1/patients?email=stan.ger@example.test").json()["results"] == []
    assert (
        ada.get(f"/api/v1/patients?health_card_number={world.stranger.health_card_number}").json()["results"]
        == []
    )


def test_every_phi_read_and_write_goes_through_the_audit_hook(api, alpha, world):
    from tenancy import events as event_bus

    events: list[event_bus.PhiAccess] = []
    event_bus.subscribe(event_bus.PhiAccess, events.append)
    try:
        ada = client_for(api, alpha, alpha.email("practitioner"))
        ada.get(f"/api/v1/patients/{world.cared.pk}")
        ada.post(f"/api/v1/encounters/{world.encounter.pk}/notes", {"body": "More."})
    finally:
        event_bus.unsubscribe(event_bus.PhiAccess, events.append)
    read, write = events[0], events[-1]
    assert (read.action, read.resource, read.patient_id) == ("read", "Patient", str(world.cared.pk))
    assert read.purpose == "treatment" and read.actor.user == str(world.ada.user_id)
    assert (write.action, write.resource) == ("create", "ClinicalNote") and len(write.after) == 64


def test_care_team_rows_tie_a_practitioner_to_a_patient_in_one_organization(alpha, beta, world):
    with tenant_context(org_id=world.org.id, role="platform"):
        with pytest.raises(Exception):
            with transaction.atomic():
                CareTeamMember(
                    org_id=world.org.id,
                    patient=world.cared,
                    practitioner_id=beta.membership("practitioner").pk,
                ).save(force_insert=True)
