"""Benchmark: patient detail and patient list (a page of 50) through the whole stack, against plain Django.

The full stack is the real API (/api/v1/patients, /api/v1/patients/<id>) through Django's test Client and
every middleware: bearer-token authentication, the signed tenant context handed to PostgreSQL twice per
request (signed-out, then the member's), row-level security with the `clinic_treatable_patients()` helper,
AES-GCM decryption of the 7 encrypted fields per patient (data key cached in memory, i.e. warm), and the audit
hook (`record_phi_access`: one event per patient served, its `clinic.phi` log line and whatever the audit
app's listener records for it, in the request's transaction).
The caller is a practitioner under purpose `treatment`, on the care team of every patient of a fresh
organization whose PATIENTS patients (500) and their histories come from the generator (clinic/synthetic.py),
so the policy helper has care teams and encounters to read.

The baseline is the same two endpoints in plain Django (tests/bench/clinic_api_urls.py): an unmanaged model over
`bench_clinic.patient`, a plaintext copy of the same rows (same ids, values and created_at) with no row
security, served by a DRF APIView with an equivalent ModelSerializer and the same cursor pagination of 50; no
tenant context, no authentication and no audit. Both run through the same middleware, the same Client (with
the same headers), each request in its own transaction (ATOMIC_REQUESTS). The data is committed, so requests
begin and commit real transactions, as in production, not savepoints inside a test's transaction.

Variants alternate request by request (same patient, same list page, order rotated), after warm-up rounds;
the garbage collector is paused within a round. Reported to `.bench/clinic_api.json`: requests per second, p50
(median), p95 and p99 per variant, and the full/plain ratios of p50 and p99 (goal: at most 1.3x). A cold-key
figure (keyring purged before each request: one batched Vault unwrap) is reported for reference, with no goal.
Also reported: SQL queries per request, and where the time goes (mean µs per phase: context hand-off,
organization and token lookups, the row-secured query, serialization with decryption, the audit hook, the
rest), timed in a separate pass by wrapping those functions (PHASES).
Not a timed test: it fails only if the two stacks answer differently or a request fails.
BENCH_ROUNDS sets the rounds (of PER_ROUND requests per variant); BENCH_PATIENTS the organization's size;
BENCH_KEEP_DATA=1 keeps the plain table.
"""

from __future__ import annotations

import gc
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from psycopg.types.json import Jsonb
from rest_framework import pagination
from rest_framework import serializers as drf_serializers

import clinic.services
import clinic.services.common
import tenancy.authentication
import tenancy.context
import tenancy.services
from clinic.models import Patient
from clinic.synthetic import generate_patients, quiet_phi_log
from tenancy.context import tenant_context
from tenancy.crypto.keyring import keyring
from tenancy.crypto.vault import app_client
from tenancy.models import Role
from tenancy.services import create_organization, ensure_member, issue_api_token
from tests.bench import clinic_api_urls as plain
from tests.bench.reporting import ratio, report, summarize, tables
from tests.conftest import owner_conninfo

pytestmark = pytest.mark.bench

PATIENTS = int(os.environ.get("BENCH_PATIENTS", "500"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "16"))
PER_ROUND = 20  # requests per variant per round
WARMUP_ROUNDS = 2
COLD_REQUESTS = 30
BREAKDOWN_REQUESTS = 40
GOAL = 1.3
SLUG = "bench-api"
HOST = "bench-api.localhost"
SERIES = 4  # the generator's seed: the same patients and histories on every run
PREFIX = {"full": "/api/v1", "plain": "/plain/v1"}
URLCONF = "tests.bench.clinic_api_urls"


# -- data --------------------------------------------------------------------------------------------------


def _runtime_role() -> str:
    return settings.DATABASES["default"]["USER"]


@pytest.fixture(scope="module")
def bench_clinic(django_db_blocker):
    """A fresh organization with PATIENTS generated patients (committed) and the plaintext copy of them."""
    started = time.monotonic()
    with django_db_blocker.unblock():
        org, _ = create_organization(slug=SLUG, name="Bench API Clinic", domains=[HOST], require_mfa=False)
        with tenant_context(org_id=org.id, role="platform"):
            _, practitioner, _ = ensure_member(
                org=org, email="dr.bench@bench-api.test", role=Role.PRACTITIONER, password=None
            )
            ensure_member(org=org, email="desk@bench-api.test", role=Role.STAFF, password=None)
        with quiet_phi_log():
            generated = generate_patients(
                org_id=org.id,
                count=PATIENTS,
                seed=SERIES,
                batch_size=100,
                practitioner_ids=[practitioner.pk],
            )
        with tenant_context(org_id=org.id, role="platform"):
            token, _ = issue_api_token(membership=practitioner)
            rows = [
                tuple(
                    Jsonb(p.address) if column == "address" else getattr(p, column)
                    for column in plain.COLUMNS
                )
                for p in Patient.objects.all()
            ]
        connection.close()
    with psycopg.connect(owner_conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {plain.SCHEMA} CASCADE")
        conn.execute(plain.CREATE_SQL)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {plain.TABLE} ({', '.join(plain.COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(plain.COLUMNS))})",
                rows,
            )
        conn.execute(f'GRANT USAGE ON SCHEMA {plain.SCHEMA} TO "{_runtime_role()}"')
        conn.execute(f'GRANT SELECT ON {plain.TABLE} TO "{_runtime_role()}"')
        for table in (
            plain.TABLE,
            "clinic_patient",
            "clinic_careteammember",
            "clinic_encounter",
            "clinic_breakglass",
            "tenancy_membership",
            "tenancy_apitoken",
        ):
            conn.execute(f"VACUUM (ANALYZE) {table}")
        info = {
            "org_id": org.id,
            "token": token,
            "patients": len(rows),
            "ids": [row[0] for row in rows],
            "generated": {
                "created": generated.created,
                "existing": generated.existing,
                **generated.tally.counts,
            },
            "setup_seconds": round(time.monotonic() - started, 1),
            "postgresql": conn.execute("SHOW server_version").fetchone()[0],
        }
        yield info
        if os.environ.get("BENCH_KEEP_DATA") != "1":
            conn.execute(f"DROP SCHEMA IF EXISTS {plain.SCHEMA} CASCADE")


# -- requests ----------------------------------------------------------------------------------------------


def relative(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def walk_pages(client: Client, stack: str) -> tuple[list[str], list[list[dict]]]:
    """Every page of the list, as the paths to ask for them and the rows they answered."""
    urls, pages = [], []
    url: str | None = f"{PREFIX[stack]}/patients"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content[:500]
        body = response.json()
        urls.append(url)
        pages.append(body["results"])
        url = relative(body["next"])
    return urls, pages


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figure(samples: list[int]) -> dict:
    """summarize() plus p99 and requests per second (one client, one request at a time)."""
    fig = summarize(samples)
    fig["p99_us"] = round(percentile(samples, 0.99) / 1000, 2)
    fig["requests_per_s"] = round(len(samples) * 1e9 / sum(samples), 1)
    return fig


Variant = Callable[[str, int], int]


def interleaved(variants: dict[str, Variant], ids: list, n_pages: int, seed: int, failures: list) -> dict:
    rng = random.Random(seed)
    names = list(variants)
    kept: dict[str, list[int]] = defaultdict(list)
    for rnd in range(WARMUP_ROUNDS + ROUNDS):
        into: dict[str, list[int]] = kept if rnd >= WARMUP_ROUNDS else defaultdict(list)
        gc.collect()
        gc.disable()
        try:
            for i in range(PER_ROUND):
                patient_id, page = str(rng.choice(ids)), rng.randrange(n_pages)
                shift = (rnd + i) % len(names)
                for name in names[shift:] + names[:shift]:
                    t0 = time.perf_counter_ns()
                    status = variants[name](patient_id, page)
                    into[name].append(time.perf_counter_ns() - t0)
                    if status != 200:
                        failures.append((name, patient_id, page, status))
        finally:
            gc.enable()
    return kept


# Where a request's time goes: (module or class, attribute, phase). Timed in a separate pass, after the measured
# one, by wrapping these; a name that no longer exists is left out of the breakdown rather than failing it.
# A phase called inside another (the audit hook inside the loader) counts for itself only, not twice.
PHASES = [
    (tenancy.context, "_set_config", "context hand-off (set_config)"),
    (tenancy.services, "get_organization", "organization query"),
    (tenancy.authentication, "find_live_token", "token lookup"),
    (clinic.services, "get_patient_for_user", "patient query (row security)"),
    (pagination.CursorPagination, "paginate_queryset", "page query"),
    (drf_serializers.Serializer, "data", "serialize (+ decrypt)"),
    (drf_serializers.ListSerializer, "data", "serialize (+ decrypt)"),
    (clinic.services.common, "record_phi_access", "audit hook"),
]


@contextmanager
def phase_timers(monkeypatch) -> Iterator[dict[str, int]]:
    spent: dict[str, int] = defaultdict(int)
    nested: list[int] = []  # per open phase, the time its inner phases took

    def timed(function, phase):
        def wrapper(*args, **kwargs):
            nested.append(0)
            t0 = time.perf_counter_ns()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter_ns() - t0
                spent[phase] += elapsed - nested.pop()
                if nested:
                    nested[-1] += elapsed

        return wrapper

    with monkeypatch.context() as patch:
        for owner, name, phase in PHASES:
            original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
            if isinstance(original, property):
                patch.setattr(owner, name, property(timed(original.fget, phase)))
            elif callable(original):
                patch.setattr(owner, name, timed(original, phase))
        yield spent


def breakdown(
    variants: dict[str, Variant], ids: list, n_pages: int, monkeypatch
) -> dict[str, dict[str, float]]:
    """Mean µs per request in each phase, and the rest ("other": middleware, DRF, Django, the test Client)."""
    rng = random.Random(6)
    result = {}
    for name, variant in variants.items():
        with phase_timers(monkeypatch) as spent:
            t0 = time.perf_counter_ns()
            for _ in range(BREAKDOWN_REQUESTS):
                variant(str(rng.choice(ids)), rng.randrange(n_pages))
            total = time.perf_counter_ns() - t0
        phases = {phase: round(ns / BREAKDOWN_REQUESTS / 1000, 1) for phase, ns in spent.items()}
        phases["other"] = round((total - sum(spent.values())) / BREAKDOWN_REQUESTS / 1000, 1)
        phases["total"] = round(total / BREAKDOWN_REQUESTS / 1000, 1)
        result[name] = phases
    return result


def test_patient_detail_and_list_full_stack_vs_plain_django(bench_clinic, django_db_blocker, monkeypatch):
    ids = bench_clinic["ids"]
    client = Client(
        HTTP_HOST=HOST,
        HTTP_AUTHORIZATION=f"Bearer {bench_clinic['token']}",
        HTTP_X_PURPOSE_OF_USE="treatment",
    )
    with django_db_blocker.unblock(), override_settings(ROOT_URLCONF=URLCONF):
        try:
            # Same answers from both stacks: every page of the list, and a sample of details.
            page_urls, page_rows = {}, {}
            for stack in PREFIX:
                page_urls[stack], page_rows[stack] = walk_pages(client, stack)
            assert page_rows["full"] == page_rows["plain"]
            assert sum(len(rows) for rows in page_rows["full"]) == bench_clinic["patients"] == PATIENTS
            assert all(len(rows) == 50 for rows in page_rows["full"][:-1])
            for patient_id in random.Random(0).sample(ids, 25):
                answers = [client.get(f"{PREFIX[stack]}/patients/{patient_id}") for stack in PREFIX]
                assert [a.status_code for a in answers] == [200, 200]
                assert answers[0].json() == answers[1].json()
            n_pages = len(page_urls["full"])

            def detail(stack: str) -> Variant:
                prefix = PREFIX[stack]
                return lambda patient_id, page: client.get(f"{prefix}/patients/{patient_id}").status_code

            def listing(stack: str) -> Variant:
                urls = page_urls[stack]
                return lambda patient_id, page: client.get(urls[page]).status_code

            variants = {
                "detail full": detail("full"),
                "detail plain": detail("plain"),
                "list full": listing("full"),
                "list plain": listing("plain"),
            }
            queries = {}
            for name, variant in variants.items():
                with CaptureQueriesContext(connection) as captured:
                    variant(str(ids[0]), 1)
                queries[name] = len(captured.captured_queries)

            failures: list = []
            samples = interleaved(variants, ids, n_pages, seed=4, failures=failures)

            # Cold key cache: the organization's data key unwrapped by Vault (one batched call) in the request.
            vault = app_client()
            cold: dict[str, list[int]] = defaultdict(list)
            cold_calls: dict[str, list[int]] = defaultdict(list)
            rng = random.Random(5)
            for i in range(COLD_REQUESTS):
                patient_id, page = str(rng.choice(ids)), rng.randrange(n_pages)
                for name in ("detail full", "list full") if i % 2 else ("list full", "detail full"):
                    keyring.purge()
                    before = vault.calls
                    t0 = time.perf_counter_ns()
                    status = variants[name](patient_id, page)
                    cold[f"{name}, cold key cache"].append(time.perf_counter_ns() - t0)
                    cold_calls[name].append(vault.calls - before)
                    if status != 200:
                        failures.append((f"{name} cold", patient_id, page, status))

            phases = breakdown(variants, ids, n_pages, monkeypatch)
        finally:
            connection.close()

    assert not failures, failures[:10]
    assert set(cold_calls["detail full"]) == {1} and set(cold_calls["list full"]) == {1}, dict(cold_calls)

    measured = {**samples, **cold}
    figures = {name: figure(measured[name]) for name in [*variants, *sorted(cold)]}
    ratios = {}
    for endpoint in ("detail", "list"):
        full, base = figures[f"{endpoint} full"], figures[f"{endpoint} plain"]
        ratios[f"{endpoint} p50 full/plain"] = ratio(full, base)
        ratios[f"{endpoint} p99 full/plain"] = ratio(full, base, "p99_us")
    for endpoint in ("detail", "list"):
        ratios[f"{endpoint} p50 cold full/plain"] = ratio(
            figures[f"{endpoint} full, cold key cache"], figures[f"{endpoint} plain"]
        )
    goals = {key: GOAL for key in ratios if "cold" not in key}
    report(
        "clinic_api",
        description=f"GET patient detail and list (page of 50), {PATIENTS} patients: full stack (practitioner, "
        "treatment: token auth, signed context, RLS, decryption, audit hook) vs plain Django "
        "(plaintext table, no policies); µs, ratios of p50 and p99",
        figures=figures,
        ratios=ratios,
        goals=goals,
        parameters={
            "patients": PATIENTS,
            "rounds": ROUNDS,
            "requests_per_round": PER_ROUND,
            "warmup_rounds": WARMUP_ROUNDS,
            "cold_requests": COLD_REQUESTS,
            "list_pages": n_pages,
            "page_size": 50,
            "caller": "practitioner on every patient's care team, purpose treatment, bearer token",
            "client": "django.test.Client, one request at a time",
        },
        extra={
            "environment": {
                "postgresql": bench_clinic["postgresql"],
                "load_average": list(os.getloadavg()),
            },
            "queries_per_request": queries,
            "breakdown_mean_us": phases,
            "vault_calls_cold": {name: sorted(set(calls)) for name, calls in cold_calls.items()},
            "setup": {"seconds": bench_clinic["setup_seconds"], "generated": bench_clinic["generated"]},
        },
    )
    # The shared table has no columns for these: add them under it.
    width = max(len(name) for name in figures)
    lines = [f"  {'throughput and p99':<{width}} {'req/s':>11} {'p99 µs':>11}"]
    lines += [f"  {n:<{width}} {f['requests_per_s']:>11.0f} {f['p99_us']:>11.1f}" for n, f in figures.items()]
    lines.append("  SQL queries per request: " + ", ".join(f"{k} {v}" for k, v in queries.items()))
    for name, split in phases.items():
        lines.append(f"  where {name} goes (mean µs): " + ", ".join(f"{k} {v:.0f}" for k, v in split.items()))
    tables[-1] += "\n" + "\n".join(lines)
