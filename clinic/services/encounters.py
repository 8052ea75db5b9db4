"""Encounters: scheduling, the visit's state machine (FHIR statuses) and its timeline.

Arrival and the start of a visit happen inside the visit window (ADR 0012), since an open visit gives its
practitioner the patient's record for that visit."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction

from tenancy.context import current
from tenancy.errors import ApiError, TenancyCode
from tenancy.models import Membership, Role

from ..errors import ClinicCode
from ..models import (
    Encounter,
    EncounterEvent,
    Patient,
)
from ..rls import VISIT_CLOSES_AFTER, VISIT_OPENS_BEFORE
from .common import _now, load_for_user, record_phi_access, recorded_write


def get_encounter_for_user(encounter_id: uuid.UUID, *, record: bool = True) -> Encounter:
    """The encounter, if the caller's row policies reach it (else 404), recorded as a read.

    `record=False` only when the caller's own event records this access: a change to the encounter (its
    event carries the state hashes), a read of something under it (its timeline, its notes), or a video step
    (video_join, turn_credentials and the like)."""
    return load_for_user(Encounter.objects.filter(pk=encounter_id), resource="Encounter", record=record)


def encounter_timeline(encounter: Encounter):
    """The encounter's timeline in order; recorded as one read of the timeline."""
    record_phi_access(
        action="read", resource="EncounterTimeline", resource_id=encounter.pk, patient_id=encounter.patient_id
    )
    return EncounterEvent.objects.filter(encounter=encounter).order_by("at")


S = Encounter.Status


TRANSITIONS: dict[str, tuple[set[str], str | None]] = {
    # action: (states it may start from, state it leads to; None = unchanged)
    "arrive": ({S.PLANNED}, S.ARRIVED),
    "admit": ({S.ARRIVED}, None),
    "start": ({S.PLANNED, S.ARRIVED}, S.IN_PROGRESS),
    "end": ({S.IN_PROGRESS}, S.FINISHED),
    "cancel": ({S.PLANNED, S.ARRIVED}, S.CANCELLED),
}


# Who may take each action: the encounter's own practitioner (never a colleague, care team or not), the front
# desk and the patient arrive and cancel; only the encounter's practitioner admits, starts and ends.
ACTORS = {
    "arrive": {Role.PATIENT, Role.STAFF, Role.PRACTITIONER},
    "admit": {Role.PRACTITIONER},
    "start": {Role.PRACTITIONER},
    "end": {Role.PRACTITIONER},
    "cancel": {Role.PATIENT, Role.STAFF, Role.PRACTITIONER},
}


def add_timeline_event(encounter: Encounter, kind: str, actor: Membership | None, **detail) -> EncounterEvent:
    event = EncounterEvent(
        org_id=encounter.org_id,
        encounter=encounter,
        patient_id=encounter.patient_id,
        kind=kind,
        actor=actor,
        at=_now(),
        detail=detail,
    )
    event.save(force_insert=True)
    return event


@transaction.atomic
def schedule_encounter(
    *, patient: Patient, practitioner: Membership, scheduled_at: datetime, reason: str, actor: Membership
) -> Encounter:
    if practitioner.role != Role.PRACTITIONER:
        raise ApiError(
            ClinicCode.NOT_A_PRACTITIONER,
            "Encounters are with a practitioner.",
            fields={"practitioner": ["This member is not a practitioner."]},
        )
    if actor.role == Role.PRACTITIONER and practitioner.pk != actor.pk:
        raise ApiError(TenancyCode.NOT_PERMITTED, "Practitioners schedule their own encounters.")
    encounter = Encounter(
        org_id=patient.org_id,
        patient=patient,
        practitioner=practitioner,
        scheduled_at=scheduled_at,
        reason=reason,
    )
    with recorded_write(encounter, resource="Encounter"):
        encounter.save(force_insert=True)
        add_timeline_event(encounter, "planned", actor)
    return encounter


def check_visit_window(encounter: Encounter, now: datetime) -> None:
    """Arrival and the start of a visit happen near its scheduled time. An arrived or started encounter opens
    the visit to its practitioner (clinic/rls.py), so this is a rule of access, not only of the calendar;
    the database refuses the same change outside the same window."""
    opens, closes = encounter.scheduled_at - VISIT_OPENS_BEFORE, encounter.scheduled_at + VISIT_CLOSES_AFTER
    if not opens <= now < closes:
        raise ApiError(
            ClinicCode.OUTSIDE_VISIT_WINDOW,
            f"This visit can be checked in or started from {opens.isoformat()} until {closes.isoformat()}.",
            fields={"scheduled_at": ["The visit is not open now."]},
        )


@transaction.atomic
def transition_encounter(*, encounter: Encounter, action: str, actor: Membership) -> Encounter:
    """arrive, admit, start, end, cancel: validated against the encounter's state and the actor's role."""
    if action not in TRANSITIONS:
        raise ApiError(ClinicCode.UNKNOWN_ACTION, f"Unknown encounter action {action!r}.")
    sources, target = TRANSITIONS[action]
    if actor.role not in ACTORS[action]:
        raise ApiError(TenancyCode.NOT_PERMITTED, f"Your role cannot {action} an encounter.")
    if actor.role == Role.PRACTITIONER and encounter.practitioner_id != actor.pk:
        raise ApiError(TenancyCode.NOT_PERMITTED, "Only the encounter's practitioner can do this.")
    # The row lock needs the right to update the row; a caller who may see but not change it was refused above.
    locked = Encounter.objects.select_for_update().filter(pk=encounter.pk).first()
    if locked is None:
        raise ApiError(TenancyCode.NOT_PERMITTED, f"You cannot {action} this encounter.")
    encounter = locked
    if encounter.status not in sources:
        raise ApiError(
            ClinicCode.INVALID_TRANSITION,
            f"Cannot {action} an encounter that is {encounter.status}.",
            fields={"status": [f"Allowed from: {', '.join(sorted(sources))}."]},
        )
    now = _now()
    ctx = current()
    importing_history = (
        ctx is not None and ctx.role == "platform"
    )  # operators' imports, as the trigger allows
    if action in ("arrive", "start") and encounter.status == S.PLANNED and not importing_history:
        check_visit_window(encounter, now)
    with recorded_write(encounter, resource="Encounter", detail={"transition": action}):
        if target is not None:
            encounter.status = target
        if action == "admit":
            encounter.admitted_at = now
        elif action == "start":
            encounter.started_at = now
        elif action in ("end", "cancel"):
            encounter.ended_at = now
        encounter.save()
        add_timeline_event(encounter, action, actor)
    return encounter


@transaction.atomic
def flag_documentation_required(*, encounter: Encounter, reason: str) -> Encounter:
    """An encounter that ended without the practitioner closing it (a dropped video that never resumed):
    finished, flagged, and kept on the documentation-required list until a note is signed for it."""
    encounter = Encounter.objects.select_for_update().get(pk=encounter.pk)
    with recorded_write(encounter, resource="Encounter"):
        if encounter.status in (S.IN_PROGRESS, S.ARRIVED):
            encounter.status = S.FINISHED
            encounter.ended_at = _now()
        encounter.documentation_required = True
        encounter.save()
        add_timeline_event(encounter, "documentation_required", None, reason=reason)
    return encounter
