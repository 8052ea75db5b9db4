"""Shared fixtures: two organizations committed once per run, API clients per host, raw runtime connections.

`make test` (devstack/launcher.py) has already created a fresh database with the owner and runtime roles and
migrated it as the owner, so pytest-django's own database creation is replaced by seeding two clinics.
Tests then run as the runtime role: the one the server uses, bound by row-level security.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import psycopg
import pytest
from django.conf import settings
from django.test import Client

from clinic.models import Patient
from tenancy.context import platform_context, tenant_context
from tenancy.crypto.keyring import keyring
from tenancy.models import Role
from tenancy.services import create_organization, ensure_member

PASSWORD = "Test-Clinic-Pass-2026"
ROLES = [Role.ORG_ADMIN, Role.PRACTITIONER, Role.STAFF, Role.AUDITOR, Role.PATIENT]


# Synthetic patients with unmistakable values: tests/tenancy/test_encryption.py looks for them in a pg_dump.
SEEDED_PATIENTS = {
    "alpha": [
        {
            "given_name": "Quorvinda",
            "family_name": "Zephyrhollow",
            "email": "quorvinda.z@alpha-patients.test",
            "health_card_number": "7391 846 205-QZ",
            "phone": "+1-555-7391",
            "birth_date": datetime.date(1961, 3, 14),
            "address": {"line": "12 Larkspur Row", "city": "Eastvale"},
        },
        {
            "given_name": "Brannoch",
            "family_name": "Ilvermoor",
            "email": "brannoch.i@alpha-patients.test",
            "health_card_number": "5520 913 477-BI",
            "phone": "+1-555-5520",
            "birth_date": datetime.date(1984, 11, 2),
            "address": {"line": "3 Juniper Close", "city": "Eastvale"},
        },
    ],
    "beta": [
        {
            "given_name": "Thessaly",
            "family_name": "Orrinwick",
            "email": "thessaly.o@beta-patients.test",
            "health_card_number": "8802 114 639-TO",
            "phone": "+1-555-8802",
            "birth_date": datetime.date(1973, 6, 30),
            "address": {"line": "88 Quay Street", "city": "Westport"},
        },
    ],
}


@dataclass
class Clinic:
    org: object
    host: str
    members: dict = field(default_factory=dict)  # role -> (user, membership)
    patients: list = field(default_factory=list)

    def user(self, role: str):
        return self.members[role][0]

    def membership(self, role: str):
        return self.members[role][1]

    def email(self, role: str) -> str:
        return f"{role}@{self.org.slug}.test"


def _make_clinic(slug: str, require_mfa: bool = False) -> Clinic:
    org, _ = create_organization(
        slug=slug, name=f"{slug.title()} Clinic", domains=[f"{slug}.localhost"], require_mfa=require_mfa
    )
    clinic = Clinic(org=org, host=f"{slug}.localhost")
    with tenant_context(org_id=org.id, role="platform"):
        for role in ROLES:
            user, membership, _ = ensure_member(
                org=org, email=f"{role}@{slug}.test", role=role, password=PASSWORD, full_name=f"{slug} {role}"
            )
            clinic.members[role] = (user, membership)
        for record in SEEDED_PATIENTS.get(slug, []):
            # Each seeded patient also has a portal sign-in, so the dump test covers users and memberships.
            portal_user, _, _ = ensure_member(
                org=org,
                email=record["email"],
                role=Role.PATIENT,
                password=PASSWORD,
                full_name=f"{record['given_name']} {record['family_name']}",
            )
            clinic.patients.append(Patient.objects.create(org_id=org.id, user=portal_user, **record))
    return clinic


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    """The database exists and is migrated (make test); seed the clinics every test shares, committed."""
    with django_db_blocker.unblock():
        clinics = SimpleNamespace(
            alpha=_make_clinic("alpha"),
            beta=_make_clinic("beta"),
            gamma=_make_clinic("gamma", require_mfa=True),
        )
    return clinics


@pytest.fixture
def clinics(django_db_setup, db):
    return django_db_setup


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    """Each test starts with no unwrapped key in memory (a key made in a rolled-back test must not linger)."""
    from tenancy.services import forget_organization

    keyring.purge()
    forget_organization()
    yield
    keyring.purge()
    forget_organization()


@pytest.fixture
def alpha(clinics) -> Clinic:
    return clinics.alpha


@pytest.fixture
def beta(clinics) -> Clinic:
    return clinics.beta


class Api:
    """A JSON client bound to one portal host."""

    def __init__(self, host: str, enforce_csrf_checks: bool = False):
        self.host = host
        self.client = Client(HTTP_HOST=host, enforce_csrf_checks=enforce_csrf_checks)
        self.headers: dict[str, str] = {}

    def _call(self, method: str, path: str, body=None, **headers):
        kwargs = {"headers": {**self.headers, **headers}}
        if body is not None:
            kwargs["data"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        return getattr(self.client, method)(path, **kwargs)

    def get(self, path, **headers):
        return self._call("get", path, **headers)

    def post(self, path, body=None, **headers):
        return self._call("post", path, body if body is not None else {}, **headers)

    def patch(self, path, body=None, **headers):
        return self._call("patch", path, body, **headers)

    def delete(self, path, body=None, **headers):
        return self._call("delete", path, body, **headers)

    def sign_in_token(self, email: str, password: str = PASSWORD) -> str:
        response = self.post("/api/v1/auth/tokens", {"email": email, "password": password})
        assert response.status_code == 201, response.content
        token = response.json()["token"]
        self.headers["Authorization"] = f"Bearer {token}"
        return token


@pytest.fixture
def api():
    return Api


def runtime_conninfo() -> str:
    """A fresh connection as the runtime role, outside Django: what an attacker with SQL would hold."""
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
    )


def owner_conninfo() -> str:
    db = settings.DATABASES["owner"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
    )


@pytest.fixture
def raw_runtime():
    with psycopg.connect(runtime_conninfo()) as conn:
        yield conn


def in_context(org, role="org_admin", **kwargs):
    return tenant_context(org_id=org.id, role=role, **kwargs)


__all__ = [
    "PASSWORD",
    "Api",
    "Clinic",
    "in_context",
    "owner_conninfo",
    "platform_context",
    "runtime_conninfo",
]
