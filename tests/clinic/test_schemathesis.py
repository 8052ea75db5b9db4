"""Schemathesis over the OpenAPI schema: no operation answers 5xx, every 4xx is in the one error shape, and what
the schema declares (status bodies, content types) is what the server sends.

Every operation in /api/v1/schema/ is fuzzed in-process through Django's WSGI application, on alpha's host,
signed in with a bearer token as each role that reaches clinical code (a practitioner on a patient's care
team, front-desk staff, a patient with a record, the administrator), with positive and negative data. Path and
body ids are drawn from schemathesis's own values and from real objects in alpha and in beta, so the fuzz
reaches the loaders, the state rules and the cross-organization answers, not only the 404 for a random uuid.
Each call runs in a savepoint that is rolled back afterwards: no example sees another's writes (a revoked
token, a signed note, a locked account).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from contextlib import contextmanager

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.clinic.test_cross_org import build_world

pytestmark = pytest.mark.django_db

# Examples per operation, role and mode; FUZZ_SCALE=10 for a longer hunt by hand.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: int(20 * SCALE), GenerationMode.NEGATIVE: int(8 * SCALE)}
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# The purposes each role signs requests with (its usual one first); the generated header is sometimes kept too.
ROLES = {
    "practitioner": ["treatment", "emergency"],
    "staff": ["operations"],
    "patient": ["treatment"],
    "org_admin": ["operations", "analytics"],
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
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} headers={ {k: v for k, v in (case.headers or {}).items() if k != 'Authorization'}!r} "
        f"body={body} -> {response.status_code if response is not None else '-'} "
        f"{(response.content[:300] if response is not None else b'')!r}"
    )


def summary(exc: BaseException) -> str:
    """The kinds of failure schemathesis reports ("ST108 Response violates schema", ...), for grouping."""
    found = re.findall(r"^- (.+)$", str(exc), flags=re.MULTILINE)
    return "; ".join(sorted(set(found))) or f"{type(exc).__name__}: {str(exc)[:200]}"


def fuzz(
    operation,
    mode,
    examples: int,
    *,
    host: str,
    token: str,
    purposes: list[str],
    known: dict,
    problems: dict,
    statuses: Counter,
):
    """Up to `examples` generated calls to one operation as one caller; failures are collected, not raised
    (no shrinking: the first report of each is enough, and the run stays bounded)."""
    strategy = operation.as_strategy(generation_mode=mode)
    checks = CHECKS if mode is GenerationMode.POSITIVE else [not_a_server_error]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        case = data.draw(strategy)
        for name, objects in PATH_IDS.items():
            if name in (case.path_parameters or {}) and data.draw(st.booleans()):
                obj = data.draw(st.sampled_from(objects))
                case.path_parameters[name] = str(data.draw(st.sampled_from(known[obj])))
        if isinstance(case.body, dict):
            for field, obj in BODY_IDS.items():
                if field in case.body and data.draw(st.booleans()):
                    case.body[field] = str(data.draw(st.sampled_from(known[obj])))
        generated = (case.headers or {}).get("X-Purpose-Of-Use")
        purpose = data.draw(st.sampled_from([*purposes, purposes[0], generated]))
        if purpose is not None:
            case.headers = {**(case.headers or {}), "X-Purpose-Of-Use": purpose}
        headers = {"Authorization": f"Bearer {token}"}
        response = None
        key = (operation.label, str(mode))
        try:
            with transaction.atomic():
                response = case.call(base_url=f"http://{host}", headers=headers)
                transaction.set_rollback(True)  # the next example starts from the same state
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                problems.setdefault((*key, f"{response.status_code}"), []).append(describe(case, response))
            if problem := check_error_shape(response):
                problems.setdefault((*key, "error shape"), []).append(
                    f"{describe(case, response)}: {problem}"
                )
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is an exception group
            problems.setdefault((*key, summary(exc)), []).append(f"{describe(case, response)}\n{exc}"[:3000])

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to negate (no parameters, no body).
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_no_operation_answers_5xx_and_errors_have_one_shape(api, alpha, beta):
    mine, theirs = build_world(alpha, "alpha"), build_world(beta, "beta")
    known = {name: [getattr(mine, name).pk, getattr(theirs, name).pk] for name in mine.ids()}
    tokens = {}
    for role, purposes in ROLES.items():
        tokens[role] = (api(alpha.host).sign_in_token(alpha.email(role)), purposes)

    with in_process(get_wsgi_application()) as app:
        schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", app)
        run_all(schema, alpha.host, tokens, known)


def run_all(schema, host: str, tokens: dict, known: dict) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40, [op.label for op in operations]

    problems: dict[tuple, list[str]] = {}
    statuses: Counter = Counter()
    started = time.monotonic()
    for operation in operations:
        for token, purposes in tokens.values():
            for mode, examples in EXAMPLES.items():
                fuzz(
                    operation,
                    mode,
                    examples,
                    host=host,
                    token=token,
                    purposes=purposes,
                    known=known,
                    problems=problems,
                    statuses=statuses,
                )
    elapsed = time.monotonic() - started
    print(
        f"schemathesis: {sum(statuses.values())} calls in {elapsed:.0f}s, statuses {dict(sorted(statuses.items()))}"
    )
    report = [
        f"{label} [{mode}] {kind}: {len(examples)}x, e.g. {examples[0]}"
        for (label, mode, kind), examples in sorted(problems.items())
    ]
    assert not problems, f"{len(problems)} kinds of problem:\n" + "\n\n".join(report)
    assert statuses[200] + statuses[201] > 100, statuses
