"""The catalog check: every table holding an organization's data is isolated by PostgreSQL itself.

Fails the build when a table with an organization column lacks ENABLE or FORCE row-level security, a policy
for any command, a WITH CHECK on writes, or a composite foreign key for a reference to another tenant table;
and when the runtime role could step around any of it.
"""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

# Global uniqueness a tenant table may keep, with the reason it reveals nothing across organizations.
GLOBAL_UNIQUE_ALLOWED = {
    ("tenancy_domain", "hostname"): "hostnames are public DNS names",
    ("tenancy_apitoken", "key_hash"): "SHA-256 of a 256-bit random token; a collision is impossible",
}


def tenant_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1
            """
        )
        return [row[0] for row in cursor.fetchall()]


def test_there_are_tenant_tables_to_check():
    assert {"tenancy_membership", "tenancy_domain", "tenancy_apitoken"} <= set(tenant_tables())


def test_every_tenant_table_enables_and_forces_row_level_security():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND NOT (relrowsecurity AND relforcerowsecurity)",
            [[*tenant_tables(), "tenancy_organization"]],
        )
        assert cursor.fetchall() == []


def test_every_tenant_table_has_a_policy_for_every_command_with_the_org_check():
    with connection.cursor() as cursor:
        for table in tenant_tables():
            cursor.execute(
                "SELECT cmd, permissive, roles::text[], qual, with_check FROM pg_policies "
                "WHERE schemaname = 'public' AND tablename = %s",
                [table],
            )
            policies = cursor.fetchall()
            covered = set()
            for cmd, permissive, roles, qual, with_check in policies:
                covered |= {"SELECT", "INSERT", "UPDATE", "DELETE"} if cmd == "ALL" else {cmd}
                if permissive == "PERMISSIVE":
                    expression = (qual or "") + (with_check or "")
                    assert "app_org_id()" in expression, f"{table}: permissive {cmd} policy ignores the org"
                if cmd in ("INSERT", "UPDATE", "ALL"):
                    assert with_check, f"{table}: {cmd} policy has no WITH CHECK"
                for expression in (qual, with_check):
                    assert (expression or "").strip().lower() not in ("true", "(true)"), (
                        f"{table}: USING (true)"
                    )
            assert covered == {"SELECT", "INSERT", "UPDATE", "DELETE"}, (
                f"{table}: policies cover only {covered}"
            )


def test_no_policy_anywhere_is_unconditionally_true():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, policyname FROM pg_policies WHERE lower(coalesce(qual, '')) IN ('true', '(true)') "
            "OR lower(coalesce(with_check, '')) IN ('true', '(true)')"
        )
        assert cursor.fetchall() == []


def test_references_between_tenant_tables_are_composite_with_the_org():
    """A plain foreign key lets a row point at another organization's row; (org_id, fk) cannot."""
    tables = set(tenant_tables())
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT src.relname, dst.relname, con.conname,
                   ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = con.conrelid AND attnum = ANY(con.conkey))
            FROM pg_constraint con
            JOIN pg_class src ON src.oid = con.conrelid JOIN pg_class dst ON dst.oid = con.confrelid
            WHERE con.contype = 'f'
            """
        )
        fks = cursor.fetchall()
    single = [(s, d, cols) for s, d, _, cols in fks if s in tables and d in tables and "org_id" not in cols]
    composite = {
        (s, d, next(c for c in cols if c != "org_id"))
        for s, d, _, cols in fks
        if "org_id" in cols and len(cols) == 2
    }
    assert fks, "no foreign keys found at all"
    for src, dst, cols in single:
        assert (src, dst, cols[0]) in composite, (
            f"{src}.{cols[0]} -> {dst} is not bound to the same organization"
        )


def test_unique_constraints_on_tenant_tables_include_the_org():
    """A globally unique column answers 'taken' for another organization's value: a side channel."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid
                                    AND attnum = ANY(i.indkey) ORDER BY attnum)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
            WHERE i.indisunique AND NOT i.indisprimary AND c.relname = ANY(%s)
            """,
            [tenant_tables()],
        )
        for table, columns in cursor.fetchall():
            if "org_id" in columns:
                continue
            assert (table, columns[0]) in GLOBAL_UNIQUE_ALLOWED and len(columns) == 1, (
                f"{table}{columns} is unique across organizations"
            )


def test_runtime_role_is_not_owner_superuser_or_bypassrls():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (False, False, False, False)
        cursor.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'tenancy_private') AND pg_get_userbyid(c.relowner) = current_user"
        )
        assert cursor.fetchall() == [], "the runtime role owns tables"
        cursor.execute(
            "SELECT pg_has_role(current_user, pg_get_userbyid(c.relowner), 'USAGE') FROM pg_class c "
            "WHERE c.relname = 'tenancy_membership'"
        )
        assert cursor.fetchone() == (False,), "the runtime role is a member of the owner role"


def test_runtime_role_cannot_truncate_anything():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND has_table_privilege(c.oid, 'TRUNCATE')"
        )
        assert cursor.fetchall() == []


def test_runtime_role_cannot_read_the_context_key():
    with connection.cursor() as cursor:
        cursor.execute("SELECT has_schema_privilege('tenancy_private', 'USAGE')")
        assert cursor.fetchone() == (False,)


def test_no_view_or_materialized_view_exposes_tenant_data():
    """Views run as their owner unless security_invoker; materialized views ignore RLS altogether."""
    tables = tenant_tables()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT v.relname, v.relkind, coalesce(v.reloptions, '{}')
            FROM pg_class v JOIN pg_namespace n ON n.oid = v.relnamespace
            JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass
            JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class = v.oid
            JOIN pg_class t ON t.oid = d.refobjid
            WHERE v.relkind IN ('v', 'm') AND n.nspname = 'public' AND t.relname = ANY(%s)
            """,
            [tables],
        )
        for name, kind, options in cursor.fetchall():
            assert kind == "v", f"materialized view {name} over tenant data"
            assert "security_invoker=true" in options or "security_invoker=on" in options, (
                f"view {name} over tenant data runs as its owner"
            )


@pytest.mark.django_db(databases=["default", "owner"])
def test_migrations_are_complete():
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)


def test_the_policy_helpers_role_cannot_log_in_and_the_runtime_role_cannot_become_it():
    """The helpers that read care teams for the row policies bypass RLS; nobody may act as their owner."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.proname LIKE 'clinic\\_%%' "
            "AND p.prosecdef"
        )
        owners = [row[0] for row in cursor.fetchall()]
        assert owners and all(owner.endswith("_policy") for owner in owners)
        for owner in owners:
            cursor.execute("SELECT rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname = %s", [owner])
            assert cursor.fetchone() == (False, True)
            cursor.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [owner])
            assert cursor.fetchone() == (False,)
