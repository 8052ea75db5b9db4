"""Seed the demo: two clinics, their staff and a dozen synthetic patients each. Safe to run again.

Every name here is synthetic. The sign-ins are written to .data/demo-signins.json for the launcher to print.
"""

import datetime
import hashlib
import json
from pathlib import Path
from typing import TypedDict

from django.conf import settings
from django.core.management.base import BaseCommand

from clinic.models import Patient
from tenancy.context import tenant_context
from tenancy.models import Role
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


def synthetic_record(name: str, email: str) -> dict:
    """A made-up but plausible record, derived from the name so re-seeding gives the same values."""
    digits = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    given, family = name.split()
    return {
        "given_name": given,
        "family_name": family,
        "birth_date": datetime.date(1940 + digits % 70, 1 + digits % 12, 1 + digits % 28),
        "email": email,
        "phone": f"+1-555-{digits % 10000:04d}",
        "address": {"line": f"{digits % 900 + 100} Example Street", "city": "Springfield", "country": "CA"},
        "health_card_number": f"{digits % 10**10:010d}-{'ABCDEFGHJK'[digits % 10]}{'LMNPQRSTVW'[digits // 10 % 10]}",
    }


class Command(BaseCommand):
    help = "Seed the two demo clinics (idempotent)."

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
                first, last = name.lower().split()
                people.append((f"{first}.{last}@patients.{clinic['slug']}.example", Role.PATIENT, name))
            with tenant_context(org_id=org.id, role="platform"):
                for email, role, name in people:
                    user, _, member_created = ensure_member(
                        org=org, email=email, role=role, password=DEMO_PASSWORD, full_name=name
                    )
                    created_any |= member_created
                    if role == Role.PATIENT and not Patient.objects.filter(user=user).exists():
                        Patient.objects.create(org_id=org.id, user=user, **synthetic_record(name, email))
            summary[clinic["slug"]] = {
                "name": clinic["name"],
                "host": clinic["host"],
                "password": DEMO_PASSWORD,
                "people": [{"email": e, "role": r} for e, r, _ in clinic["people"]]
                + [{"email": f"{people[len(clinic['people'])][0]}", "role": "patient (1 of 12)"}],
            }
        out = Path(settings.BASE_DIR) / ".data" / "demo-signins.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
        self.stdout.write("Seeded the demo clinics." if created_any else "Demo clinics already seeded.")
