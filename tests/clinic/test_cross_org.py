"""Every clinic endpoint, tried with ids outside the caller's scope: the answer is what an id that exists
nowhere gets (404, or the role's own refusal of the endpoint), never a 403 for the object, never a 5xx.

Two identical worlds are built with clinic.services under a platform context, one in alpha and one in beta:
a patient (with a portal user), the practitioner on their care team, a consent, an encounter in progress and a
planned one, a signed and a draft note, and an open break-glass. Alpha's practitioner, staff, patient and
administrator then call every route in clinic/urls.py with beta's ids in the path, in the body and in the
filters; an alpha practitioner with no care relationship does the same with alpha's own ids. Beta's rows are
hashed before and after: nothing there changes.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from dataclasses import dataclass

import pytest
from django.urls import URLPattern
from django.utils import timezone

from clinic import services
from clinic import urls as clinic_urls
from clinic.models import (
    BreakGlass,
    CareTeamMember,
    ClinicalNote,
    Consent,
    ConsentEvent,
    Encounter,
    EncounterEvent,
    Patient,
    PractitionerProfile,
)
from tenancy.context import tenant_context
from tenancy.models import Membership
from tenancy.services import ensure_member
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

CLINIC_MODELS = [
    Patient,
    PractitionerProfile,
    CareTeamMember,
    Consent,
    ConsentEvent,
    Encounter,
    EncounterEvent,
    ClinicalNote,
    BreakGlass,
]
METHODS = ["get", "post", "patch", "put", "delete"]
ROLE_REFUSALS = {"permission_denied", "method_not_allowed"}  # the same for every id: not about the object


@dataclass
class World:
    """One organization's clinical objects, all belonging to `patient`."""

    tag: str
    org: object
    practitioner: Membership  # on the patient's care team
    patient: Patient
    member: CareTeamMember
    consent: Consent
    encounter: Encounter  # in progress
    planned: Encounter
    signed: ClinicalNote
    draft: ClinicalNote
    grant: BreakGlass
    plaintext: tuple[str, ...]  # values that must never show up in another organization's answers

    def ids(self) -> dict[str, str]:
        return {
            "patient": str(self.patient.pk),
            "member": str(self.member.pk),
            "consent": str(self.consent.pk),
            "encounter": str(self.encounter.pk),
            "planned": str(self.planned.pk),
            "signed": str(self.signed.pk),
            "draft": str(self.draft.pk),
            "grant": str(self.grant.pk),
            "practitioner": str(self.practitioner.pk),
        }


def build_world(clinic, tag: str) -> World:
    org = clinic.org
    staff, doctor = clinic.membership("staff"), clinic.membership("practitioner")
    values = {
        "given_name": f"Crossgiven{tag.title()}",
        "family_name": f"Crossfamily{tag.title()}",
        "birth_date": datetime.date(1970, 1, 2),
        "email": f"cross.{tag}@patients.test",
        "phone": f"+1-555-{tag}",
        "address": {"line": f"1 {tag.title()} Lane"},
        "health_card_number": f"CROSS-{tag.upper()}-0001",
    }
    with tenant_context(org_id=org.id, role="platform", purpose="treatment"):
        patient = services.register_patient(actor=staff, data=values)
        Patient.objects.filter(pk=patient.pk).update(user=clinic.user("patient"))
        member = services.assign_care_team(patient=patient, practitioner=doctor, actor=staff)
        consent = services.grant_consent(patient=patient, purpose="treatment", actor=staff)
        encounter = services.schedule_encounter(
            patient=patient,
            practitioner=doctor,
            scheduled_at=timezone.now(),
            reason=f"cross reason {tag}",
            actor=staff,
        )
        encounter = services.transition_encounter(encounter=encounter, action="start", actor=doctor)
        planned = services.schedule_encounter(
            patient=patient,
            practitioner=doctor,
            scheduled_at=timezone.now() + datetime.timedelta(days=3),
            reason=f"cross follow-up {tag}",
            actor=staff,
        )
        signed = services.create_note(encounter=encounter, body=f"cross signed note {tag}", author=doctor)
        signed = services.sign_note(note=signed, actor=doctor)
        draft = services.create_note(encounter=encounter, body=f"cross draft note {tag}", author=doctor)
    with tenant_context(org_id=org.id, role="platform", purpose="emergency"):
        grant = services.open_break_glass(
            patient_id=patient.pk, reason=f"cross emergency {tag} collapsed", actor=doctor
        )
    plaintext = (
        values["given_name"],
        values["family_name"],
        values["email"],
        values["health_card_number"],
        f"cross reason {tag}",
        f"cross signed note {tag}",
        f"cross draft note {tag}",
        f"cross emergency {tag}",
    )
    return World(
        tag, org, doctor, patient, member, consent, encounter, planned, signed, draft, grant, plaintext
    )


def snapshot(world: World) -> dict:
    """Every clinic row of the organization and the hash of its state, read under its platform context."""
    with tenant_context(org_id=world.org.id, role="platform", purpose="treatment"):
        return {
            model.__name__: {str(row.pk): services.state_hash(row) for row in model.objects.all()}
            for model in CLINIC_MODELS
        }


@pytest.fixture
def worlds(alpha, beta):
    mine, theirs = build_world(alpha, "alpha"), build_world(beta, "beta")
    before = snapshot(theirs)
    yield mine, theirs
    after = snapshot(theirs)
    assert after == before, "a request made in alpha changed beta's rows"


def signed_in(api, clinic, email: str, purpose: str | None = None):
    client = api(clinic.host)
    client.sign_in_token(email)
    if purpose:
        client.headers["X-Purpose-Of-Use"] = purpose
    return client


# -- the battery --------------------------------------------------------------------------------------

# Which of a world's objects each path parameter takes; two choices give two calls.
PARAMETER_OBJECTS = {
    "patient_id": ["patient"],
    "member_id": ["member"],
    "consent_id": ["consent"],
    "encounter_id": ["encounter", "planned"],
    "note_id": ["signed", "draft"],
    "grant_id": ["grant"],
}


def routes() -> list[tuple[str, str]]:
    found = []
    for pattern in clinic_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        found.append((pattern.name, "/api/v1/" + str(pattern.pattern)))
    return found


def bodies(name: str, mine: dict) -> list[dict]:
    """Valid bodies for a route, so that the request gets as far as the object lookup."""
    return {
        "care-team": [{"practitioner": mine["practitioner"]}],
        "consent-list": [{"purpose": "research", "note": "cross-org"}],
        "consent-withdraw": [{"note": "cross-org"}],
        "patient-detail": [{"phone": "+1-555-0000"}],
        "encounter-notes": [{"body": "cross-org note"}],
        "note-detail": [{"body": "cross-org edit"}],
        "note-amend": [{"body": "cross-org amendment"}],
    }.get(name, [{}])


def id_calls(
    target: dict, mine: dict, break_glass: bool = True
) -> list[tuple[str, str, str, dict | None, dict]]:
    """(label, method, path, body, headers) for every route and method, `target`'s ids substituted."""
    calls = []
    for name, route in routes():
        parameters = re.findall(r"<uuid:(\w+)>", route)
        if not parameters:
            continue
        # All of target's ids; and, for nested routes, mine for the parent and target's for the child.
        choices: list[list[tuple[str, str]]] = [[]]
        for parameter in parameters:
            choices = [[*c, (parameter, obj)] for c in choices for obj in PARAMETER_OBJECTS[parameter]]
        variants = []
        for choice in choices:
            variants.append({p: target[obj] for p, obj in choice})
            if len(choice) > 1:
                variants.append(
                    {**{p: mine[obj] for p, obj in choice[:-1]}, choice[-1][0]: target[choice[-1][1]]}
                )
        for values in variants:
            path = re.sub(r"<uuid:(\w+)>", lambda m, v=values: v[m.group(1)], route)
            for method in METHODS:
                for body in bodies(name, mine) if method != "get" else [None]:
                    calls.append((f"{name} {method.upper()} {path}", method, path, body, {}))
    # Ids that travel in the body.
    later = (timezone.now() + datetime.timedelta(days=7)).isoformat()
    for patient, practitioner in (
        (target["patient"], mine["practitioner"]),
        (mine["patient"], target["practitioner"]),
        (target["patient"], target["practitioner"]),
    ):
        body = {"patient": patient, "practitioner": practitioner, "scheduled_at": later, "reason": "cross"}
        calls.append(("schedule an encounter", "post", "/api/v1/encounters", body, {}))
    calls.append(
        (
            "care team: add a practitioner",
            "post",
            f"/api/v1/patients/{mine['patient']}/care-team",
            {"practitioner": target["practitioner"], "role": "consulting"},
            {},
        )
    )
    if not break_glass:
        return calls
    calls.append(
        (
            "break-glass",
            "post",
            "/api/v1/break-glass",
            {"patient": target["patient"], "reason": "Unresponsive in the waiting room", "minutes": 30},
            {"X-Purpose-Of-Use": "emergency"},
        )
    )
    return calls


def filter_calls(target: dict, theirs: World) -> list[tuple[str, str]]:
    """(label, path) of list endpoints filtered on `target`'s objects: an empty page, whoever asks."""
    email, card = theirs.plaintext[2], theirs.plaintext[3]
    return [
        ("patients by email", f"/api/v1/patients?email={email}"),
        ("patients by health card", f"/api/v1/patients?health_card_number={card}"),
        ("patients by both", f"/api/v1/patients?email={email}&health_card_number={card}"),
        ("encounters of a patient", f"/api/v1/encounters?patient={target['patient']}"),
        ("encounters in progress", f"/api/v1/encounters?patient={target['patient']}&status=in-progress"),
        (
            "encounters to document",
            f"/api/v1/encounters?patient={target['patient']}&documentation_required=false",
        ),
    ]


def send(client, method: str, path: str, body, headers: dict):
    if method == "get":
        return client.get(path, **headers)
    return client._call(method, path, body if body is not None else {}, **headers)


def nowhere(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def check_error_shape(response, context: str) -> dict:
    assert response["Content-Type"].startswith("application/json"), (context, response["Content-Type"])
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, (context, body)
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}, (context, body)
    assert isinstance(error["code"], str) and error["code"], (context, body)
    assert isinstance(error["message"], str) and error["message"], (context, body)
    assert isinstance(error["fields"], dict), (context, body)
    return body


def leaks(response, theirs: World) -> list[str]:
    text = response.content.decode(errors="replace")
    found = [value for value in theirs.ids().values() if value in text]
    return found + [value for value in theirs.plaintext if value.lower() in text.lower()]


def run_battery(
    client, own: dict, theirs: World, break_glass: bool = True
) -> tuple[list[str], dict[int, int]]:
    """Every id call with `theirs`'s ids and with ids that exist nowhere: same answer, 404 or the role's own
    refusal of the endpoint, an error in the one shape, and nothing of theirs in it. `own` are the caller's
    ids, for the parent of a nested route and for the caller's side of a body."""
    target = theirs.ids()
    replacements = {value: str(uuid.uuid4()) for value in target.values() if value not in own.values()}
    problems: list[str] = []
    statuses: dict[int, int] = {}
    for label, method, path, body, headers in id_calls(target, own, break_glass):
        response = send(client, method, path, body, headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        context = f"{label} {json.dumps(body) if body else ''}"
        if response.status_code >= 500:
            problems.append(f"{context}: {response.status_code} {response.content[:300]!r}")
            continue
        if response.status_code not in (403, 404, 405):
            problems.append(f"{context}: {response.status_code} {response.content[:300]!r}")
            continue
        try:
            error = check_error_shape(response, context)["error"]
        except AssertionError as exc:
            problems.append(f"{context}: bad error shape {exc}")
            continue
        if response.status_code == 403 and error["code"] not in ROLE_REFUSALS:
            problems.append(f"{context}: 403 {error['code']} (an object-scope refusal)")
        if found := leaks(response, theirs):
            problems.append(f"{context}: answer mentions {found}")
        other_body = json.loads(nowhere(json.dumps(body), replacements)) if body is not None else None
        other = send(client, method, nowhere(path, replacements), other_body, headers)
        if (other.status_code, other.content) != (response.status_code, response.content):
            problems.append(
                f"{context}: {response.status_code} {response.content[:200]!r} but an id that exists nowhere "
                f"gets {other.status_code} {other.content[:200]!r}"
            )
    return problems, statuses


def run_filters(client, theirs: World, target: dict, context_label: str) -> list[str]:
    problems = []
    for label, path in filter_calls(target, theirs):
        response = client.get(path)
        context = f"{context_label}: {label} {path}"
        if response.status_code == 403:
            error = check_error_shape(response, context)["error"]
            if error["code"] not in ROLE_REFUSALS:
                problems.append(f"{context}: 403 {error['code']}")
            continue
        if response.status_code != 200:
            problems.append(f"{context}: {response.status_code} {response.content[:300]!r}")
            continue
        if response.json()["results"] != []:
            problems.append(f"{context}: {response.json()['results']!r}")
        if found := leaks(response, theirs):
            problems.append(f"{context}: answer mentions {found}")
    return problems


ALPHA_CALLERS = {
    # role: the purpose it signs in for
    "practitioner": "treatment",
    "staff": "operations",
    "patient": "treatment",
    "org_admin": "operations",
}


@pytest.mark.parametrize("role", list(ALPHA_CALLERS))
def test_betas_ids_on_every_endpoint_are_not_found_for_every_alpha_role(api, alpha, worlds, role):
    mine, theirs = worlds
    client = signed_in(api, alpha, alpha.email(role), ALPHA_CALLERS[role])
    problems, statuses = run_battery(client, mine.ids(), theirs)
    problems += run_filters(client, theirs, theirs.ids(), role)
    assert not problems, "\n".join(problems)
    if role != "org_admin":  # the administrator is refused most clinical endpoints outright
        assert statuses.get(404, 0) > 20, statuses


def test_the_battery_reaches_alphas_own_objects(api, alpha, worlds):
    """The control: the same calls with alpha's ids are answered, so the 404s above are about scope."""
    mine, _ = worlds
    client = signed_in(api, alpha, alpha.email("practitioner"), "treatment")
    ids = mine.ids()
    for path in (
        f"/api/v1/patients/{ids['patient']}",
        f"/api/v1/patients/{ids['patient']}/care-team",
        f"/api/v1/patients/{ids['patient']}/consents",
        f"/api/v1/patients/{ids['patient']}/consents/{ids['consent']}/history",
        f"/api/v1/encounters/{ids['encounter']}",
        f"/api/v1/encounters/{ids['encounter']}/timeline",
        f"/api/v1/encounters/{ids['encounter']}/notes",
        f"/api/v1/notes/{ids['signed']}",
        f"/api/v1/notes/{ids['draft']}",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.content)
        assert ids["patient"] in response.content.decode() or path.endswith(("/history", "/timeline")), path
    listing = client.get(f"/api/v1/encounters?patient={ids['patient']}").json()["results"]
    assert {row["id"] for row in listing} == {ids["encounter"], ids["planned"]}
    email = mine.plaintext[2]
    assert [row["id"] for row in client.get(f"/api/v1/patients?email={email}").json()["results"]] == [
        ids["patient"]
    ]
    patient = signed_in(api, alpha, alpha.email("patient"), "treatment")
    assert patient.get(f"/api/v1/patients/{ids['patient']}").status_code == 200
    assert patient.get(f"/api/v1/notes/{ids['signed']}").status_code == 200
    staff = signed_in(api, alpha, alpha.email("staff"))
    assert staff.get(f"/api/v1/patients/{ids['patient']}").status_code == 200
    admin = signed_in(api, alpha, alpha.email("org_admin"))
    assert admin.get(f"/api/v1/patients/{ids['patient']}/care-team").status_code == 200


@pytest.mark.parametrize("role", list(ALPHA_CALLERS))
def test_unfiltered_lists_show_nothing_of_beta(api, alpha, worlds, role):
    mine, theirs = worlds
    client = signed_in(api, alpha, alpha.email(role), ALPHA_CALLERS[role])
    paths = [
        "/api/v1/patients",
        "/api/v1/encounters",
        "/api/v1/encounters?status=in-progress",
        "/api/v1/break-glass",
        f"/api/v1/patients/{mine.patient.pk}/care-team",
        f"/api/v1/patients/{mine.patient.pk}/consents",
        f"/api/v1/encounters/{mine.encounter.pk}/notes",
        f"/api/v1/encounters/{mine.encounter.pk}/timeline",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code < 500, (path, response.content)
        if response.status_code >= 400:
            check_error_shape(response, path)
        assert not leaks(response, theirs), (path, leaks(response, theirs))


def test_betas_id_in_a_report_request_changes_nothing(api, alpha, worlds):
    _, theirs = worlds
    admin = signed_in(api, alpha, alpha.email("org_admin"), "analytics")
    plain = admin.get("/api/v1/reports/summary")
    assert plain.status_code == 200, plain.content
    filtered = admin.get(f"/api/v1/reports/summary?patient={theirs.patient.pk}&org={theirs.org.pk}")
    assert filtered.status_code == 200 and filtered.json() == plain.json()
    assert not leaks(plain, theirs)


def test_registering_betas_health_card_in_alpha_is_no_conflict(api, alpha, worlds):
    """Duplicate detection stays inside the organization: a 409 here would confirm beta has the patient."""
    _, theirs = worlds
    staff = signed_in(api, alpha, alpha.email("staff"))
    response = staff.post(
        "/api/v1/patients",
        {
            "given_name": "Other",
            "family_name": "Person",
            "birth_date": "1990-01-01",
            "email": theirs.plaintext[2],
            "health_card_number": theirs.plaintext[3],
        },
    )
    assert response.status_code == 201, response.content


# -- an alpha practitioner with no care relationship --------------------------------------------------


@pytest.fixture
def unassigned(api, alpha):
    with tenant_context(org_id=alpha.org.id, role="platform", purpose="treatment"):
        _, membership, _ = ensure_member(
            org=alpha.org,
            email="unassigned.doctor@alpha.test",
            role="practitioner",
            password=PASSWORD,
            full_name="Dr Unassigned",
        )
    client = signed_in(api, alpha, "unassigned.doctor@alpha.test", "treatment")
    client.membership = membership
    return client


def test_an_unassigned_practitioner_gets_404_for_every_alpha_object(unassigned, worlds, alpha):
    """Same battery, alpha's own ids, a practitioner outside the care relationship. Break-glass is left out:
    opening it on a patient outside one's care is what it is for (tests/clinic/test_access.py)."""
    mine, _ = worlds
    own = {name: str(uuid.uuid4()) for name in mine.ids()} | {"practitioner": str(unassigned.membership.pk)}
    problems, statuses = run_battery(unassigned, own, mine, break_glass=False)
    assert not problems, "\n".join(problems)
    assert statuses.get(404, 0) > 20, statuses


def test_an_unassigned_practitioner_sees_empty_lists(unassigned, worlds, alpha):
    mine, _ = worlds
    for path in (
        "/api/v1/patients",
        "/api/v1/encounters",
        "/api/v1/break-glass",
        f"/api/v1/encounters?patient={mine.patient.pk}",
        f"/api/v1/patients?email={mine.plaintext[2]}",
        f"/api/v1/patients?health_card_number={mine.plaintext[3]}",
    ):
        response = unassigned.get(path)
        assert response.status_code == 200, (path, response.content)
        assert response.json()["results"] == [], (path, response.json())
    for path in (
        f"/api/v1/patients/{mine.patient.pk}",
        f"/api/v1/patients/{mine.patient.pk}/consents",
        f"/api/v1/patients/{mine.patient.pk}/care-team",
        f"/api/v1/encounters/{mine.encounter.pk}/notes",
        f"/api/v1/notes/{mine.signed.pk}",
    ):
        response = unassigned.get(path)
        assert response.status_code == 404, (path, response.status_code, response.content)
        assert check_error_shape(response, path)["error"]["code"] == "not_found"
