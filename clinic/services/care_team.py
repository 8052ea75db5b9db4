"""Care teams: the practitioners who hold a patient's whole chart, for a period."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Q

from tenancy.errors import ApiError
from tenancy.models import Membership, Role

from ..errors import ClinicCode
from ..models import (
    CareTeamMember,
    Patient,
)
from .common import _check_period_end, _now, recorded_write


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
            ClinicCode.NOT_A_PRACTITIONER,
            "Only practitioners join a care team.",
            fields={"practitioner": ["This member is not a practitioner."]},
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
            ClinicCode.ALREADY_ON_CARE_TEAM, "This practitioner is already on the patient's care team."
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
    with recorded_write(member, resource="CareTeamMember"):
        member.save(force_insert=True)
    return member


@transaction.atomic
def end_care_team(*, member: CareTeamMember, actor: Membership) -> CareTeamMember:
    now = _now()
    if member.period_end is not None and member.period_end <= now:
        raise ApiError(ClinicCode.ALREADY_ENDED, "This care team assignment has already ended.")
    with recorded_write(member, resource="CareTeamMember"):
        member.period_end = now
        member.save(update_fields=["period_end"])
    return member
