"""Schemathesis over the OpenAPI schema, with all its checks: the schema tells the truth.

Every operation in /api/v1/schema/ is called in-process through Django's WSGI application, on alpha's host,
signed in with a bearer token as each role (practitioner on a patient's care team, front-desk staff, a patient
with a record, the administrator, the auditor), and every response goes through schemathesis's default checks:
no 5xx; every status code, content type, header and body is the one the schema documents; data the schema calls
valid is accepted (2xx, or the documented 401/403/404/409), data it calls invalid is refused; an operation that
declares authentication refuses a request without it; an undeclared method answers 405 with an Allow header.
Every 4xx and 5xx must also be in the project's one error shape.

Two runs: the fuzzing phase (random positive and negative data per operation and role), and the coverage phase
(boundary values, missing and unexpected fields, wrong types, undeclared methods and content types) once per
operation as a role that reaches it. Path and body ids are drawn from schemathesis's own values and from real
objects in alpha and in beta, so calls reach the loaders, the state rules and the cross-organization answers,
not only the 404 for a random uuid. Each call runs in a savepoint that is rolled back afterwards: no example
sees another's writes (a revoked token, a signed note, a locked account).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)

from tests.clinic.test_cross_org import build_world

pytestmark = pytest.mark.django_db

# Examples per operation, role and mode; FUZZ_SCALE=10 for a longer hunt by hand. The whole file stays within a
# few minutes on a 2-core CI machine at scale 1.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: int(12 * SCALE), GenerationMode.NEGATIVE: int(6 * SCALE)}
# The purposes each role signs requests with (its usual one first); the generated header is sometimes kept too.
ROLES = {
    "practitioner": ["treatment", "emergency"],
    "staff": ["operations"],
    "patient": ["treatment"],
    "org_admin": ["operations", "analytics"],
    "auditor": ["audit"],
}
# Rules on a field that JSON Schema cannot state, by operation: a value the schema calls valid may be refused with
# 400 naming only these fields, and positive_data_acceptance does not count that refusal (every other check
# still runs, and a 400 naming any other field still fails). Each entry says why the schema cannot say it.
RELATIVE_TO_NOW = (
    "must lie after now: a bound relative to the current time, which `format: date-time` cannot state"
)
IS_A_PRACTITIONER = (
    "must be a practitioner's membership id: a fact about the row it names, not about the value"
)
INEXPRESSIBLE = {
    "POST /api/v1/patients": {
        "birth_date": "not in the future (and not before 1900): JSON Schema cannot bound a `format: date`",
    },
    "PATCH /api/v1/patients/{patient_id}": {
        "birth_date": "not in the future (and not before 1900): JSON Schema cannot bound a `format: date`",
    },
    "POST /api/v1/patients/{patient_id}/consents": {"until": RELATIVE_TO_NOW},
    "POST /api/v1/patients/{patient_id}/care-team": {
        "until": RELATIVE_TO_NOW,
        "practitioner": IS_A_PRACTITIONER,
    },
    "POST /api/v1/encounters": {"practitioner": IS_A_PRACTITIONER},
    "POST /api/v1/break-glass": {
        "reason": "at least 10 visible characters (not spaces, controls or invisible format characters): Unicode "
        "categories, which the regular expressions of JSON Schema cannot name",
    },
    "POST /api/v1/invitations/accept": {
        "password": "Django's password validators (not common, not all digits, not like the email address)",
    },
}
# Body fields that carry ids, and the objects whose ids they take.
BODY_IDS = {"patient": "patient", "practitioner": "practitioner"}
PATH_IDS = {
    "patient_id": ("patient",),
    "member_id": ("member",),
    "consent_id": ("consent",),
    "encounter_id": ("encounter", "planned"),
    "note_id": ("signed", "draft"),
    "grant_id": ("grant",),
    "membership_id": ("practitioner",),
}


@contextmanager
def in_process(app):
    """Django's WSGI handler called in the test's thread, so each request is a savepoint of the test's
    transaction. As Django's test client does, the request signals stop closing the connection meanwhile
    (that would end the test's transaction); the test client reconnects them after each of its own calls."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield app
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def check_error_shape(response) -> str | None:
    if not 400 <= response.status_code < 600:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"{response.status_code} is not JSON: {response.content[:200]!r}"
    if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)):
        return f"{response.status_code} body is not {{'error': ...}}: {body!r}"[:400]
    error = body["error"]
    if set(error) != {"code", "message", "fields"}:
        return f"{response.status_code} error keys {sorted(error)}"
    if not (isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]):
        return f"{response.status_code} error code/message not strings: {error!r}"[:400]
    if not isinstance(error["fields"], dict):
        return f"{response.status_code} error fields not an object: {error!r}"[:400]
    return None


def describe(case, response) -> str:
    body = "" if case.body is None or type(case.body).__name__ == "NotSet" else repr(case.body)[:300]
    headers = {k: v for k, v in (case.headers or {}).items() if k != "Authorization"}
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} headers={headers!r} "
        f"body={body} -> {response.status_code if response is not None else '-'} "
        f"{(response.content[:300] if response is not None else b'')!r}"
    )


def summary(exc: BaseException) -> str:
    """The kinds of failure schemathesis reports ("Response violates schema", ...), for grouping."""
    found = re.findall(r"^- (.+)$", str(exc), flags=re.MULTILINE)
    return "; ".join(sorted(set(found))) or f"{type(exc).__name__}: {str(exc)[:200]}"


def refused_for_inexpressible_rule(label: str, response) -> bool:
    if response.status_code != 400 or label not in INEXPRESSIBLE:
        return False
    fields = json.loads(response.content)["error"]["fields"]
    return bool(fields) and set(fields) <= set(INEXPRESSIBLE[label])


@dataclass
class Run:
    """One test's callers, the real ids they may use, and what the calls found."""

    host: str
    tokens: dict[str, str]  # role -> bearer token
    known: dict[str, list]  # object name -> [alpha's id, beta's id]
    problems: dict[tuple, list[str]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    # Operations (per role) where ignored_auth already saw a 2xx refused without the token: like schemathesis's
    # own runner, it probes each operation once, not after every success.
    auth_probed: set[tuple[str, str]] = field(default_factory=set)

    def call(self, case, role: str, kind: str):
        """Send one case as `role` in a rolled-back savepoint, run every default check, record what fails."""
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        base_url = f"http://{self.host}"
        key = (case.operation.label, role, kind)
        excluded = [ignored_auth] if (case.operation.label, role) in self.auth_probed else []
        response = None
        try:
            with transaction.atomic():
                try:
                    response = case.call(base_url=base_url, headers=headers)
                    self.statuses[response.status_code] += 1
                    if problem := check_error_shape(response):
                        self.problems.setdefault((*key, "error shape"), []).append(
                            f"{describe(case, response)}: {problem}"
                        )
                    if refused_for_inexpressible_rule(case.operation.label, response):
                        excluded.append(positive_data_acceptance)
                    if any(isinstance(value, dict) for value in (case.query or {}).values()):
                        # The WSGI transport (werkzeug) sends an object-valued query parameter as its Python
                        # repr: one plain string, which the schema allows, so accepting it is right.
                        excluded.append(negative_data_rejection)
                    # Inside the savepoint: ignored_auth re-sends the request without the token.
                    case.validate_response(
                        response,
                        headers=headers,
                        excluded_checks=excluded,
                        transport_kwargs={"base_url": base_url},
                    )
                    if 200 <= response.status_code < 300:
                        self.auth_probed.add((case.operation.label, role))
                finally:
                    transaction.set_rollback(True)  # the next call starts from the same state
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is an exception group
            self.problems.setdefault((*key, summary(exc)), []).append(
                f"{describe(case, response)}\n{exc}"[:3000]
            )
        return response

    def report(self, started: float, at_least_2xx: int) -> None:
        elapsed = time.monotonic() - started
        print(
            f"schemathesis: {sum(self.statuses.values())} calls in {elapsed:.0f}s, "
            f"statuses {dict(sorted(self.statuses.items()))}"
        )
        lines = [
            f"{label} [{role} {kind}] {what}: {len(examples)}x, e.g. {examples[0]}"
            for (label, role, kind, what), examples in sorted(self.problems.items())
        ]
        assert not self.problems, f"{len(self.problems)} kinds of problem:\n" + "\n\n".join(lines)
        assert self.statuses[200] + self.statuses[201] + self.statuses[204] >= at_least_2xx, self.statuses


@pytest.fixture
def run(api, alpha, beta):
    mine, theirs = build_world(alpha, "alpha"), build_world(beta, "beta")
    known = {name: [getattr(mine, name).pk, getattr(theirs, name).pk] for name in mine.ids()}
    tokens = {role: api(alpha.host).sign_in_token(alpha.email(role)) for role in ROLES}
    return Run(alpha.host, tokens, known)


@pytest.fixture
def schema(run):
    # After `run`: its sign-ins use Django's test client, which reconnects the signals in_process disconnects.
    with in_process(get_wsgi_application()) as app:
        loaded = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", app)
        operations = [result.ok() for result in loaded.get_all_operations()]
        assert len(operations) > 40, [op.label for op in operations]
        yield loaded


def with_real_ids(case, data, known: dict) -> None:
    """Swap generated ids for real ones some of the time (reassigned, so schemathesis revalidates the case)."""
    params = dict(case.path_parameters or {})
    for name, objects in PATH_IDS.items():
        if name in params and data.draw(st.booleans()):
            obj = data.draw(st.sampled_from(objects))
            params[name] = str(data.draw(st.sampled_from(known[obj])))
    if params:
        case.path_parameters = params
    if isinstance(case.body, dict):
        body = dict(case.body)
        for name, obj in BODY_IDS.items():
            if name in body and data.draw(st.booleans()):
                body[name] = str(data.draw(st.sampled_from(known[obj])))
        case.body = body


def fuzz(run: Run, operation, role: str, mode, examples: int) -> None:
    """Up to `examples` generated calls to one operation as one role; failures are collected, not raised
    (no shrinking: the first report of each is enough, and the run stays bounded)."""
    strategy = operation.as_strategy(generation_mode=mode)
    purposes = ROLES[role]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def calls(data):
        case = data.draw(strategy)
        with_real_ids(case, data, run.known)
        generated = (case.headers or {}).get("X-Purpose-Of-Use")
        purpose = data.draw(st.sampled_from([*purposes, purposes[0], generated]))
        if purpose is not None:
            case.headers = {**(case.headers or {}), "X-Purpose-Of-Use": purpose}
        run.call(case, role, str(mode))

    try:
        calls()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to negate (no parameters, no body).
        assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.parametrize("role", list(ROLES))
def test_every_operation_keeps_to_its_schema_under_fuzzing(run, schema, role):
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():
            fuzz(run, operation, role, mode, examples)
    # Each role reaches real data somewhere: the fuzz is not only bouncing off 403 and 404.
    run.report(started, at_least_2xx=20)


def reaching_role(run: Run, case) -> str:
    """The first role the operation does not refuse outright, so the coverage cases reach its validation."""
    # The role's usual purpose, not the generated one (which most roles may not act for).
    probe = case.derive(
        headers={k: v for k, v in (case.headers or {}).items() if k.lower() != "x-purpose-of-use"}
    )
    for role in ROLES:
        headers = {"Authorization": f"Bearer {run.tokens[role]}"}
        with transaction.atomic():
            status = probe.call(base_url=f"http://{run.host}", headers=headers).status_code
            transaction.set_rollback(True)
        if status not in (401, 403):
            return role
    return next(iter(ROLES))


def real_path_ids(case, known: dict, turn: int) -> None:
    """Well-formed generated path ids become real ones (alpha's or beta's, in turn); malformed ones stay."""
    params = dict(case.path_parameters or {})
    for name, objects in PATH_IDS.items():
        value = params.get(name)
        try:
            uuid.UUID(str(value))
        except ValueError:
            continue
        obj = objects[turn % len(objects)]
        params[name] = str(known[obj][(turn // len(objects)) % 2])
    if params:
        case.path_parameters = params


def test_every_operation_keeps_to_its_schema_in_the_coverage_phase(run, schema):
    """Boundary values, each required field missing, unknown fields, wrong types, undeclared methods (405 with
    Allow) and content types: schemathesis's deterministic cases, once per operation."""
    started = time.monotonic()
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for result in schema.get_all_operations():
        operation = result.ok()
        config = schema.config.generation_for(operation=operation, phase="coverage")
        cases = list(schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config))
        assert cases, operation.label
        positive = [
            c
            for c in cases
            if c.meta.generation.mode.is_positive and c.method.lower() == operation.method.lower()
        ]
        role = reaching_role(run, (positive or cases)[0])
        for turn, case in enumerate(cases):
            real_path_ids(case, run.known, turn)
            run.call(case, role, "coverage")
    run.report(started, at_least_2xx=60)
