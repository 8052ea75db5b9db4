"""Consent-aware aggregates for analytics, with small counts suppressed and the rest rounded."""

from __future__ import annotations

from datetime import date

from django.db.models import Count
from django.utils import timezone

from tenancy.models import PurposeOfUse

from ..models import (
    Encounter,
    Patient,
)
from .common import record_phi_access, require_purpose
from .encounters import S

SMALL_COUNT = 5  # reports suppress any count below this (re-identification risk)


ROUND_TO = 5  # and round the rest, so a total cannot be differenced against its suppressed parts


AGE_BANDS = ("0-17", "18-39", "40-64", "65+")


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
