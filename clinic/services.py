"""The clinic's rules: patients, care teams, consent, encounters, notes, break-glass and reports.

Views and consumers call these functions; every state change is validated here and refused with an ApiError
(a clear 4xx). Which rows a caller can reach at all is PostgreSQL's decision (clinic/rls.py): a loader that
finds nothing answers 404, whether the row does not exist or belongs to someone else's care.

Every read and write of health information goes through `record_phi_access`, the one place the audit log
hooks into (issue: audit). Writes carry hashes of the state before and after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
import uuid
from datetime import date, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from tenancy import events
from tenancy.context import current
from tenancy.errors import ApiError
from tenancy.models import Membership, PurposeOfUse, Role

from .models import (
    BreakGlass,
    CareTeamMember,
    ClinicalNote,
    Consent,
    ConsentEvent,
    Encounter,
    EncounterEvent,
    Patient,
)
from .rls import VISIT_CLOSES_AFTER, VISIT_OPENS_BEFORE

logger = logging.getLogger("clinic.phi")

SMALL_COUNT = 5  # reports suppress any count below this (re-identification risk)
ROUND_TO = 5  # and round the rest, so a total cannot be differenced against its suppressed parts
AGE_BANDS = ("0-17", "18-39", "40-64", "65+")
BREAK_GLASS_DEFAULT_MINUTES = 60
BREAK_GLASS_MAX_MINUTES = 240

# -- the audit hook -------------------------------------------------------------------------------------


def on_phi_access(listener) -> None:
    """Subscribe to health-information access events (the audit app does; clinic never imports audit)."""
    events.subscribe("phi", listener)


def state_hash(obj: Any) -> str:
    """SHA-256 of a record's state, for before/after hashes of writes (the values themselves stay out)."""
    if obj is None:
        return ""
    if hasattr(obj, "_meta"):
        data = {}
        for field in obj._meta.concrete_fields:
            value = (
                getattr(obj, field.attname)
                if not getattr(field, "encrypted", False)
                else getattr(obj, field.name)
            )
            data[field.attname] = value
        obj = data
    encoded = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


def _phi_event(
    *,
    action: str,
    resource: str,
    resource_id: Any = None,
    patient_id: Any = None,
    before: str = "",
    after: str = "",
    outcome: str = "success",
    detail: dict | None = None,
) -> dict:
    ctx = current()
    return {
        "action": action,
        "resource": resource,
        "resource_id": str(resource_id) if resource_id else "",
        "patient_id": str(patient_id) if patient_id else "",
        "org_id": str(ctx.org_id) if ctx and ctx.org_id else "",
        "user_id": str(ctx.user_id) if ctx and ctx.user_id else "",
        "role": ctx.role if ctx else "",
        "purpose": ctx.purpose if ctx else "",
        "request_id": ctx.request_id if ctx else "",
        "before": before,
        "after": after,
        "outcome": outcome,
        "detail": detail or {},
    }


def record_phi_access(**kwargs) -> None:
    """Every read and write of health information passes here (or through record_phi_reads for a page):
    who (from the context), what, which patient, and for writes hashes of the state before and after."""
    event = _phi_event(**kwargs)
    events.publish("phi", event)
    logger.debug(
        "phi_access action=%s resource=%s id=%s patient=%s user=%s role=%s purpose=%s request_id=%s",
        event["action"],
        event["resource"],
        event["resource_id"],
        event["patient_id"],
        event["user_id"],
        event["role"],
        event["purpose"],
        event["request_id"],
    )


def record_phi_reads(*, resource: str, rows: list[tuple[Any, Any]], via: str = "list") -> None:
    """A page of reads, recorded as one event per (resource id, patient id) in a single outbox write."""
    batch = [
        _phi_event(action="read", resource=resource, resource_id=rid, patient_id=pid, detail={"via": via})
        for rid, pid in rows
    ]
    if batch:
        events.publish("phi_many", {"events": batch})


def visible_length(text: str) -> int:
    """Characters a reader sees: not spaces, separators, controls or invisible format characters (zero-width
    spaces and joiners, direction marks), which would otherwise fill a required explanation with nothing."""
    return sum(1 for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch)[0] not in "ZC")


def _not_found() -> ApiError:
    return ApiError("not_found", "Not found.", 404)


def _now() -> datetime:
    return timezone.now()


# -- loaders: the row if the caller may see it, else 404 ----------------------------------------------


def get_patient_for_user(patient_id: uuid.UUID) -> Patient:
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise _not_found()
    return patient


def own_patient_ids() -> list[uuid.UUID]:
    """The signed-in patient's own records (row policies show a patient nothing else)."""
    return list(Patient.objects.values_list("id", flat=True))


def get_encounter_for_user(encounter_id: uuid.UUID) -> Encounter:
    encounter = Encounter.objects.filter(pk=encounter_id).first()
    if encounter is None:
        raise _not_found()
    return encounter


def get_note_for_user(note_id: uuid.UUID) -> ClinicalNote:
    note = ClinicalNote.objects.filter(pk=note_id).first()
    if note is None:
        raise _not_found()
    return note


def get_consent_for_user(patient: Patient, consent_id: uuid.UUID) -> Consent:
    consent = Consent.objects.filter(pk=consent_id, patient=patient).first()
    if consent is None:
        raise _not_found()
    return consent


def get_member_for_user(membership_id: uuid.UUID, role: str | None = None) -> Membership:
    query = Membership.objects.filter(pk=membership_id, is_active=True).defer("email", "display_name")
    if role:
        query = query.filter(role=role)
    member = query.first()
    if member is None:
        raise ApiError(
            "not_found", "No such member in this organization.", 404, {"practitioner": ["Not found."]}
        )
    return member


def require_purpose(*allowed: str) -> None:
    ctx = current()
    if ctx is None or ctx.purpose not in allowed:
        raise ApiError(
            "purpose_not_permitted",
            f"This action needs purpose of use {' or '.join(allowed)} (X-Purpose-Of-Use).",
            403,
        )


# -- patients -----------------------------------------------------------------------------------------

PATIENT_FIELDS = (
    "given_name",
    "family_name",
    "birth_date",
    "email",
    "phone",
    "address",
    "health_card_number",
)
PATIENT_CONTACT_FIELDS = ("email", "phone", "address")


def search_patients(*, email: str = "", health_card_number: str = ""):
    """Exact match only, through the blind indexes; the queryset is already confined by row policies."""
    queryset = Patient.objects.all()
    if email:
        queryset = queryset.filter(email=email)
    if health_card_number:
        queryset = queryset.filter(health_card_number=health_card_number)
    return queryset


def _duplicate_patient() -> ApiError:
    # The same answer whether or not the caller may see the existing patient: that one exists is all it says.
    return ApiError(
        "duplicate_patient",
        "A patient with this health card number is already registered in this clinic. If they are in your "
        "care, ask the front desk to add you to their care team.",
        409,
        {"health_card_number": ["Already registered."]},
    )


def _save_patient(patient: Patient, **kwargs) -> None:
    """Save, turning the database's one-patient-per-health-card constraint into a clear 409. The constraint
    sees every row of the clinic, including those the caller's row policies hide."""
    try:
        with transaction.atomic():
            patient.save(**kwargs)
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") == HEALTH_CARD_CONSTRAINT:
            raise _duplicate_patient() from None
        raise


HEALTH_CARD_CONSTRAINT = "clinic_patient_one_per_health_card"


@transaction.atomic
def register_patient(*, actor: Membership, data: dict) -> Patient:
    org_id = current().org_id  # type: ignore[union-attr]
    if org_id is None:
        raise ApiError("unknown_host", "No organization is served at this host.", 404)
    patient = Patient(org_id=org_id, **{k: v for k, v in data.items() if k in PATIENT_FIELDS})
    _save_patient(patient, force_insert=True)
    record_phi_access(
        action="create",
        resource="Patient",
        resource_id=patient.pk,
        patient_id=patient.pk,
        after=state_hash(patient),
    )
    return patient


@transaction.atomic
def update_patient(*, patient: Patient, actor: Membership, data: dict) -> Patient:
    allowed = PATIENT_CONTACT_FIELDS if actor.role == Role.PATIENT else PATIENT_FIELDS
    refused = sorted(set(data) - set(allowed))
    if refused:
        raise ApiError(
            "field_not_permitted",
            "Some fields cannot be changed by you.",
            403,
            {name: ["You may not change this field."] for name in refused},
        )
    before = state_hash(patient)
    for name, value in data.items():
        setattr(patient, name, value)
    _save_patient(patient)
    record_phi_access(
        action="update",
        resource="Patient",
        resource_id=patient.pk,
        patient_id=patient.pk,
        before=before,
        after=state_hash(patient),
    )
    return patient


# -- care team ----------------------------------------------------------------------------------------


def _check_period_end(until: datetime | None, now: datetime) -> None:
    """A period starts now, so its end is later than now (the database also refuses an end before a start)."""
    if until is not None and until <= now:
        raise ApiError(
            "invalid_period",
            "The end of the period must be in the future.",
            400,
            {"until": ["Must be later than now."]},
        )


@transaction.atomic
def assign_care_team(
    *,
    patient: Patient,
    practitioner: Membership,
    actor: Membership,
    role: str = CareTeamMember.Role.PRIMARY,
    until: datetime | None = None,
) -> CareTeamMember:
    if practitioner.role != Role.PRACTITIONER:
        raise ApiError(
            "not_a_practitioner",
            "Only practitioners join a care team.",
            400,
            {"practitioner": ["This member is not a practitioner."]},
        )
    now = _now()
    _check_period_end(until, now)
    existing = (
        CareTeamMember.objects.filter(patient=patient, practitioner=practitioner)
        .filter(Q(period_end__isnull=True) | Q(period_end__gt=now))
        .first()
    )
    if existing is not None:
        raise ApiError(
            "already_on_care_team", "This practitioner is already on the patient's care team.", 409
        )
    member = CareTeamMember(
        org_id=patient.org_id,
        patient=patient,
        practitioner=practitioner,
        role=role,
        period_start=now,
        period_end=until,
        added_by=actor,
    )
    member.save(force_insert=True)
    record_phi_access(
        action="create",
        resource="CareTeamMember",
        resource_id=member.pk,
        patient_id=patient.pk,
        after=state_hash(member),
    )
    return member


@transaction.atomic
def end_care_team(*, member: CareTeamMember, actor: Membership) -> CareTeamMember:
    now = _now()
    if member.period_end is not None and member.period_end <= now:
        raise ApiError("already_ended", "This care team assignment has already ended.", 409)
    before = state_hash(member)
    member.period_end = now
    member.save(update_fields=["period_end"])
    record_phi_access(
        action="update",
        resource="CareTeamMember",
        resource_id=member.pk,
        patient_id=member.patient_id,
        before=before,
        after=state_hash(member),
    )
    return member


# -- consent ------------------------------------------------------------------------------------------


@transaction.atomic
def grant_consent(
    *, patient: Patient, purpose: str, actor: Membership, note: str = "", until: datetime | None = None
) -> Consent:
    """Grant, or re-grant after a withdrawal; the history keeps every step."""
    if purpose not in Consent.Purpose.values:
        raise ApiError(
            "invalid_purpose",
            "Unknown consent purpose.",
            400,
            {"purpose": [f"Choose one of {', '.join(Consent.Purpose.values)}."]},
        )
    now = _now()
    _check_period_end(until, now)
    consent = Consent.objects.select_for_update().filter(patient=patient, purpose=purpose).first()
    action = "grant"
    before = state_hash(consent)
    if consent is None:
        consent = Consent(org_id=patient.org_id, patient=patient, purpose=purpose)
    elif consent.status == Consent.Status.ACTIVE:
        raise ApiError("already_active", "This consent is already active.", 409)
    else:
        action = "regrant" if consent.status == Consent.Status.WITHDRAWN else "grant"
    consent.status = Consent.Status.ACTIVE
    consent.period_start, consent.period_end, consent.updated_at = now, until, now
    consent.save()
    ConsentEvent(
        org_id=patient.org_id, consent=consent, patient=patient, action=action, actor=actor, at=now, note=note
    ).save(force_insert=True)
    record_phi_access(
        action="update" if before else "create",
        resource="Consent",
        resource_id=consent.pk,
        patient_id=patient.pk,
        before=before,
        after=state_hash(consent),
        detail={"step": action},
    )
    return consent


@transaction.atomic
def withdraw_consent(*, consent: Consent, actor: Membership, note: str = "") -> Consent:
    if consent.status != Consent.Status.ACTIVE:
        raise ApiError("not_active", "Only an active consent can be withdrawn.", 409)
    before = state_hash(consent)
    now = _now()
    consent.status, consent.period_end, consent.updated_at = Consent.Status.WITHDRAWN, now, now
    consent.save(update_fields=["status", "period_end", "updated_at"])
    ConsentEvent(
        org_id=consent.org_id,
        consent=consent,
        patient_id=consent.patient_id,
        action="withdraw",
        actor=actor,
        at=now,
        note=note,
    ).save(force_insert=True)
    record_phi_access(
        action="update",
        resource="Consent",
        resource_id=consent.pk,
        patient_id=consent.patient_id,
        before=before,
        after=state_hash(consent),
        detail={"step": "withdraw"},
    )
    return consent


def consent_history(consent: Consent):
    return ConsentEvent.objects.filter(consent=consent).order_by("at")


# -- encounters ---------------------------------------------------------------------------------------

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
            "not_a_practitioner",
            "Encounters are with a practitioner.",
            400,
            {"practitioner": ["This member is not a practitioner."]},
        )
    if actor.role == Role.PRACTITIONER and practitioner.pk != actor.pk:
        raise ApiError("not_permitted", "Practitioners schedule their own encounters.", 403)
    encounter = Encounter(
        org_id=patient.org_id,
        patient=patient,
        practitioner=practitioner,
        scheduled_at=scheduled_at,
        reason=reason,
    )
    encounter.save(force_insert=True)
    add_timeline_event(encounter, "planned", actor)
    record_phi_access(
        action="create",
        resource="Encounter",
        resource_id=encounter.pk,
        patient_id=patient.pk,
        after=state_hash(encounter),
    )
    return encounter


def check_visit_window(encounter: Encounter, now: datetime) -> None:
    """Arrival and the start of a visit happen near its scheduled time. An arrived or started encounter opens
    the visit to its practitioner (clinic/rls.py), so this is a rule of access, not only of the calendar;
    the database refuses the same change outside the same window."""
    opens, closes = encounter.scheduled_at - VISIT_OPENS_BEFORE, encounter.scheduled_at + VISIT_CLOSES_AFTER
    if not opens <= now < closes:
        raise ApiError(
            "outside_visit_window",
            f"This visit can be checked in or started from {opens.isoformat()} until {closes.isoformat()}.",
            409,
            {"scheduled_at": ["The visit is not open now."]},
        )


@transaction.atomic
def transition_encounter(*, encounter: Encounter, action: str, actor: Membership) -> Encounter:
    """arrive, admit, start, end, cancel: validated against the encounter's state and the actor's role."""
    if action not in TRANSITIONS:
        raise ApiError("unknown_action", f"Unknown encounter action {action!r}.", 404)
    sources, target = TRANSITIONS[action]
    if actor.role not in ACTORS[action]:
        raise ApiError("not_permitted", f"Your role cannot {action} an encounter.", 403)
    if actor.role == Role.PRACTITIONER and encounter.practitioner_id != actor.pk:
        raise ApiError("not_permitted", "Only the encounter's practitioner can do this.", 403)
    # The row lock needs the right to update the row; a caller who may see but not change it was refused above.
    locked = Encounter.objects.select_for_update().filter(pk=encounter.pk).first()
    if locked is None:
        raise ApiError("not_permitted", f"You cannot {action} this encounter.", 403)
    encounter = locked
    if encounter.status not in sources:
        raise ApiError(
            "invalid_transition",
            f"Cannot {action} an encounter that is {encounter.status}.",
            409,
            {"status": [f"Allowed from: {', '.join(sorted(sources))}."]},
        )
    now = _now()
    ctx = current()
    importing_history = (
        ctx is not None and ctx.role == "platform"
    )  # operators' imports, as the trigger allows
    if action in ("arrive", "start") and encounter.status == S.PLANNED and not importing_history:
        check_visit_window(encounter, now)
    before = state_hash(encounter)
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
    record_phi_access(
        action="update",
        resource="Encounter",
        resource_id=encounter.pk,
        patient_id=encounter.patient_id,
        before=before,
        after=state_hash(encounter),
        detail={"transition": action},
    )
    return encounter


@transaction.atomic
def flag_documentation_required(*, encounter: Encounter, reason: str) -> Encounter:
    """An encounter that ended without the practitioner closing it (a dropped video that never resumed):
    finished, flagged, and kept on the documentation-required list until a note is signed for it."""
    encounter = Encounter.objects.select_for_update().get(pk=encounter.pk)
    before = state_hash(encounter)
    if encounter.status in (S.IN_PROGRESS, S.ARRIVED):
        encounter.status = S.FINISHED
        encounter.ended_at = _now()
    encounter.documentation_required = True
    encounter.save()
    add_timeline_event(encounter, "documentation_required", None, reason=reason)
    record_phi_access(
        action="update",
        resource="Encounter",
        resource_id=encounter.pk,
        patient_id=encounter.patient_id,
        before=before,
        after=state_hash(encounter),
    )
    return encounter


# -- notes --------------------------------------------------------------------------------------------


@transaction.atomic
def create_note(*, encounter: Encounter, body: str, author: Membership) -> ClinicalNote:
    if author.role != Role.PRACTITIONER:
        raise ApiError("not_permitted", "Only practitioners write clinical notes.", 403)
    if encounter.status in (S.CANCELLED, S.PLANNED):
        raise ApiError(
            "invalid_state",
            f"No note on a {encounter.status} encounter.",
            409,
            {"encounter": [f"The encounter is {encounter.status}."]},
        )
    note = ClinicalNote(
        org_id=encounter.org_id,
        encounter=encounter,
        patient_id=encounter.patient_id,
        author=author,
        body=body,
    )
    note.save(force_insert=True)
    record_phi_access(
        action="create",
        resource="ClinicalNote",
        resource_id=note.pk,
        patient_id=encounter.patient_id,
        after=state_hash(note),
    )
    return note


@transaction.atomic
def update_draft_note(*, note: ClinicalNote, body: str, author: Membership) -> ClinicalNote:
    if note.status != ClinicalNote.Status.DRAFT:
        raise ApiError("note_signed", "A signed note cannot be edited; amend it instead.", 409)
    if note.author_id != author.pk:
        raise ApiError("not_permitted", "Only the author edits a draft.", 403)
    before = state_hash(note)
    note.body = body
    note.save(update_fields=["body"])
    record_phi_access(
        action="update",
        resource="ClinicalNote",
        resource_id=note.pk,
        patient_id=note.patient_id,
        before=before,
        after=state_hash(note),
    )
    return note


@transaction.atomic
def sign_note(*, note: ClinicalNote, actor: Membership) -> ClinicalNote:
    if note.status == ClinicalNote.Status.SIGNED:
        raise ApiError("already_signed", "This note is already signed.", 409)
    if note.author_id != actor.pk:
        raise ApiError("not_permitted", "Only the author signs a note.", 403)
    before = state_hash(note)
    note.status, note.signed_at = ClinicalNote.Status.SIGNED, _now()
    note.save(update_fields=["status", "signed_at"])
    encounter = Encounter.objects.select_for_update().get(pk=note.encounter_id)
    add_timeline_event(encounter, "note_signed", actor, note=str(note.pk), version=note.version)
    if encounter.documentation_required:
        Encounter.objects.filter(pk=encounter.pk).update(documentation_required=False)
        add_timeline_event(encounter, "documented", actor, note=str(note.pk))
    record_phi_access(
        action="update",
        resource="ClinicalNote",
        resource_id=note.pk,
        patient_id=note.patient_id,
        before=before,
        after=state_hash(note),
        detail={"step": "sign"},
    )
    return note


@transaction.atomic
def amend_note(*, note: ClinicalNote, body: str, actor: Membership) -> ClinicalNote:
    """A signed note stays as it was; the amendment is a new draft version that points at it."""
    if note.status != ClinicalNote.Status.SIGNED:
        raise ApiError("not_signed", "Only a signed note is amended; edit the draft instead.", 409)
    if ClinicalNote.objects.filter(amends=note).exists():
        raise ApiError("already_amended", "This version has already been amended; amend the newest one.", 409)
    amendment = ClinicalNote(
        org_id=note.org_id,
        encounter_id=note.encounter_id,
        patient_id=note.patient_id,
        author=actor,
        body=body,
        version=note.version + 1,
        amends=note,
    )
    amendment.save(force_insert=True)
    record_phi_access(
        action="create",
        resource="ClinicalNote",
        resource_id=amendment.pk,
        patient_id=note.patient_id,
        after=state_hash(amendment),
        detail={"amends": str(note.pk)},
    )
    return amendment


# -- break-glass --------------------------------------------------------------------------------------


@transaction.atomic
def open_break_glass(
    *, patient_id: uuid.UUID, reason: str, actor: Membership, minutes: int = BREAK_GLASS_DEFAULT_MINUTES
) -> BreakGlass:
    """Emergency access to a patient outside the care relationship: stated reason, time box, own event."""
    require_purpose(PurposeOfUse.EMERGENCY)
    if actor.role != Role.PRACTITIONER:
        raise ApiError("not_permitted", "Only practitioners may break the glass.", 403)
    if visible_length(reason or "") < 10:
        raise ApiError(
            "reason_required",
            "State the emergency (at least 10 characters).",
            400,
            {"reason": ["A reason of at least 10 characters is required."]},
        )
    if not 1 <= minutes <= BREAK_GLASS_MAX_MINUTES:
        raise ApiError(
            "invalid_duration",
            f"Between 1 and {BREAK_GLASS_MAX_MINUTES} minutes.",
            400,
            {"minutes": [f"Between 1 and {BREAK_GLASS_MAX_MINUTES}."]},
        )
    now = _now()
    grant = BreakGlass(
        org_id=actor.org_id,
        practitioner=actor,
        patient_id=patient_id,
        reason=reason.strip(),
        opened_at=now,
        expires_at=now + timedelta(minutes=minutes),
    )
    try:
        with transaction.atomic():
            grant.save(force_insert=True)
    except IntegrityError:
        # The composite foreign key found no such patient in this organization.
        raise _not_found() from None
    record_phi_access(
        action="break_glass_open",
        resource="BreakGlass",
        resource_id=grant.pk,
        patient_id=patient_id,
        after=state_hash(grant),
        detail={"minutes": minutes},
    )
    return grant


@transaction.atomic
def close_break_glass(*, grant: BreakGlass, actor: Membership) -> BreakGlass:
    if grant.closed_at is not None:
        raise ApiError("already_closed", "This break-glass access is already closed.", 409)
    before = state_hash(grant)
    grant.closed_at = _now()
    grant.save(update_fields=["closed_at"])
    record_phi_access(
        action="break_glass_close",
        resource="BreakGlass",
        resource_id=grant.pk,
        patient_id=grant.patient_id,
        before=before,
        after=state_hash(grant),
    )
    return grant


def get_break_glass_for_user(grant_id: uuid.UUID) -> BreakGlass:
    grant = BreakGlass.objects.filter(pk=grant_id).first()
    if grant is None:
        raise _not_found()
    return grant


# -- reports ------------------------------------------------------------------------------------------


def _suppress(count: int) -> int | None:
    """Below SMALL_COUNT: null. Otherwise rounded to the nearest ROUND_TO, so that one patient joining or leaving
    a suppressed cell does not show as a change of one in a total or a neighbouring cell."""
    if count < SMALL_COUNT:
        return None
    return ROUND_TO * ((count + ROUND_TO // 2) // ROUND_TO)


def _age_band(birth: date, today: date) -> str:
    age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    if age < 18:
        return "0-17"
    if age < 40:
        return "18-39"
    if age < 65:
        return "40-64"
    return "65+"


def consent_aware_summary() -> dict:
    """Aggregates under the analytics purpose. Patients without analytics consent are not in the data at
    all (a restrictive row policy); counts below SMALL_COUNT are suppressed (null), the rest rounded, and every
    band and status is always present, so that neither a key appearing nor a total moving by one gives a
    single patient away."""
    require_purpose(PurposeOfUse.ANALYTICS)
    today = timezone.localdate()
    bands: dict[str, int] = dict.fromkeys(AGE_BANDS, 0)
    for patient in Patient.objects.only("id", "org_id", "birth_date"):
        if patient.birth_date:
            band = _age_band(patient.birth_date, today)
            bands[band] += 1
    encounter_counts = {
        row["status"]: row["n"] for row in Encounter.objects.values("status").annotate(n=Count("id"))
    }
    patients = sum(bands.values())
    record_phi_access(action="report", resource="Report", detail={"report": "summary"})
    return {
        "suppression_threshold": SMALL_COUNT,
        "rounded_to": ROUND_TO,
        "patients": _suppress(patients),
        "patients_by_age_band": {band: _suppress(bands[band]) for band in AGE_BANDS},
        "encounters_by_status": {status: _suppress(encounter_counts.get(status, 0)) for status in S.values},
        "documentation_required": _suppress(Encounter.objects.filter(documentation_required=True).count()),
    }
