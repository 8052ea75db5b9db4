"""Rules of the record that the outside test found loose (issue 11, findings 9, 10 and 14).

A break-glass reason must say something a reviewer can read; an aggregate report must not give one patient away
by a key appearing or a total moving by one; a period cannot end before it starts.
"""

from __future__ import annotations

import datetime

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from clinic import services
from clinic.models import CareTeamMember, Consent
from tenancy.context import tenant_context
from tests.clinic.test_access import client_for, patient_values

pytestmark = pytest.mark.django_db


# -- finding 9: a break-glass reason made of invisible characters ----------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "\u200b" * 12,  # zero-width spaces
        "\u200d\u200c\u2060\ufeff" * 4,  # joiners, word joiner, byte-order mark
        "\u00a0" * 12,  # no-break spaces
        "\u202e\u202d" * 6 + "ok",  # direction overrides around two letters
        " " * 12,
    ],
)
def test_break_glass_refuses_a_reason_with_nothing_to_read(api, alpha, world, reason):
    bo = client_for(api, alpha, "bo@alpha.test", purpose="emergency")
    refused = bo.post("/api/v1/break-glass", {"patient": str(world.stranger.pk), "reason": reason})
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["fields"].keys() == {"reason"}
    assert bo.get(f"/api/v1/patients/{world.stranger.pk}").status_code == 404


def test_break_glass_accepts_a_reason_in_any_script(api, alpha, world):
    bo = client_for(api, alpha, "bo@alpha.test", purpose="emergency")
    opened = bo.post(
        "/api/v1/break-glass",
        {"patient": str(world.stranger.pk), "reason": "Patiente inconsciente à l'urgence"},
    )
    assert opened.status_code == 201, opened.content


# -- finding 10: differencing an aggregate -----------------------------------------------------------------


def summary(api, alpha) -> dict:
    admin = client_for(api, alpha, alpha.email("org_admin"), purpose="analytics")
    response = admin.get("/api/v1/reports/summary")
    assert response.status_code == 200, response.content
    return response.json()


def test_one_consenting_minor_joining_or_leaving_does_not_show_in_the_report(api, alpha, world):
    before = summary(api, alpha)
    with tenant_context(org_id=world.org.id, role="platform", purpose="treatment"):
        minor = services.register_patient(
            actor=world.staff,
            data={
                **patient_values("Mina", "Young"),
                "birth_date": timezone.localdate() - datetime.timedelta(days=3650),
            },
        )
        consent = services.grant_consent(patient=minor, purpose="analytics", actor=world.staff)
    during = summary(api, alpha)
    assert during == before
    assert set(during["patients_by_age_band"]) == {"0-17", "18-39", "40-64", "65+"}
    with tenant_context(org_id=world.org.id, role="platform", purpose="treatment"):
        services.withdraw_consent(consent=consent, actor=world.staff)
    assert summary(api, alpha) == before


def test_report_counts_are_suppressed_below_five_and_rounded_above(api, alpha, world):
    body = summary(api, alpha)
    assert body["suppression_threshold"] == 5 and body["rounded_to"] == 5
    for value in [
        body["patients"],
        *body["patients_by_age_band"].values(),
        *body["encounters_by_status"].values(),
    ]:
        assert value is None or (value >= 5 and value % 5 == 0)


# -- finding 14: a period that ends before it starts -------------------------------------------------------


def test_a_consent_cannot_end_before_it_starts(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"), purpose="operations")
    for until in (
        "2000-01-01",
        "2000-01-01T00:00:00Z",
        (timezone.now() - datetime.timedelta(minutes=1)).isoformat(),
    ):
        refused = staff.post(
            f"/api/v1/patients/{world.stranger.pk}/consents", {"purpose": "research", "until": until}
        )
        assert refused.status_code == 400, refused.content
        assert "until" in refused.json()["error"]["fields"]
    with tenant_context(org_id=world.org.id, role="platform"):
        assert not Consent.objects.filter(patient=world.stranger, purpose="research").exists()


def test_a_care_team_assignment_cannot_end_before_it_starts(api, alpha, world):
    staff = client_for(api, alpha, alpha.email("staff"), purpose="operations")
    refused = staff.post(
        f"/api/v1/patients/{world.stranger.pk}/care-team",
        {"practitioner": str(world.bo.pk), "until": "2000-01-01T00:00:00Z"},
    )
    assert refused.status_code == 400, refused.content
    with tenant_context(org_id=world.org.id, role="platform"):
        assert not CareTeamMember.objects.filter(patient=world.stranger, practitioner=world.bo).exists()


def test_the_database_refuses_periods_that_end_before_they_start(world):
    with tenant_context(org_id=world.org.id, role="platform"):
        consent = Consent.objects.filter(patient__in=world.consenting).first()
        with pytest.raises(IntegrityError, match="clinic_consent_period_ordered"):
            with transaction.atomic():
                Consent.objects.filter(pk=consent.pk).update(
                    period_end=consent.period_start - datetime.timedelta(days=1)
                )
        member = CareTeamMember.objects.filter(patient=world.cared).first()
        with pytest.raises(IntegrityError, match="clinic_careteam_period_ordered"):
            with transaction.atomic():
                CareTeamMember.objects.filter(pk=member.pk).update(
                    period_end=member.period_start - datetime.timedelta(days=1)
                )
