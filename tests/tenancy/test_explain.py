"""Policies the planner can use: the main tenant-scoped queries never sequential-scan a large table.

A module fixture fills the tenancy tables with 20 organizations' worth of rows (50,000 users, memberships
and API tokens, 12,000 portal domains), written as the owner role under each organization's signed context
(the owner is bound by FORCE ROW LEVEL SECURITY too), in interleaved batches as a live system would write
them, and ANALYZEs them. Each test then asks the planner, through the ORM on the runtime role inside a real
`tenant_context`, for the plan of one query the application runs, and fails on a `Seq Scan` of any table
with more than LARGE rows. The rows are deleted when the module ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from tenancy.context import TenantContext, tenant_context
from tenancy.models import ApiToken, Domain, Membership, User
from tests.conftest import owner_conninfo

pytestmark = pytest.mark.django_db

ORGS = 20
ROUNDS = 5  # each organization's rows arrive in this many batches, interleaved with the others'
PER_BATCH = 500  # users, memberships and tokens per organization per round: 20 * 5 * 500 = 50,000
DOMAINS_PER_ORG = 600
LARGE = 10_000  # a sequential scan of a table with more rows than this fails the test


@dataclass(frozen=True)
class Fleet:
    tag: str
    org_ids: list[uuid.UUID]


def _set_context(cur: psycopg.Cursor, org_id: uuid.UUID | None, role: str) -> None:
    signed = TenantContext(org_id=org_id, role=role).signed()
    cur.execute("SELECT set_config('app.context', %s, true)", [signed])


def _populate(conn: psycopg.Connection, tag: str) -> list[uuid.UUID]:
    org_ids = [uuid.uuid4() for _ in range(ORGS)]
    with conn.transaction(), conn.cursor() as cur:
        _set_context(cur, None, "platform")
        cur.executemany(
            "INSERT INTO tenancy_organization (id, slug, name, display_name, primary_color, accent_color,"
            " logo_url, support_email, support_phone, require_mfa, idle_timeout_minutes, created_at)"
            " VALUES (%s, %s, %s, '', '#0b5fff', '#00a37a', '', '', '', false, 15, now())",
            [(org_id, f"explain-{tag}-{n}", f"Explain {n}") for n, org_id in enumerate(org_ids)],
        )
        for rnd in range(ROUNDS):
            for n, org_id in enumerate(org_ids):
                _set_context(cur, org_id, "org_admin")
                first = rnd * PER_BATCH
                cur.execute(
                    """
                    WITH u AS (
                        INSERT INTO tenancy_user (id, password, email_hash, is_active, totp_secret,
                            totp_confirmed, totp_last_counter, created_at)
                        SELECT gen_random_uuid(), '!', format('explain-%%s-%%s-%%s@example.test', %(tag)s::text,
                            %(n)s::int, g), true, '', false, 0, now()
                        FROM generate_series(%(first)s::int, %(last)s::int) AS g
                        RETURNING id
                    ), m AS (
                        INSERT INTO tenancy_membership (id, org_id, user_id, role, is_active, failed_logins,
                            created_at)
                        SELECT gen_random_uuid(), %(org)s, u.id, 'staff', true, 0,
                            now() - random() * interval '730 days'
                        FROM u
                        RETURNING id, user_id
                    )
                    INSERT INTO tenancy_apitoken (id, org_id, user_id, membership_id, key_hash, prefix,
                        created_at, expires_at, last_used_at)
                    SELECT gen_random_uuid(), %(org)s, m.user_id, m.id,
                        encode(sha256(convert_to(m.id::text, 'UTF8')), 'hex'), 'tmk_xxxxxx',
                        now(), now() + interval '1 hour', now()
                    FROM m
                    """,
                    {"tag": tag, "n": n, "org": org_id, "first": first, "last": first + PER_BATCH - 1},
                )
                if rnd == 0:
                    cur.execute(
                        "INSERT INTO tenancy_domain (id, org_id, hostname, is_primary)"
                        " SELECT gen_random_uuid(), %(org)s, format('d%%s.o%%s.%%s.example', g, %(n)s::int, %(tag)s::text),"
                        " g = 0 FROM generate_series(0, %(count)s::int - 1) AS g",
                        {"org": org_id, "n": n, "tag": tag, "count": DOMAINS_PER_ORG},
                    )
    return org_ids


def _remove(conn: psycopg.Connection, tag: str, org_ids: list[uuid.UUID]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        for org_id in org_ids:
            _set_context(cur, org_id, "org_admin")
            for table in ("tenancy_apitoken", "tenancy_membership", "tenancy_domain"):
                cur.execute(f"DELETE FROM {table} WHERE org_id = %s", [org_id])
        _set_context(cur, None, "platform")
        cur.execute("DELETE FROM tenancy_organization WHERE id = ANY(%s)", [org_ids])
        cur.execute("DELETE FROM tenancy_user WHERE email_hash LIKE %s", [f"explain-{tag}-%"])


def _analyze(conn: psycopg.Connection) -> None:
    for table in (
        "tenancy_user",
        "tenancy_organization",
        "tenancy_membership",
        "tenancy_apitoken",
        "tenancy_domain",
    ):
        conn.execute(f"ANALYZE {table}")


@pytest.fixture(scope="module")
def fleet(django_db_setup) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:8]
    with psycopg.connect(owner_conninfo(), autocommit=True) as conn:
        org_ids = _populate(conn, tag)
        _analyze(conn)
        try:
            yield Fleet(tag=tag, org_ids=org_ids)
        finally:
            _remove(conn, tag, org_ids)
            _analyze(conn)


# -- plans ---------------------------------------------------------------------------------------


def _nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _table_rows() -> dict[str, float]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' AND relname LIKE 'tenancy_%%'"
        )
        return dict(cursor.fetchall())


def _as_plan(explained) -> dict:
    data = json.loads(explained) if isinstance(explained, str) else explained
    return data[0]["Plan"]


def assert_no_large_seq_scan(plan: dict) -> None:
    rows = _table_rows()
    scans = [
        (node["Relation Name"], rows.get(node["Relation Name"], 0))
        for node in _nodes(plan)
        if node["Node Type"] == "Seq Scan" and rows.get(node.get("Relation Name", ""), 0) > LARGE
    ]
    assert not scans, f"sequential scan of a large table {scans}; plan:\n{_outline(plan)}"


def _outline(plan: dict, depth: int = 0) -> str:
    """The plan as an indented list of nodes, what a reader needs to see why it scans."""
    detail = " ".join(
        f"{key}={plan[key]}"
        for key in (
            "Relation Name",
            "Index Name",
            "Index Cond",
            "Filter",
            "Sort Key",
            "Plan Rows",
            "Total Cost",
        )
        if key in plan
    )
    lines = ["  " * depth + f"{plan['Node Type']} {detail}"]
    lines += [_outline(child, depth + 1) for child in plan.get("Plans", [])]
    return "\n".join(lines)


def explain_sql(sql: str, params: list) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        return _as_plan(cursor.fetchone()[0])


def _pick(fleet: Fleet, table: str, column: str = "id", org_index: int = 7):
    """A real value from one organization's rows, read as the owner under that organization's context."""
    org_id = fleet.org_ids[org_index]
    with psycopg.connect(owner_conninfo()) as conn, conn.cursor() as cur:
        _set_context(cur, org_id, "org_admin")
        cur.execute(
            f"SELECT {column} FROM {table} WHERE org_id = %s ORDER BY {column} LIMIT 1 OFFSET 123", [org_id]
        )
        return org_id, cur.fetchone()[0]


def test_the_fixture_made_large_tables(fleet):
    rows = _table_rows()
    for table in ("tenancy_user", "tenancy_membership", "tenancy_apitoken", "tenancy_domain"):
        assert rows[table] > LARGE, (table, rows[table])


def test_membership_list_first_page(fleet):
    with tenant_context(org_id=fleet.org_ids[3], role="org_admin"):
        qs = Membership.objects.select_related("user").order_by("created_at")[:51]  # CursorPagination's page
        assert len(list(qs)) == 51
        plan = _as_plan(qs.explain(format="json"))
        assert_no_large_seq_scan(plan)
        # The page is read from an (org_id, created_at) index in order, not sorted from all the org's rows.
        assert "Sort" not in {node["Node Type"] for node in _nodes(plan)}, _outline(plan)


def test_membership_list_later_page(fleet):
    with tenant_context(org_id=fleet.org_ids[3], role="org_admin"):
        since = timezone.now() - timezone.timedelta(days=365)
        qs = (
            Membership.objects.select_related("user").filter(created_at__gt=since).order_by("created_at")[:51]
        )
        assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))


def test_membership_by_id(fleet):
    org_id, membership_id = _pick(fleet, "tenancy_membership")
    with tenant_context(org_id=org_id, role="org_admin"):
        qs = Membership.objects.select_related("user").filter(pk=membership_id).order_by("pk")[:1]
        assert [m.pk for m in qs] == [membership_id]
        assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))


def test_membership_of_the_signed_in_user(fleet):
    org_id, user_id = _pick(fleet, "tenancy_membership", "user_id")
    with tenant_context(org_id=org_id, role="org_admin"):
        qs = Membership.objects.filter(user_id=user_id, is_active=True).order_by("pk")[:1]
        assert len(list(qs)) == 1
        assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))


def test_api_token_by_key_hash(fleet):
    org_id, key_hash = _pick(fleet, "tenancy_apitoken", "key_hash")
    with tenant_context(org_id=org_id, role="org_admin"):
        qs = (
            ApiToken.objects.select_related("user", "membership").filter(key_hash=key_hash).order_by("pk")[:1]
        )
        assert len(list(qs)) == 1
        assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))


def test_api_token_touch_and_revoke(fleet):
    org_id, token_id = _pick(fleet, "tenancy_apitoken")
    with tenant_context(org_id=org_id, role="org_admin"):
        assert_no_large_seq_scan(
            explain_sql("UPDATE tenancy_apitoken SET last_used_at = now() WHERE id = %s", [token_id])
        )
        assert_no_large_seq_scan(
            explain_sql(
                "UPDATE tenancy_apitoken SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                [token_id],
            )
        )


def test_domain_by_hostname_for_host_routing(fleet):
    hostname = f"d42.o5.{fleet.tag}.example"
    with tenant_context(org_id=None, role="platform"):
        qs = Domain.objects.filter(hostname=hostname).values_list("org_id", flat=True).order_by("pk")[:1]
        assert list(qs) == [fleet.org_ids[5]]
        assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))


def test_domains_of_an_organization(fleet):
    """The policy's platform OR cannot use an index; the application's own scope filter can."""
    with tenant_context(org_id=fleet.org_ids[5], role="org_admin"):
        qs = Domain.objects.order_by("hostname")
        assert qs.count() == DOMAINS_PER_ORG
        assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))


def test_user_by_email_at_sign_in(fleet):
    # The fleet's rows carry a recognisable email_hash; real ones are u1:<hmac>, looked up the same way.
    qs = User.objects.filter(email_hash=f"explain-{fleet.tag}-2-17@example.test")
    assert qs.count() == 1
    assert_no_large_seq_scan(_as_plan(qs.explain(format="json")))
