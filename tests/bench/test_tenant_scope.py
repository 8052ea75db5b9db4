"""Benchmark: what row-level security with the signed context costs a tenant-scoped list and detail request.

Identical tables in a `bench` schema (outside `public`, so the catalog checks never see them), each with
100 organizations x 10,000 rows, interleaved on disk as many tenants writing at once would leave them, with
the primary key, `UNIQUE (org_id, id)` and an `(org_id, created_at)` index, as TenantModel tables have:

- `bench.record_rls`: ENABLE + FORCE row-level security with the project's policies (`tenant_policy_sql`);
  a request opens a transaction, hands the database a freshly signed context in one round trip (what
  `tenancy.context.apply` does), and queries with no org filter: RLS scopes it.
- `bench.record_plain`: no RLS; the same request without the context, the org as a plain `WHERE org_id = %s`.
- `bench.record_unsigned`, for reference only: RLS whose policy reads an unsigned setting (forgeable, what the
  project must not do). Against `rls` it isolates the cost of verifying the signature in every statement.

One "request" is BEGIN; [context]; list (newest 50); detail (one row by id); COMMIT, on one connection as the
runtime role. Variants alternate request by request (same organization and row, order rotated) so drift and
other load on the machine hit them alike. Three sets run: raw psycopg with client-side binding for the
queries (what Django does), raw psycopg with prepared statements, and Django itself (`tenant_context()` with SQL on
`connection.cursor()` against `transaction.atomic()` with the filter), which adds the Python side.

Reported to `.bench/tenant_scope.json`: median/p95 per step and variant, and the ratios RLS/plain (goal: the
whole request at most 1.15x). Not a timed test: it fails only if the variants return different rows.
BENCH_ROUNDS sets the rounds (of 100 requests per variant); BENCH_KEEP_DATA=1 keeps the tables for another run
against the same database (they are rebuilt when missing; `make bench` recreates its database each time).
"""

from __future__ import annotations

import gc
import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction

from tenancy.context import CONTEXT_SETTING, REQUEST_ID_SETTING, TenantContext, tenant_context
from tenancy.rls import tenant_policy_sql
from tests.bench.reporting import ratio, report, summarize
from tests.conftest import owner_conninfo, runtime_conninfo

pytestmark = pytest.mark.bench

ORGS = 100
ROWS_PER_ORG = 10_000
LOADED_MARK = f"loaded {ORGS}x{ROWS_PER_ORG} v2"
TABLES = {"rls": "bench.record_rls", "unsigned": "bench.record_unsigned", "plain": "bench.record_plain"}
UNSIGNED_SETTING = "bench.org_id"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
PER_ROUND = 100  # requests per variant per round
WARMUP_ROUNDS = 2
GOAL = 1.15
COLUMNS = "id, org_id, created_at, title, status, amount"


def queries(variant: str) -> dict[str, str]:
    table = TABLES[variant]
    scope = "WHERE org_id = %s " if variant == "plain" else ""
    detail_scope = "org_id = %s AND " if variant == "plain" else ""
    return {
        "list": f"SELECT {COLUMNS} FROM {table} {scope}ORDER BY created_at DESC LIMIT 50",
        "detail": f"SELECT {COLUMNS}, body FROM {table} WHERE {detail_scope}id = %s",
    }


SET_CONTEXT = "SELECT set_config(%s, %s, true), set_config(%s, %s, true)"  # tenancy.context.apply


def org_ids() -> list[uuid.UUID]:
    namespace = uuid.UUID("6f1d2c3e-0000-4000-8000-62656e636821")
    return [uuid.uuid5(namespace, f"org-{n}") for n in range(ORGS)]


ORG_FOR_SERVER_SIDE = org_ids()[42]


# -- data --------------------------------------------------------------------------------------------------


def _loaded(conn: psycopg.Connection) -> bool:
    marks = [
        conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", [table]).fetchone()[0]
        for table in TABLES.values()
    ]
    return marks == [LOADED_MARK] * len(TABLES)


def _load(conn: psycopg.Connection) -> None:
    runtime_role = settings.DATABASES["default"]["USER"]
    plain = TABLES["plain"]
    conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    conn.execute("CREATE SCHEMA bench")
    for table in TABLES.values():
        conn.execute(
            f"""CREATE TABLE {table} (
                id uuid NOT NULL, org_id uuid NOT NULL, created_at timestamptz NOT NULL,
                title varchar(200) NOT NULL, status varchar(20) NOT NULL, amount integer NOT NULL,
                body text NOT NULL)"""
        )
    # Row g belongs to org g % ORGS: every organization's rows are spread over the whole heap.
    conn.execute(
        f"""INSERT INTO {plain} (id, org_id, created_at, title, status, amount, body)
            SELECT gen_random_uuid(), ids[1 + g %% {ORGS}],
                   timestamptz '2025-01-01' + g * interval '30 seconds' + random() * interval '20 seconds',
                   'Record ' || g, (ARRAY['open', 'pending', 'closed'])[1 + g %% 3],
                   (g::bigint * 7919 %% 100000)::int, md5(g::text) || md5((g + 1)::text)
            FROM generate_series(0, {ORGS * ROWS_PER_ORG - 1}) AS g, (SELECT %s::uuid[] AS ids) AS o""",
        [org_ids()],
    )
    for table in (TABLES["rls"], TABLES["unsigned"]):
        conn.execute(f"INSERT INTO {table} SELECT * FROM {plain}")  # same rows, same physical order
    for table in TABLES.values():
        short = table.split(".")[1]
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id), ADD UNIQUE (org_id, id)")
        conn.execute(f"CREATE INDEX {short}_org_created ON {table} (org_id, created_at)")
        conn.execute(f"VACUUM (ANALYZE) {table}")
    conn.execute(tenant_policy_sql(TABLES["rls"]))
    unsigned = TABLES["unsigned"]
    conn.execute(
        f"ALTER TABLE {unsigned} ENABLE ROW LEVEL SECURITY; ALTER TABLE {unsigned} FORCE ROW LEVEL SECURITY;"
        f"CREATE POLICY unsigned_select ON {unsigned} FOR SELECT"
        f" USING (org_id = (SELECT nullif(current_setting('{UNSIGNED_SETTING}', true), '')::uuid))"
    )
    conn.execute(f'GRANT USAGE ON SCHEMA bench TO "{runtime_role}"')
    conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA bench TO "{runtime_role}"')
    for table in TABLES.values():
        conn.execute(f"COMMENT ON TABLE {table} IS '{LOADED_MARK}'")


@pytest.fixture(scope="module")
def bench_tables():
    """The tables, loaded once (well under a minute) and reused while the database lives."""
    with psycopg.connect(owner_conninfo(), autocommit=True) as conn:
        started = time.monotonic()
        reused = _loaded(conn)
        if not reused:
            _load(conn)
        plain = TABLES["plain"]
        samples = conn.execute(
            f"SELECT org_id, id FROM {plain} TABLESAMPLE SYSTEM (2) REPEATABLE (7)"
        ).fetchall()
        ids: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for org_id, row_id in samples:
            ids[org_id].append(row_id)
        info = {
            "ids": dict(ids),
            "setup": {"reused": reused, "seconds": round(time.monotonic() - started, 1)},
            "postgresql": conn.execute("SHOW server_version").fetchone()[0],
            "shared_buffers": conn.execute("SHOW shared_buffers").fetchone()[0],
            "table_sizes": dict(
                conn.execute(
                    "SELECT relname, pg_size_pretty(pg_total_relation_size(c.oid)) FROM pg_class c JOIN"
                    " pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bench' AND c.relkind = 'r'"
                ).fetchall()
            ),
        }
        yield info
        if os.environ.get("BENCH_KEEP_DATA") != "1":
            conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")


# -- requests ----------------------------------------------------------------------------------------------

Request = Callable[[uuid.UUID, uuid.UUID, dict], tuple]


@dataclass
class RawRequest:
    """One request of a variant over a raw psycopg cursor, timing each step.

    `table` is a key of TABLES. The context goes through a server-side-binding cursor, as
    `tenancy.context.apply` sends it (the signed value never appears in query text).
    """

    cur: psycopg.Cursor
    table: str
    prepare: bool | None = None  # None: psycopg's default; True: server-side prepared statements

    def __post_init__(self) -> None:
        self.context_cur = psycopg.Cursor(self.cur.connection)

    def _context_params(self, org_id: uuid.UUID) -> list:
        if self.table == "rls":
            ctx = TenantContext(org_id=org_id, role="org_admin")
            return [CONTEXT_SETTING, ctx.signed(), REQUEST_ID_SETTING, ctx.request_id]
        return [UNSIGNED_SETTING, str(org_id), REQUEST_ID_SETTING, uuid.uuid4().hex]

    def __call__(self, org_id: uuid.UUID, row_id: uuid.UUID, times: dict) -> tuple:
        cur, sql, prepare = self.cur, queries(self.table), self.prepare
        t0 = time.perf_counter_ns()
        cur.execute("BEGIN")
        t1 = time.perf_counter_ns()
        if self.table != "plain":
            self.context_cur.execute(SET_CONTEXT, self._context_params(org_id), prepare=prepare)
        t2 = time.perf_counter_ns()
        scope = [org_id] if self.table == "plain" else []
        cur.execute(sql["list"], scope, prepare=prepare)
        page = cur.fetchall()
        t3 = time.perf_counter_ns()
        cur.execute(sql["detail"], [*scope, row_id], prepare=prepare)
        detail = cur.fetchone()
        t4 = time.perf_counter_ns()
        cur.execute("COMMIT")
        t5 = time.perf_counter_ns()
        steps = {"begin": t1 - t0, "list": t3 - t2, "detail": t4 - t3, "commit": t5 - t4, "request": t5 - t0}
        if self.table != "plain":
            steps["context"] = t2 - t1
        for key, value in steps.items():
            times[key].append(value)
        return page, detail


def django_rls(org_id: uuid.UUID, row_id: uuid.UUID, times: dict) -> tuple:
    sql = queries("rls")
    t0 = time.perf_counter_ns()
    with tenant_context(org_id=org_id, role="org_admin"), connection.cursor() as cursor:
        cursor.execute(sql["list"])
        page = cursor.fetchall()
        cursor.execute(sql["detail"], [row_id])
        detail = cursor.fetchone()
    times["request"].append(time.perf_counter_ns() - t0)
    return page, detail


def django_plain(org_id: uuid.UUID, row_id: uuid.UUID, times: dict) -> tuple:
    sql = queries("plain")
    t0 = time.perf_counter_ns()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql["list"], [org_id])
        page = cursor.fetchall()
        cursor.execute(sql["detail"], [org_id, row_id])
        detail = cursor.fetchone()
    times["request"].append(time.perf_counter_ns() - t0)
    return page, detail


def interleaved(variants: dict[str, Request], ids: dict, seed: int) -> dict[str, dict[str, list[int]]]:
    """Run every variant on the same schedule, rotating which goes first; drop the warm-up rounds.

    Python's cyclic garbage collector is paused within a round (and run between rounds): otherwise a
    collection triggered by one request's rows lands in whichever step of the next allocates first.
    """
    rng = random.Random(seed)
    orgs = sorted(ids)
    names = list(variants)
    kept: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in names}
    for rnd in range(WARMUP_ROUNDS + ROUNDS):
        into = kept if rnd >= WARMUP_ROUNDS else {name: defaultdict(list) for name in names}
        gc.collect()
        gc.disable()
        try:
            for i in range(PER_ROUND):
                org_id = rng.choice(orgs)
                row_id = rng.choice(ids[org_id])
                shift = (rnd + i) % len(names)
                for name in names[shift:] + names[:shift]:
                    variants[name](org_id, row_id, into[name])
        finally:
            gc.enable()
    return kept


def same_results(results: list[tuple], org_id: uuid.UUID) -> None:
    page, detail = results[0]
    assert len(page) == 50
    assert {row[1] for row in page} == {org_id}
    assert detail is not None
    assert detail[1] == org_id
    for other in results[1:]:
        assert other == results[0]


# -- probes: where the RLS time goes -----------------------------------------------------------------------


def probe(cur: psycopg.Cursor, statement: str, n: int = 2000) -> list[int]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        cur.execute(statement)
        cur.fetchall()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def server_side(conn: psycopg.Connection, statements: dict[str, str], blocks: int = 40, n: int = 200) -> dict:
    """Nanoseconds per statement measured inside PostgreSQL (parse, plan, execute; no network, no Python).

    Each block runs one statement `n` times through PL/pgSQL's EXECUTE (planned every time, as with
    client-side binding) in a transaction with a fresh signed context; statements rotate block by block.
    """
    messages: list[str] = []
    conn.add_notice_handler(lambda diagnostic: messages.append(diagnostic.message_primary or ""))
    cur = psycopg.Cursor(conn)
    samples: dict[str, list[float]] = defaultdict(list)
    names = list(statements)
    for block in range(blocks + 1):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            ctx = TenantContext(org_id=ORG_FOR_SERVER_SIDE, role="org_admin")
            cur.execute("BEGIN")
            cur.execute(
                SET_CONTEXT, [CONTEXT_SETTING, ctx.signed(), UNSIGNED_SETTING, str(ORG_FOR_SERVER_SIDE)]
            )
            cur.execute(
                "DO $do$ DECLARE t0 timestamptz; r record; BEGIN t0 := clock_timestamp();"
                f" FOR i IN 1..{n} LOOP FOR r IN EXECUTE $q${statements[name]}$q$ LOOP END LOOP; END LOOP;"
                f" RAISE NOTICE '%', extract(epoch FROM clock_timestamp() - t0) * 1e9 / {n}; END $do$"
            )
            cur.execute("COMMIT")
            if block:  # the first block warms up
                samples[name].append(float(messages[-1]))
    return samples


def explain(cur: psycopg.Cursor, statement: str, params: list) -> list[str]:
    cur.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING) " + statement, params)
    return [row[0] for row in cur.fetchall()]


def test_tenant_scope_rls_vs_plain_filter(bench_tables, django_db_blocker):
    ids = bench_tables["ids"]
    assert len(ids) == ORGS
    figures: dict[str, dict] = {}

    def add(prefix: str, measured: dict[str, dict[str, list[int]]]) -> None:
        for step in ("begin", "context", "list", "detail", "commit", "request"):
            for variant, times in measured.items():
                if step in times:
                    figures[f"{prefix} {step} {variant}"] = summarize(times[step])

    with (
        psycopg.connect(runtime_conninfo(), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn,
        psycopg.connect(runtime_conninfo(), autocommit=True) as prepared_conn,
    ):
        cur, prepared_cur = conn.cursor(), prepared_conn.cursor()
        raw = {name: RawRequest(cur, name) for name in TABLES}
        prepared = {name: RawRequest(prepared_cur, name, prepare=True) for name in ("rls", "plain")}

        # The variants see the same rows, and RLS alone confines the unfiltered queries to one org.
        for org_id in list(ids)[:10]:
            row_id = ids[org_id][0]
            variants = [*raw.values(), *prepared.values()]
            same_results([request(org_id, row_id, defaultdict(list)) for request in variants], org_id)
        for table in (TABLES["rls"], TABLES["unsigned"]):
            assert cur.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)

        add("sql", interleaved(raw, ids, seed=1))
        add("prepared", interleaved(prepared, ids, seed=2))

        org_id = next(iter(ids))
        row_id = ids[org_id][0]
        cur.execute("BEGIN")
        ctx = TenantContext(org_id=org_id, role="org_admin")
        psycopg.Cursor(conn).execute(
            SET_CONTEXT, [CONTEXT_SETTING, ctx.signed(), REQUEST_ID_SETTING, ctx.request_id]
        )
        figures["probe SELECT 1"] = summarize(probe(cur, "SELECT 1"))
        figures["probe SELECT app_org_id()"] = summarize(probe(cur, "SELECT public.app_org_id()"))
        plans = {
            f"{variant} {kind}": explain(cur, statement, params)
            for variant, scope in (("rls", []), ("plain", [org_id]))
            for kind, statement, params in (
                ("list", queries(variant)["list"], scope),
                ("detail", queries(variant)["detail"], [*scope, row_id]),
            )
        }
        cur.execute("COMMIT")

        server_org, server_row = ORG_FOR_SERVER_SIDE, ids[ORG_FOR_SERVER_SIDE][0]
        statements = {}
        for variant in TABLES:
            scope = [server_org] if variant == "plain" else []
            statements[f"server list {variant}"] = cur.mogrify(queries(variant)["list"], scope)
            statements[f"server detail {variant}"] = cur.mogrify(
                queries(variant)["detail"], [*scope, server_row]
            )
        measured = server_side(conn, statements)
        for name in statements:
            figures[name] = summarize(measured[name])

    with django_db_blocker.unblock():
        try:
            first = next(iter(ids))
            same_results(
                [
                    django_rls(first, ids[first][0], defaultdict(list)),
                    django_plain(first, ids[first][0], defaultdict(list)),
                ],
                first,
            )
            add("django", interleaved({"rls": django_rls, "plain": django_plain}, ids, seed=3))
        finally:
            connection.close()

    ratios = {
        "sql list rls/plain": ratio(figures["sql list rls"], figures["sql list plain"]),
        "sql detail rls/plain": ratio(figures["sql detail rls"], figures["sql detail plain"]),
        "sql request rls/plain": ratio(figures["sql request rls"], figures["sql request plain"]),
        "server list rls/plain": ratio(figures["server list rls"], figures["server list plain"]),
        "server detail rls/plain": ratio(figures["server detail rls"], figures["server detail plain"]),
        "server list unsigned/plain": ratio(figures["server list unsigned"], figures["server list plain"]),
        "server detail unsigned/plain": ratio(
            figures["server detail unsigned"], figures["server detail plain"]
        ),
        "sql request unsigned/plain": ratio(figures["sql request unsigned"], figures["sql request plain"]),
        "sql request rls/unsigned": ratio(figures["sql request rls"], figures["sql request unsigned"]),
        "prepared request rls/plain": ratio(
            figures["prepared request rls"], figures["prepared request plain"]
        ),
        "django request rls/plain": ratio(figures["django request rls"], figures["django request plain"]),
    }
    report(
        "tenant_scope",
        description=f"tenant-scoped list + detail, {ORGS} orgs x {ROWS_PER_ORG} rows: RLS + signed context vs "
        "plain org filter (µs; ratios of medians; 'unsigned' is a forgeable reference, not a design)",
        figures=figures,
        ratios=ratios,
        goals={"sql request rls/plain": GOAL, "django request rls/plain": GOAL},
        parameters={
            "organizations": ORGS,
            "rows_per_organization": ROWS_PER_ORG,
            "rounds": ROUNDS,
            "requests_per_round": PER_ROUND,
            "warmup_rounds": WARMUP_ROUNDS,
            "list_limit": 50,
        },
        extra={
            "environment": {
                "postgresql": bench_tables["postgresql"],
                "shared_buffers": bench_tables["shared_buffers"],
                "table_sizes": bench_tables["table_sizes"],
                "load_average": list(os.getloadavg()),
            },
            "setup": bench_tables["setup"],
            "queries": {variant: queries(variant) for variant in TABLES},
            "plans": plans,
        },
    )
