"""Consent (PIPEDA): a patient's consent per purpose, granted, withdrawn and re-granted, with its history."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction

from tenancy.errors import ApiError
from tenancy.models import Membership

from ..models import (
    Consent,
    ConsentEvent,
    Patient,
)
from .common import _check_period_end, _not_found, _now, record_phi_access, state_hash


def get_consent_for_user(patient: Patient, consent_id: uuid.UUID) -> Consent:
    consent = Consent.objects.filter(pk=consent_id, patient=patient).first()
    if consent is None:
        raise _not_found()
    return consent


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
