"""A visit opens the visit, not the chart (ADR 0012), and only near its scheduled time.

The outside test's attack (issue 11, finding 1): the front desk schedules patient P with practitioner X, who is
not on P's care team, for a date months away; X marks his own encounter arrived and reads P's whole chart.
And finding 4: a practitioner of the same clinic who is not the encounter's practitioner gets a 500 on arrive
and cancel instead of a clear refusal.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from clinic import services
from clinic.models import Encounter
from tenancy.context import tenant_context
from tests.clinic.test_access import World, client_for

pytestmark = pytest.mark.django_db


def schedule(world: World, patient, practitioner, when) -> Encounter:
    with tenant_context(org_id=world.org.id, role="platform", purpose="treatment"):
        return services.schedule_encounter(
            patient=patient, practitioner=practitioner, actor=world.staff, scheduled_at=when, reason="visit"
        )


def force_status(encounter: Encounter, status: str) -> None:
    """What a bug in the application, or SQL as the platform role, could leave behind."""
    with tenant_context(org_id=encounter.org_id, role="platform"):
        Encounter.objects.filter(pk=encounter.pk).update(status=status)


# -- finding 1: arrival months ahead --------------------------------------------------------------------


def test_a_practitioner_cannot_arrive_or_start_a_visit_months_away(api, alpha, world):
    future = schedule(world, world.stranger, world.bo, timezone.now() + timedelta(days=120))
    bo = client_for(api, alpha, "bo@alpha.test")
    for action in ("arrive", "start"):
        refused = bo.post(f"/api/v1/encounters/{future.pk}/{action}")
        assert refused.status_code == 409, refused.content
        assert refused.json()["error"]["code"] == "outside_visit_window"
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}/consents").status_code == 404
    # The front desk and the patient are held to the same window.
    staff = client_for(api, alpha, alpha.email("staff"))
    assert staff.post(f"/api/v1/encounters/{future.pk}/arrive").status_code == 409


def test_a_visit_forced_open_months_away_opens_nothing_in_the_database(api, alpha, world):
    future = schedule(world, world.stranger, world.bo, timezone.now() + timedelta(days=120))
    force_status(future, "arrived")
    bo = client_for(api, alpha, "bo@alpha.test")
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404
    with tenant_context(org_id=world.org.id, role="practitioner", user_id=world.bo.user_id):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM clinic_patient WHERE id = %s", [world.stranger.pk])
            assert cursor.fetchone()[0] == 0


def test_the_database_refuses_to_open_a_visit_outside_its_window(world):
    future = schedule(world, world.stranger, world.bo, timezone.now() + timedelta(days=120))
    with tenant_context(org_id=world.org.id, role="staff", user_id=world.staff.user_id, purpose="operations"):
        with pytest.raises(IntegrityError, match="visit window"):
            with transaction.atomic():
                Encounter.objects.filter(pk=future.pk).update(status="arrived")


def test_a_practitioner_cannot_move_his_encounter_to_now_or_to_another_patient(world):
    future = schedule(world, world.stranger, world.bo, timezone.now() + timedelta(days=120))
    with tenant_context(org_id=world.org.id, role="practitioner", user_id=world.bo.user_id):
        with pytest.raises(IntegrityError, match="front desk reschedules"):
            with transaction.atomic():
                Encounter.objects.filter(pk=future.pk).update(scheduled_at=timezone.now())
        with pytest.raises(IntegrityError, match="patient and practitioner"):
            with transaction.atomic():
                Encounter.objects.filter(pk=future.pk).update(patient=world.cared)


# -- what an open visit reaches -------------------------------------------------------------------------


def test_an_open_visit_reaches_the_patient_and_this_visit_but_not_the_rest_of_the_chart(api, alpha, world):
    # Cara is on Ada's care team, with Ada's encounter and signed note; the front desk books her with Bo now.
    visit = schedule(world, world.cared, world.bo, timezone.now())
    bo = client_for(api, alpha, "bo@alpha.test")
    assert bo.get(f"/api/v1/patients/{world.cared.pk}").status_code == 404
    assert bo.post(f"/api/v1/encounters/{visit.pk}/arrive").status_code == 200
    assert bo.post(f"/api/v1/encounters/{visit.pk}/start").status_code == 200

    assert bo.get(f"/api/v1/patients/{world.cared.pk}").status_code == 200
    assert bo.get(f"/api/v1/patients/{world.cared.pk}/consents").status_code == 200
    written = bo.post(f"/api/v1/encounters/{visit.pk}/notes", {"body": "Seen for a rash."})
    assert written.status_code == 201, written.content
    notes = bo.get(f"/api/v1/encounters/{visit.pk}/notes").json()["results"]
    assert [n["id"] for n in notes] == [written.json()["id"]]
    assert bo.get(f"/api/v1/encounters/{visit.pk}/timeline").status_code == 200

    # Ada's encounter, her signed note and the care team stay out of reach.
    assert bo.get(f"/api/v1/encounters/{world.encounter.pk}").status_code == 404
    assert bo.get(f"/api/v1/notes/{world.signed_note.pk}").status_code == 404
    assert bo.get(f"/api/v1/encounters/{world.encounter.pk}/notes").status_code == 404
    listed = {e["id"] for e in bo.get(f"/api/v1/encounters?patient={world.cared.pk}").json()["results"]}
    assert listed == {str(visit.pk)}
    team = bo.get(f"/api/v1/patients/{world.cared.pk}/care-team")
    assert team.status_code == 200 and team.json()["results"] == []  # Ada's place on it is not his to see

    # Ending the visit closes it.
    assert bo.post(f"/api/v1/encounters/{visit.pk}/end").status_code == 200
    assert bo.get(f"/api/v1/patients/{world.cared.pk}").status_code == 404


def test_a_visit_that_dropped_stays_open_to_its_practitioner_until_documented(api, alpha, world):
    visit = schedule(world, world.stranger, world.bo, timezone.now())
    bo = client_for(api, alpha, "bo@alpha.test")
    assert bo.post(f"/api/v1/encounters/{visit.pk}/start").status_code == 200
    with tenant_context(org_id=world.org.id, role="platform"):
        services.flag_documentation_required(encounter=visit, reason="video dropped")
    note = bo.post(f"/api/v1/encounters/{visit.pk}/notes", {"body": "Documented after the drop."})
    assert note.status_code == 201, note.content
    assert bo.post(f"/api/v1/notes/{note.json()['id']}/sign").status_code == 200
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404


# -- finding 4: another practitioner's encounter ---------------------------------------------------------


@pytest.mark.parametrize("action", ["arrive", "cancel", "start", "end", "admit"])
def test_a_colleague_on_the_care_team_is_refused_clearly_on_someone_elses_encounter(
    api, alpha, world, action
):
    # The front desk books Cara (Ada's patient) with Bo; Ada, on Cara's care team, tries Bo's encounter.
    visit = schedule(world, world.cared, world.bo, timezone.now())
    ada = client_for(api, alpha, alpha.email("practitioner"))
    assert ada.get(f"/api/v1/encounters/{visit.pk}").status_code == 200
    refused = ada.post(f"/api/v1/encounters/{visit.pk}/{action}")
    assert refused.status_code == 403, refused.content
    assert refused.json()["error"]["code"] == "not_permitted"
    with tenant_context(org_id=world.org.id, role="platform"):
        assert Encounter.objects.get(pk=visit.pk).status == "planned"
