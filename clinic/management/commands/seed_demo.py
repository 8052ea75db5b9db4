"""Seed the demo: two clinics, their staff and a dozen synthetic patients each, with a clinical history.
Safe to run again: a clinic that already has encounters keeps the history it has.

Every name here is synthetic. The history (care teams, consents, encounters in every state, notes) is written
through clinic.services under the platform's context for treatment, so the domain rules and the audit hook
apply. The sign-ins are written to .data/demo-signins.json for the launcher to print.
"""

import json
from pathlib import Path
from typing import TypedDict

from django.conf import settings
from django.core.management.base import BaseCommand

from clinic import synthetic
from clinic.models import Encounter, Patient
from clinic.synthetic import (
    ACTIVE,
    AMENDED,
    ARRIVED,
    CANCELLED,
    CONSULTING,
    DOCUMENTATION_REQUIRED,
    DRAFT,
    FINISHED,
    IN_PROGRESS,
    NEVER,
    NO_NOTE,
    PLANNED,
    PRIMARY,
    REGRANTED,
    SIGNED,
    WITHDRAWN,
    EncounterPlan,
    HistoryPlan,
    Tally,
)
from tenancy.context import tenant_context
from tenancy.models import Membership, Role
from tenancy.services import create_organization, ensure_member

DEMO_PASSWORD = "Demo-Clinic-Pass-2026"


class DemoClinic(TypedDict):
    slug: str
    name: str
    host: str
    primary_color: str
    accent_color: str
    support_email: str
    support_phone: str
    people: list[tuple[str, Role, str]]  # (email, role, full name)
    patients: list[str]  # full names


CLINICS: list[DemoClinic] = [
    {
        "slug": "northwind",
        "name": "Northwind Family Health",
        "host": "northwind.localhost",
        "primary_color": "#1d4ed8",
        "accent_color": "#059669",
        "support_email": "help@northwind.example",
        "support_phone": "+1-555-0100",
        "people": [
            ("admin@northwind.example", Role.ORG_ADMIN, "Avery Admin"),
            ("dr.lee@northwind.example", Role.PRACTITIONER, "Dr. Jordan Lee"),
            ("dr.patel@locum.example", Role.PRACTITIONER, "Dr. Sam Patel"),
            ("frontdesk@northwind.example", Role.STAFF, "Riley Desk"),
            ("auditor@northwind.example", Role.AUDITOR, "Casey Auditor"),
        ],
        "patients": [
            "Ada Brook",
            "Ben Carter",
            "Cleo Dunn",
            "Dev Ellis",
            "Eva Frost",
            "Finn Gray",
            "Gia Hale",
            "Hugo Irwin",
            "Ivy Jones",
            "Jon Kerr",
            "Kai Lund",
            "Lena Moss",
        ],
    },
    {
        "slug": "harbor",
        "name": "Harbor Community Clinic",
        "host": "harbor.localhost",
        "primary_color": "#0f766e",
        "accent_color": "#b45309",
        "support_email": "care@harbor.example",
        "support_phone": "+1-555-0200",
        "people": [
            ("admin@harbor.example", Role.ORG_ADMIN, "Morgan Admin"),
            ("dr.okafor@harbor.example", Role.PRACTITIONER, "Dr. Chidi Okafor"),
            # The same locum works at both clinics: one sign-in, two memberships, never both at once.
            ("dr.patel@locum.example", Role.PRACTITIONER, "Dr. Sam Patel"),
            ("frontdesk@harbor.example", Role.STAFF, "Jamie Desk"),
            ("auditor@harbor.example", Role.AUDITOR, "Quinn Auditor"),
        ],
        "patients": [
            "Mia North",
            "Noah Olsen",
            "Omar Price",
            "Pia Quinn",
            "Ravi Reyes",
            "Sara Stone",
            "Tom Usher",
            "Uma Vale",
            "Vic Wade",
            "Wren Xu",
            "Yara Young",
            "Zed Zane",
        ],
    },
]


LOCUM = "dr.patel@locum.example"  # works at both clinics

# The history of each clinic's twelve patients, in the order of CLINICS[...]["patients"]. "local" is the
# clinic's own practitioner, "locum" Dr. Patel. Between them: encounters in every state (one finished but never
# closed, so still on the documentation-required list), signed, draft and amended notes, analytics consent
# active for most, withdrawn for some (one re-granted) and never given by two; one patient on no care team,
# whose record only break-glass opens (their planned visit alone gives no access).
# (care team, analytics consent, encounters as (practitioner, outcome, days ago, note))
DEMO_HISTORY: list[tuple[list[tuple[str, str]], str, list[tuple[str, str, float, str]]]] = [
    ([("local", PRIMARY)], ACTIVE, [("local", FINISHED, 30, AMENDED)]),
    ([("local", PRIMARY)], ACTIVE, [("local", FINISHED, 60, SIGNED), ("local", IN_PROGRESS, 0, DRAFT)]),
    ([("local", PRIMARY)], WITHDRAWN, [("local", ARRIVED, 0, NO_NOTE)]),
    (
        [("local", PRIMARY), ("locum", CONSULTING)],
        ACTIVE,
        [("locum", FINISHED, 14, SIGNED), ("local", PLANNED, -3, NO_NOTE)],
    ),
    ([("local", PRIMARY)], NEVER, [("local", CANCELLED, -1, NO_NOTE)]),
    ([("local", PRIMARY)], ACTIVE, [("local", DOCUMENTATION_REQUIRED, 2, NO_NOTE)]),
    ([("local", PRIMARY)], REGRANTED, [("local", FINISHED, 90, SIGNED)]),
    ([("local", PRIMARY)], WITHDRAWN, [("local", FINISHED, 45, SIGNED), ("local", FINISHED, 5, DRAFT)]),
    ([], ACTIVE, [("local", PLANNED, -7, NO_NOTE)]),
    ([("locum", PRIMARY)], ACTIVE, [("locum", FINISHED, 20, SIGNED), ("locum", PLANNED, -10, NO_NOTE)]),
    ([("locum", PRIMARY)], NEVER, [("locum", ARRIVED, 0, NO_NOTE)]),
    ([("locum", PRIMARY), ("local", CONSULTING)], ACTIVE, [("locum", FINISHED, 10, SIGNED)]),
]


def seed_history(clinic: DemoClinic, members: dict[str, Membership], patients: list[Patient]) -> Tally:
    """Write the clinic's history (DEMO_HISTORY) for its patients, in order; `members` maps every demo email
    to its membership. Runs inside the clinic's platform context for treatment."""
    local = next(email for email, role, _ in clinic["people"] if role == Role.PRACTITIONER and email != LOCUM)
    desk = next(email for email, role, _ in clinic["people"] if role == Role.STAFF)
    who = {"local": members[local], "locum": members[LOCUM]}
    tally = Tally()
    for name, patient, (team, analytics, encounters) in zip(
        clinic["patients"], patients, DEMO_HISTORY, strict=True
    ):
        plan = HistoryPlan(
            care_team=[(who[person], role) for person, role in team],
            analytics=analytics,
            encounters=[
                EncounterPlan(who[person], outcome, days, note) for person, outcome, days, note in encounters
            ],
        )
        tally.merge(
            synthetic.give_history(
                patient,
                plan,
                front_desk=members[desk],
                patient_member=members[patient_email(clinic, name)],
            )
        )
    return tally


def patient_email(clinic: DemoClinic, name: str) -> str:
    first, last = name.lower().split()
    return f"{first}.{last}@patients.{clinic['slug']}.example"


class Command(BaseCommand):
    help = "Seed the two demo clinics with staff, patients and a clinical history (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--signins",
            default=str(Path(settings.BASE_DIR) / ".data" / "demo-signins.json"),
            help="Where to write the demo sign-ins for the launcher (default: .data/demo-signins.json).",
        )

    def handle(self, *args, **options):
        summary = {}
        created_any = False
        for clinic in CLINICS:
            org, created = create_organization(
                slug=clinic["slug"],
                name=clinic["name"],
                domains=[clinic["host"]],
                require_mfa=False,
                display_name=clinic["name"],
                primary_color=clinic["primary_color"],
                accent_color=clinic["accent_color"],
                support_email=clinic["support_email"],
                support_phone=clinic["support_phone"],
                idle_timeout_minutes=30,
            )
            created_any |= created
            people = [(email, role, name) for email, role, name in clinic["people"]]
            for name in clinic["patients"]:
                people.append((patient_email(clinic, name), Role.PATIENT, name))
            members: dict[str, Membership] = {}
            patients: list[Patient] = []
            with tenant_context(org_id=org.id, role="platform"):
                for email, role, name in people:
                    user, membership, member_created = ensure_member(
                        org=org, email=email, role=role, password=DEMO_PASSWORD, full_name=name
                    )
                    members[email] = membership
                    created_any |= member_created
                    if role == Role.PATIENT:
                        patient = Patient.objects.filter(user=user).first()
                        if patient is None:
                            patient = Patient.objects.create(
                                org_id=org.id, user=user, **synthetic.synthetic_record(name, email)
                            )
                        patients.append(patient)
            # One transaction per clinic: its whole history or none, so "has encounters" means "seeded".
            with synthetic.operator_context(org.id), synthetic.quiet_phi_log(options["verbosity"] < 2):
                if not Encounter.objects.exists():
                    tally = seed_history(clinic, members, patients)
                    created_any = True
                    if options["verbosity"] >= 2:
                        self.stdout.write(f"{clinic['slug']}: {tally.counts}")
            summary[clinic["slug"]] = {
                "name": clinic["name"],
                "host": clinic["host"],
                "password": DEMO_PASSWORD,
                "people": [{"email": e, "role": r} for e, r, _ in clinic["people"]]
                + [{"email": f"{people[len(clinic['people'])][0]}", "role": "patient (1 of 12)"}],
            }
        out = Path(options["signins"])
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        self.stdout.write("Seeded the demo clinics." if created_any else "Demo clinics already seeded.")
