"""A patient is found by their current identifiers, and a clinic has one patient per health card.

Issue 11, finding 2: after a PATCH of the health card number or the email, a search by the new value found
nothing and the old value still found the patient (the blind index kept the old token). Finding 3: a
practitioner registering a patient with the health card of a patient outside his care got a duplicate (the
check ran under his row policies); the database now enforces one patient per health card per clinic.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.db import IntegrityError, transaction

from clinic import services
from clinic.models import Patient
from tenancy.context import tenant_context
from tests.clinic.test_access import World, client_for, patient_values

pytestmark = pytest.mark.django_db


def body(given: str, family: str, **changes) -> dict:
    values = {**patient_values(given, family), **changes}
    values["birth_date"] = values["birth_date"].isoformat()
    return values


def found(client, **query) -> list[str]:
    response = client.get(f"/api/v1/patients?{urlencode(query)}")
    assert response.status_code == 200, response.content
    return [p["id"] for p in response.json()["results"]]


def all_patients_with_card(world: World, card: str) -> int:
    with tenant_context(org_id=world.org.id, role="platform"):
        return Patient.objects.filter(health_card_number=card).count()


# -- finding 2 ------------------------------------------------------------------------------------------


def test_a_changed_health_card_number_is_found_by_its_new_value_only(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"), purpose="operations")
    old = world.stranger.health_card_number
    changed = staff.patch(f"/api/v1/patients/{world.stranger.pk}", {"health_card_number": "NEW-4455-66"})
    assert changed.status_code == 200, changed.content
    assert found(staff, health_card_number="NEW445566") == [str(world.stranger.pk)]
    assert found(staff, health_card_number=old) == []
    # The old number is free again and the new one is taken.
    again = staff.post("/api/v1/patients", body("Ole", "Number", health_card_number=old))
    assert again.status_code == 201, again.content
    taken = staff.post("/api/v1/patients", body("New", "Number", health_card_number="new 4455 66"))
    assert taken.status_code == 409, taken.content
    assert taken.json()["error"]["code"] == "duplicate_patient"


def test_a_patient_changing_her_own_email_is_found_by_the_new_one(api, alpha, world):
    me = client_for(api, alpha, alpha.email("patient"))
    changed = me.patch(f"/api/v1/patients/{world.portal.pk}", {"email": "pat.new@example.test"})
    assert changed.status_code == 200, changed.content
    staff = client_for(api, alpha, alpha.email("staff"), purpose="operations")
    assert found(staff, email="PAT.NEW@example.test") == [str(world.portal.pk)]
    assert found(staff, email="pat.ient@example.test") == []


def test_clearing_an_identifier_removes_it_from_search(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"), purpose="operations")
    old = world.stranger.health_card_number
    assert (
        staff.patch(f"/api/v1/patients/{world.stranger.pk}", {"health_card_number": None}).status_code == 200
    )
    assert found(staff, health_card_number=old) == []


# -- finding 3 ------------------------------------------------------------------------------------------


def test_a_practitioner_cannot_register_a_duplicate_of_a_patient_outside_his_care(api, alpha, world):
    bo = client_for(api, alpha, "bo@alpha.test")
    card = world.stranger.health_card_number
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404
    duplicate = bo.post("/api/v1/patients", body("Stan", "Again", health_card_number=card))
    assert duplicate.status_code == 409, duplicate.content
    assert duplicate.json()["error"]["code"] == "duplicate_patient"
    assert str(world.stranger.pk) not in duplicate.content.decode()  # told it exists, not who it is
    assert all_patients_with_card(world, card) == 1


def test_a_practitioner_cannot_change_a_card_to_one_already_registered(api, alpha, world):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    taken = world.stranger.health_card_number
    refused = ada.patch(f"/api/v1/patients/{world.cared.pk}", {"health_card_number": taken})
    assert refused.status_code == 409, refused.content
    assert all_patients_with_card(world, taken) == 1


def test_the_database_holds_one_patient_per_health_card_in_a_clinic(world):
    with tenant_context(org_id=world.org.id, role="platform"):
        copy = Patient(
            org_id=world.org.id, **{**patient_values("Raw", "Copy"), "health_card_number": "hc-" + "0" * 6}
        )
        copy.save(force_insert=True)
        twin = Patient(
            org_id=world.org.id, **{**patient_values("Raw", "Twin"), "health_card_number": "HC 000000"}
        )
        with pytest.raises(IntegrityError, match="clinic_patient_one_per_health_card"):
            with transaction.atomic():
                twin.save(force_insert=True)


def test_patients_without_a_health_card_do_not_collide(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"), purpose="operations")
    for given in ("Noa", "Nia"):
        created = staff.post("/api/v1/patients", body(given, "Card", health_card_number=""))
        assert created.status_code == 201, created.content


def test_the_same_health_card_may_be_registered_in_another_clinic(api, alpha, beta, world):
    with tenant_context(org_id=beta.org.id, role="platform", purpose="treatment"):
        other = services.register_patient(
            actor=beta.membership("staff"),
            data={
                **patient_values("Stan", "Elsewhere"),
                "health_card_number": world.stranger.health_card_number,
            },
        )
    assert other.pk != world.stranger.pk
