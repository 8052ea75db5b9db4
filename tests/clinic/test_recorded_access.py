"""Each access to health information is recorded once, where the data is loaded (clinic/services/common.py):
the same loader records a read for an API view and for code outside any request, a page records the rows it
serves and no others, and a write is recorded by its own event, not also as a read."""

from __future__ import annotations

import pytest

from clinic import services
from tenancy import events as bus
from tenancy.context import tenant_context
from tests.clinic.test_access import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def published():
    """Every access to health information published, in order, as (action, resource, resource id)."""
    seen: list[tuple[str, str, str]] = []

    def on_access(event: bus.PhiAccess) -> None:
        seen.append((event.action, event.resource, event.resource_id))

    def on_page(event: bus.PhiPageRead) -> None:
        seen.extend(("read", event.resource, resource_id) for resource_id, _ in event.rows)

    bus.subscribe(bus.PhiAccess, on_access)
    bus.subscribe(bus.PhiPageRead, on_page)
    yield seen
    bus.unsubscribe(bus.PhiAccess, on_access)
    bus.unsubscribe(bus.PhiPageRead, on_page)


def test_an_api_read_is_recorded_once_by_its_loader(api, alpha, world, published):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    published.clear()
    assert ada.get(f"/api/v1/patients/{world.cared.pk}").status_code == 200
    assert ada.get(f"/api/v1/encounters/{world.encounter.pk}/timeline").status_code == 200
    assert ada.get(f"/api/v1/notes/{world.signed_note.pk}").status_code == 200
    assert published == [
        ("read", "Patient", str(world.cared.pk)),
        ("read", "EncounterTimeline", str(world.encounter.pk)),
        ("read", "ClinicalNote", str(world.signed_note.pk)),
    ]


def test_a_page_records_the_rows_it_serves(api, alpha, world, published):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    published.clear()
    response = ada.get(f"/api/v1/encounters/{world.encounter.pk}/notes")
    assert response.status_code == 200
    served = [row["id"] for row in response.json()["results"]]
    assert served and published == [("read", "ClinicalNote", note_id) for note_id in served]


def test_a_write_is_recorded_by_its_own_event_only(api, alpha, world, published):
    ada = client_for(api, alpha, alpha.email("practitioner"))
    published.clear()
    response = ada.patch(f"/api/v1/notes/{world.draft_note.pk}", {"body": "Revised thoughts."})
    assert response.status_code == 200, response.content
    assert published == [("update", "ClinicalNote", str(world.draft_note.pk))]


def test_the_same_loader_records_a_read_outside_any_request(alpha, world, published):
    """A command, a task or a consumer loads through the same function, and is recorded the same way."""
    with tenant_context(
        org_id=alpha.org.id, role="practitioner", user_id=world.ada.user_id, purpose="treatment"
    ):
        published.clear()
        services.get_encounter_for_user(world.encounter.pk)
        assert published == [("read", "Encounter", str(world.encounter.pk))]
        services.get_encounter_for_user(world.encounter.pk, record=False)  # the caller records its own
        assert len(published) == 1
