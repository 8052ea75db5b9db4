"""Break-glass: emergency access outside the care relationship, with a stated reason and a time box."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction

from tenancy.errors import ApiError, TenancyCode
from tenancy.models import Membership, PurposeOfUse, Role

from ..errors import ClinicCode
from ..models import (
    BreakGlass,
)
from .common import (
    _not_found,
    _now,
    load_for_user,
    recorded_write,
    require_purpose,
    visible_length,
)

BREAK_GLASS_DEFAULT_MINUTES = 60


BREAK_GLASS_MAX_MINUTES = 240


@transaction.atomic
def open_break_glass(
    *, patient_id: uuid.UUID, reason: str, actor: Membership, minutes: int = BREAK_GLASS_DEFAULT_MINUTES
) -> BreakGlass:
    """Emergency access to a patient outside the care relationship: stated reason, time box, own event."""
    require_purpose(PurposeOfUse.EMERGENCY)
    if actor.role != Role.PRACTITIONER:
        raise ApiError(TenancyCode.NOT_PERMITTED, "Only practitioners may break the glass.")
    if visible_length(reason or "") < 10:
        raise ApiError(
            ClinicCode.REASON_REQUIRED,
            "State the emergency (at least 10 characters).",
            fields={"reason": ["A reason of at least 10 characters is required."]},
        )
    if not 1 <= minutes <= BREAK_GLASS_MAX_MINUTES:
        raise ApiError(
            ClinicCode.INVALID_DURATION,
            f"Between 1 and {BREAK_GLASS_MAX_MINUTES} minutes.",
            fields={"minutes": [f"Between 1 and {BREAK_GLASS_MAX_MINUTES}."]},
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
    with recorded_write(grant, resource="BreakGlass", action="break_glass_open", detail={"minutes": minutes}):
        try:
            with transaction.atomic():
                grant.save(force_insert=True)
        except IntegrityError:
            # The composite foreign key found no such patient in this organization.
            raise _not_found() from None
    return grant


@transaction.atomic
def close_break_glass(*, grant: BreakGlass, actor: Membership) -> BreakGlass:
    if grant.closed_at is not None:
        raise ApiError(ClinicCode.ALREADY_CLOSED, "This break-glass access is already closed.")
    with recorded_write(grant, resource="BreakGlass", action="break_glass_close"):
        grant.closed_at = _now()
        grant.save(update_fields=["closed_at"])
    return grant


def get_break_glass_for_user(grant_id: uuid.UUID, *, record: bool = True) -> BreakGlass:
    """The break-glass access (else 404), recorded as a read; `record=False` only when the caller's own event
    records this access (closing it)."""
    return load_for_user(BreakGlass.objects.filter(pk=grant_id), resource="BreakGlass", record=record)
