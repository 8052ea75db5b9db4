"""Clinical notes: drafts, signing, and amendments as new versions (a signed note never changes)."""

from __future__ import annotations

import uuid

from django.db import transaction

from tenancy.errors import ApiError, TenancyCode
from tenancy.models import Membership, Role

from ..errors import ClinicCode
from ..models import (
    ClinicalNote,
    Encounter,
)
from .common import _now, load_for_user, recorded_write
from .encounters import S, add_timeline_event


def get_note_for_user(note_id: uuid.UUID, *, record: bool = True) -> ClinicalNote:
    """The note, if the caller's row policies reach it (else 404), recorded as a read; `record=False` only
    when the caller's own event records this access (editing, signing or amending it)."""
    return load_for_user(ClinicalNote.objects.filter(pk=note_id), resource="ClinicalNote", record=record)


def notes_of(encounter: Encounter):
    """The encounter's notes, every version; the page served is recorded row by row (views.paginate)."""
    return ClinicalNote.objects.filter(encounter=encounter)


@transaction.atomic
def create_note(*, encounter: Encounter, body: str, author: Membership) -> ClinicalNote:
    if author.role != Role.PRACTITIONER:
        raise ApiError(TenancyCode.NOT_PERMITTED, "Only practitioners write clinical notes.")
    if encounter.status in (S.CANCELLED, S.PLANNED):
        raise ApiError(
            ClinicCode.INVALID_STATE,
            f"No note on a {encounter.status} encounter.",
            fields={"encounter": [f"The encounter is {encounter.status}."]},
        )
    note = ClinicalNote(
        org_id=encounter.org_id,
        encounter=encounter,
        patient_id=encounter.patient_id,
        author=author,
        body=body,
    )
    with recorded_write(note, resource="ClinicalNote"):
        note.save(force_insert=True)
    return note


@transaction.atomic
def update_draft_note(*, note: ClinicalNote, body: str, author: Membership) -> ClinicalNote:
    if note.status != ClinicalNote.Status.DRAFT:
        raise ApiError(ClinicCode.NOTE_SIGNED, "A signed note cannot be edited; amend it instead.")
    if note.author_id != author.pk:
        raise ApiError(TenancyCode.NOT_PERMITTED, "Only the author edits a draft.")
    with recorded_write(note, resource="ClinicalNote"):
        note.body = body
        note.save(update_fields=["body"])
    return note


@transaction.atomic
def sign_note(*, note: ClinicalNote, actor: Membership) -> ClinicalNote:
    if note.status == ClinicalNote.Status.SIGNED:
        raise ApiError(ClinicCode.ALREADY_SIGNED, "This note is already signed.")
    if note.author_id != actor.pk:
        raise ApiError(TenancyCode.NOT_PERMITTED, "Only the author signs a note.")
    with recorded_write(note, resource="ClinicalNote", detail={"step": "sign"}):
        note.status, note.signed_at = ClinicalNote.Status.SIGNED, _now()
        note.save(update_fields=["status", "signed_at"])
        encounter = Encounter.objects.select_for_update().get(pk=note.encounter_id)
        add_timeline_event(encounter, "note_signed", actor, note=str(note.pk), version=note.version)
        if encounter.documentation_required:
            Encounter.objects.filter(pk=encounter.pk).update(documentation_required=False)
            add_timeline_event(encounter, "documented", actor, note=str(note.pk))
    return note


@transaction.atomic
def amend_note(*, note: ClinicalNote, body: str, actor: Membership) -> ClinicalNote:
    """A signed note stays as it was; the amendment is a new draft version that points at it."""
    if note.status != ClinicalNote.Status.SIGNED:
        raise ApiError(ClinicCode.NOT_SIGNED, "Only a signed note is amended; edit the draft instead.")
    if ClinicalNote.objects.filter(amends=note).exists():
        raise ApiError(
            ClinicCode.ALREADY_AMENDED, "This version has already been amended; amend the newest one."
        )
    amendment = ClinicalNote(
        org_id=note.org_id,
        encounter_id=note.encounter_id,
        patient_id=note.patient_id,
        author=actor,
        body=body,
        version=note.version + 1,
        amends=note,
    )
    with recorded_write(amendment, resource="ClinicalNote", detail={"amends": str(note.pk)}):
        amendment.save(force_insert=True)
    return amendment
