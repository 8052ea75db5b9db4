"""The demo seed and the synthetic-patient generator: a history in every state, written under the rules, once.

seed_demo and generate_patients run here against the test database (the real OpenBao gives the demo clinics
their keys); what they wrote is counted under the platform's context, and the demo's rules are checked under a
practitioner's and an analyst's.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from clinic import synthetic
from clinic.management.commands.seed_demo import CLINICS, DEMO_HISTORY, LOCUM
from clinic.models import (
    BreakGlass,
    CareTeamMember,
    ClinicalNote,
    Consent,
    ConsentEvent,
    Encounter,
    EncounterEvent,
    Patient,
)
from tenancy.context import platform_context, tenant_context
from tenancy.models import Membership, Organization, User

pytestmark = pytest.mark.django_db

MODELS = [Patient, CareTeamMember, Consent, ConsentEvent, Encounter, EncounterEvent, ClinicalNote, BreakGlass]


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Thirty-odd demo accounts with Argon2 would take most of this module's time; the hasher is not under test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def org_by_slug(slug: str) -> Organization:
    with platform_context():
        return Organization.objects.get(slug=slug)


def row_counts(org: Organization) -> dict[str, int]:
    with tenant_context(org_id=org.id, role="platform"):
        return {model.__name__: model.objects.count() for model in MODELS}


def seed(tmp_path) -> str:
    out = io.StringIO()
    call_command("seed_demo", signins=str(tmp_path / "signins.json"), stdout=out)
    return out.getvalue()


def test_seed_demo_writes_a_history_in_every_state_once(tmp_path):
    assert seed(tmp_path).strip() == "Seeded the demo clinics."
    signins = json.loads((tmp_path / "signins.json").read_text())
    assert set(signins) == {"northwind", "harbor"}
    assert signins["northwind"]["people"][-1]["role"] == "patient (1 of 12)"

    first = {}
    for clinic in CLINICS:
        org = org_by_slug(clinic["slug"])
        first[clinic["slug"]] = row_counts(org)
        with tenant_context(org_id=org.id, role="platform"):
            patients = Patient.objects.count()
            assert patients == len(clinic["patients"]) == len(DEMO_HISTORY)

            # Encounters in every state, and one finished without being closed, still flagged.
            assert set(Encounter.objects.values_list("status", flat=True)) == set(Encounter.Status.values)
            assert Encounter.objects.filter(status="finished", documentation_required=True).exists()
            for kind in ("arrive", "start", "end", "cancel", "documentation_required", "note_signed"):
                assert EncounterEvent.objects.filter(kind=kind).exists(), kind

            # Treatment consent for everyone; analytics active for most, withdrawn (with history) for some.
            treatment = Consent.objects.filter(purpose="treatment", status="active")
            assert treatment.count() == patients
            analytics = Consent.objects.filter(purpose="analytics")
            active = analytics.filter(status="active").count()
            withdrawn = list(analytics.filter(status="withdrawn"))
            assert active > patients / 2
            assert len(withdrawn) >= 2
            assert patients - analytics.count() >= 2  # never asked
            for consent in withdrawn:
                steps = list(ConsentEvent.objects.filter(consent=consent).order_by("at"))
                assert [step.action for step in steps] == ["grant", "withdraw"]
                # The patient withdrew it themself, through their own membership.
                assert steps[1].actor.user_id == Patient.objects.get(pk=consent.patient_id).user_id
            regranted = ConsentEvent.objects.filter(action="regrant")
            assert regranted.count() == 1
            assert Consent.objects.get(pk=regranted.get().consent_id).status == "active"

            # Signed, draft and amended notes; an amendment is a new signed version of a signed note.
            notes = ClinicalNote.objects.all()
            assert notes.filter(status="signed", amends__isnull=True).exists()
            assert notes.filter(status="draft").exists()
            amendment = notes.get(amends__isnull=False)
            assert (amendment.version, amendment.status) == (2, "signed")
            assert notes.get(pk=amendment.amends_id).status == "signed"
            assert "Addendum" in amendment.body and "Addendum" not in notes.get(pk=amendment.amends_id).body

            # Care teams: each practitioner on several patients, the locum in both clinics.
            locum = Membership.objects.get(user=User.objects.get_by_email(LOCUM))
            teams = CareTeamMember.objects.all()
            per_practitioner = {
                m.pk: teams.filter(practitioner=m).count()
                for m in Membership.objects.filter(role="practitioner")
            }
            assert len(per_practitioner) == 2 and min(per_practitioner.values()) >= 3
            assert per_practitioner[locum.pk] >= 3
            assert Patient.objects.exclude(
                pk__in=teams.values_list("patient_id", flat=True)
            ).exists()  # one record only break-glass opens
            local = Membership.objects.exclude(pk=locum.pk).get(role="practitioner")

        # The rules apply to the seeded data: the local practitioner sees exactly their care relationships.
        on_team = {
            i
            for i, (team, _, encounters) in enumerate(DEMO_HISTORY)
            if any(who == "local" for who, _ in team)
            or any(
                who == "local" and outcome in ("arrived", "in-progress") for who, outcome, _, _ in encounters
            )
        }
        with tenant_context(org_id=org.id, role="practitioner", user_id=local.user_id, purpose="treatment"):
            assert Patient.objects.count() == len(on_team)
        analytics_ok = sum(1 for _, consent, _ in DEMO_HISTORY if consent in ("active", "regranted"))
        with tenant_context(org_id=org.id, role="org_admin", purpose="analytics"):
            assert Patient.objects.count() == analytics_ok

    # A second run adds nothing.
    assert seed(tmp_path).strip() == "Demo clinics already seeded."
    for clinic in CLINICS:
        assert row_counts(org_by_slug(clinic["slug"])) == first[clinic["slug"]]


def test_generate_patients_is_resumable(alpha):
    out = io.StringIO()
    call_command("generate_patients", org="alpha", count=6, seed=7, batch=4, stdout=out)
    assert "0 of 6 generated patients (series 7) exist; creating 6." in out.getvalue()
    assert "4/6 created" in out.getvalue() and "6/6 created" in out.getvalue()
    after_first = row_counts(alpha.org)
    assert after_first["Patient"] == len(alpha.patients) + 6
    with tenant_context(org_id=alpha.org.id, role="platform"):
        assert synthetic.tagged_indexes(alpha.org.id, 7, 10) == set(range(6))
        assert Consent.objects.filter(purpose="treatment").count() == 6
        assert CareTeamMember.objects.filter(practitioner=alpha.membership("practitioner")).count() == 6
        patient = Patient.objects.get(health_card_number=synthetic.synthetic_card(7, 3))
        assert patient.email == synthetic.generated_record(7, 3)["email"]
    assert after_first["Encounter"] >= 12

    # The same count again adds nothing; a larger one adds the difference, with the same histories as before.
    out = io.StringIO()
    call_command("generate_patients", org="alpha", count=6, seed=7, stdout=out)
    assert "alpha already holds 6 generated patients of series 7." in out.getvalue()
    assert row_counts(alpha.org) == after_first
    call_command("generate_patients", org="alpha", count=8, seed=7, stdout=io.StringIO())
    assert row_counts(alpha.org)["Patient"] == after_first["Patient"] + 2
